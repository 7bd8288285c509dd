"""The fingerprint's bytes and its comparison, without a model."""

from __future__ import annotations

import numpy as np
import pytest
from nacl.signing import SigningKey

from fabstir.errors import FingerprintError
from fabstir.fingerprints import Fingerprint, Tolerances, compare, fingerprint_states
from fabstir.protocol.signing import Receipt, SignatureError, sign_receipt, text_digest, verify_receipt


def states(rows: int, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, size=(rows, width)).astype(np.float32)


def test_bytes_round_trip_and_size() -> None:
    tokens = list(range(300, 300 + 65))
    fingerprint = fingerprint_states(states(64), tokens)
    assert [len(c.indices) for c in fingerprint.chunks] == [128, 128]
    again = Fingerprint.from_text(fingerprint.to_text())
    assert again.tokens == tuple(tokens) and again.n_embd == 64 and again.digest() == fingerprint.digest()
    for mine, theirs in zip(fingerprint.chunks, again.chunks):
        assert np.array_equal(mine.indices, theirs.indices) and np.array_equal(mine.values, theirs.values)
    per_chunk = (len(fingerprint.to_bytes()) - 2 * 65) / 2  # token ids take 2 bytes each here
    assert per_chunk < 450, "a few hundred bytes per 32 tokens"


def test_short_answers() -> None:
    assert fingerprint_states(states(0), [5]).chunks == ()
    one = fingerprint_states(states(1), [5, 6])
    assert len(one.chunks[0].indices) == 64  # fewer values than k: all of them
    assert Fingerprint.from_bytes(one.to_bytes()).tokens == (5, 6)
    with pytest.raises(FingerprintError):
        fingerprint_states(states(3), [1, 2])


@pytest.mark.parametrize("data", [b"", b"\x02", b"\x01\x40\x20", b"\x01" + b"\xff" * 8,
                                  fingerprint_states(states(8), list(range(9))).to_bytes()[:-1],
                                  fingerprint_states(states(8), list(range(9))).to_bytes() + b"\x00"])
def test_malformed_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(FingerprintError) as refused:
        Fingerprint.from_bytes(data)
    assert refused.value.code == "FINGERPRINT_MALFORMED"


def test_not_base64() -> None:
    with pytest.raises(FingerprintError):
        Fingerprint.from_text("not base64!")


def test_compare_passes_the_same_states_and_catches_others() -> None:
    honest = states(40)
    fingerprint = fingerprint_states(honest, list(range(41)))
    assert compare(fingerprint, honest).honest
    noise = honest * (1 + np.float32(1e-4))  # well under one fp16 ulp on average
    assert compare(fingerprint, noise.astype(np.float32)).honest
    quantized = honest * (1 + np.random.default_rng(1).normal(0, 0.01, honest.shape)).astype(np.float32)
    verdict = compare(fingerprint, quantized.astype(np.float32))
    assert not verdict.honest and verdict.chunks[0].mantissa_error > Tolerances().max_mantissa_error
    assert not compare(fingerprint, states(40, seed=5)).honest
    assert not compare(fingerprint, states(39)).honest  # another count of states
    assert not compare(fingerprint, states(40, width=32)).honest


def test_a_receipt_signs_its_fingerprint() -> None:
    key = SigningKey.generate()
    fingerprint = fingerprint_states(states(10), list(range(11))).to_text()
    receipt = sign_receipt(Receipt(host="", model="m", session_id="s", message_index=0, tokens=11,
                                   price_per_token=None, text_sha256=text_digest("answer"), key="",
                                   fingerprint=fingerprint, prompt_sha256="ab" * 32), key)
    wire = receipt.to_wire()
    assert wire["fingerprint"] == fingerprint
    back = Receipt.from_wire(wire)
    assert back == receipt
    verify_receipt(back, text="answer", tokens=11)
    with pytest.raises(SignatureError):
        Receipt.from_wire({**wire, "fingerprint": 5})
    for field, value in (("prompt_sha256", "cd" * 32), ("fingerprint", fingerprint[:-8] + "AAAAAAA=")):
        with pytest.raises(SignatureError):
            verify_receipt(Receipt.from_wire({**wire, field: value}), text="answer", tokens=11)
