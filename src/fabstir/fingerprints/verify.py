"""Checking an answer against the model its job names: :class:`Verifier` (a loaded model) and
:func:`verify_answer` (one answer and its signed receipt)."""

from __future__ import annotations

import os
from typing import Any

from fabstir.errors import FingerprintError
from fabstir.fingerprints.calibrate import calibrate
from fabstir.fingerprints.check import Tolerances, Verdict, compare
from fabstir.fingerprints.llama_states import PrefillStates
from fabstir.fingerprints.scheme import Fingerprint
from fabstir.protocol.signing import Receipt, text_digest, verify_receipt

__all__ = ["Verifier", "verify_answer"]


class Verifier:
    """The named model, loaded to recompute hidden states; checks fingerprints against it. Not thread-safe."""

    def __init__(self, model_path: str | os.PathLike[str], *, threads: int | None = None,
                 tolerances: Tolerances | None = None) -> None:
        """Load the model; without ``tolerances``, measure them on it (:func:`calibrate`, a few greedy
        answers: about the cost of generating 200 tokens)."""
        self.states = PrefillStates(model_path, threads=threads)
        try:
            self.tolerances = tolerances or calibrate(self.states)
        except BaseException:
            self.states.close()
            raise

    def check(self, prompt: str, fingerprint: Fingerprint, answer_text: str | None = None) -> Verdict:
        """Whether ``fingerprint`` is what the named model computes for ``prompt`` followed by its tokens.

        With ``answer_text`` (the text the client received), the fingerprint's tokens must also spell it (a
        stop sequence the host generated but never showed may follow).

        Raises:
            FingerprintError: FINGERPRINT_UNCHECKABLE, prompt + answer do not fit this model's window.
        """
        states = self.states
        if fingerprint.n_embd != states.n_embd:
            return Verdict(False, f"the fingerprint's states are {fingerprint.n_embd} wide, the named model's "
                                  f"{states.n_embd}: another model")
        vocabulary = states.vocab_size()
        if any(not 0 <= token < vocabulary for token in fingerprint.tokens):
            return Verdict(False, "the fingerprint's tokens are outside the named model's vocabulary")
        if answer_text is not None and not states.detokenize(fingerprint.tokens).startswith(answer_text):
            return Verdict(False, "the fingerprint's tokens do not spell the answer received")
        recomputed = states.answer_states(states.tokenize(prompt), fingerprint.tokens)
        return compare(fingerprint, recomputed, self.tolerances)

    def close(self) -> None:
        self.states.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_answer(model_path: str | os.PathLike[str] | Verifier, prompt: str, answer_text: str,
                  receipt: Receipt | dict[str, Any], *, expected_key: str | None = None) -> Verdict:
    """Check one answer: its receipt is signed and covers ``answer_text``, names ``prompt`` (the rendered
    prompt the client expects the host to have answered), and its fingerprint matches the model at
    ``model_path`` (or an open :class:`Verifier`).

    A dishonest verdict, with the signed receipt, is the evidence: the host signed a fingerprint that the
    named model does not reproduce, or signed that it answered another prompt.

    Raises:
        SignatureError: RECEIPT_INVALID, the receipt is forged, altered or not for this text.
        FingerprintError: FINGERPRINT_MISSING (the receipt has none), FINGERPRINT_MALFORMED,
            FINGERPRINT_UNCHECKABLE.
    """
    signed = receipt if isinstance(receipt, Receipt) else Receipt.from_wire(receipt)
    verify_receipt(signed, text=answer_text, tokens=signed.tokens, expected_key=expected_key)
    if signed.fingerprint is None or signed.prompt_sha256 is None:
        raise FingerprintError("the receipt carries no activation fingerprint", code="FINGERPRINT_MISSING")
    fingerprint = Fingerprint.from_text(signed.fingerprint)
    if signed.prompt_sha256 != text_digest(prompt):
        return Verdict(False, "the host signed that it answered another prompt than this one")
    if isinstance(model_path, Verifier):
        return model_path.check(prompt, fingerprint, answer_text)
    with Verifier(model_path) as verifier:
        return verifier.check(prompt, fingerprint, answer_text)
