"""Tolerances measured on the named model itself: how far an honest host's states stray from the verifier's.

An honest host decodes one token at a time; the verifier recomputes in batches. llama.cpp's kernels for the
two differ (accumulation order, and for quantized weights, batched matrix kernels), by an amount that depends
on the model and its quantization: under 0.4 fp16 ulp for stories260K in f32, 25-40 ulp for Gemma 3 270M at
q4_K_M. :func:`calibrate` measures it on the verifier's own machine, by generating a few greedy answers the
host's way (one decode per token) and checking them the verifier's way, and widens the default tolerances to
``margin`` times the worst deviation seen (never narrower than the defaults).
"""

from __future__ import annotations

from collections.abc import Sequence

from fabstir.fingerprints.check import Tolerances, compare
from fabstir.fingerprints.llama_states import PrefillStates
from fabstir.fingerprints.scheme import fingerprint_states

__all__ = ["CALIBRATION_PROMPTS", "calibrate"]

CALIBRATION_PROMPTS = ("Once upon a time", "The answer to the question is", "Hello! How are you today?",
                       "In the beginning")
CALIBRATION_TOKENS = (65, 40, 12, 24)
"""Answer lengths: two full chunks, and last chunks of 7, 11 and 23 states (a short chunk's top-128 reaches
smaller values, whose relative rounding noise is larger)."""
_ACCEPT_ALL = Tolerances(min_overlap=0.0, max_exponent_mismatches=1.0, max_mantissa_error=float("inf"))


def calibrate(states: PrefillStates, prompts: Sequence[str] = CALIBRATION_PROMPTS, *,
              tokens: Sequence[int] = CALIBRATION_TOKENS, margin: float = 3.0,
              floor: Tolerances | None = None) -> Tolerances:
    """Tolerances for ``states``' model: ``floor`` (the defaults) widened to ``margin`` x the honest deviation."""
    base = floor or Tolerances()
    overlap, mismatches, error = 1.0, 0.0, 0.0
    for prompt, count in zip(prompts, tokens, strict=True):
        prompt_tokens = states.tokenize(prompt)
        answer, decoded = states.decoded_states(prompt_tokens, count)
        verdict = compare(fingerprint_states(decoded, answer), states.answer_states(prompt_tokens, answer),
                          _ACCEPT_ALL)
        for chunk in verdict.chunks:
            overlap = min(overlap, chunk.overlap)
            mismatches = max(mismatches, chunk.exponent_mismatches)
            error = max(error, chunk.mantissa_error)
    return Tolerances(min_overlap=min(base.min_overlap, 1.0 - margin * (1.0 - overlap)),
                      max_exponent_mismatches=max(base.max_exponent_mismatches, margin * mismatches),
                      max_mantissa_error=max(base.max_mantissa_error, margin * error))
