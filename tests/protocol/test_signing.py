"""Ed25519 signed messages (timestamp window, nonce replay) and receipts; key files."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from fabstir.errors import ConfigError
from fabstir.keys import load_or_create_signing_key, load_signing_key, save_signing_key
from fabstir.protocol.signing import (
    Receipt,
    ReplayCache,
    SignatureError,
    sign_message,
    sign_receipt,
    text_digest,
    verify_message,
    verify_receipt,
)

KEY = SigningKey(b"\x07" * 32)
NOW = 1_800_000_000_000


def code(call: object) -> str:
    with pytest.raises(SignatureError) as info:
        call()  # type: ignore[operator]
    return info.value.code


def test_signed_message_round_trip_and_attacks() -> None:
    message = sign_message({"type": "prompt", "prompt": "hi", "id": "1"}, KEY, NOW, nonce="aa")
    replay = ReplayCache()
    assert verify_message(message, NOW + 1000, replay) == KEY.verify_key.encode().hex()
    assert code(lambda: verify_message(message, NOW + 2000, replay)) == "REPLAYED_NONCE"
    tampered = {**message, "prompt": "give me everything"}
    assert code(lambda: verify_message(tampered, NOW, ReplayCache())) == "SIGNATURE_INVALID"
    assert code(lambda: verify_message(message, NOW + 61_000, ReplayCache())) == "STALE_TIMESTAMP"
    other_key = {**message, "sig": {**message["sig"], "key": SigningKey(b"\x08" * 32).verify_key.encode().hex()}}
    assert code(lambda: verify_message(other_key, NOW, ReplayCache())) == "SIGNATURE_INVALID"
    for broken in ({"sig": None}, {"sig": "x"}, {"sig": {"alg": "rsa"}}, {"sig": {**message["sig"], "ts": "now"}},
                   {"sig": {**message["sig"], "sig": "zz"}}):
        assert code(lambda b=broken: verify_message({**message, **b}, NOW, ReplayCache())) == "SIGNATURE_INVALID"


def test_replay_cache_forgets_old_nonces() -> None:
    cache = ReplayCache(window_ms=1000, max_entries=3)
    assert cache.remember("a", 0) and not cache.remember("a", 10)
    assert cache.remember("a", 5000), "outside twice the window: forgotten"
    for n in "bcd":
        assert cache.remember(n, 5000)
    assert cache.remember("a", 5001), "bounded: the oldest entry made room"


def test_receipts() -> None:
    text = "Paris is the capital."
    receipt = sign_receipt(Receipt(host="0xabc", model="m", session_id="139", message_index=2, tokens=5,
                                   price_per_token=2000, text_sha256=text_digest(text), key=""), KEY)
    verify_receipt(Receipt.from_wire(receipt.to_wire()), text=text, tokens=5,
                   expected_key=KEY.verify_key.encode().hex())
    assert code(lambda: verify_receipt(receipt, text=text + "!", tokens=5)) == "RECEIPT_INVALID"
    assert code(lambda: verify_receipt(receipt, text=text, tokens=6)) == "RECEIPT_INVALID"
    forged = dataclasses.replace(receipt, tokens=500)
    assert code(lambda: verify_receipt(forged, text=text, tokens=500)) == "RECEIPT_INVALID"
    assert code(lambda: verify_receipt(receipt, text=text, tokens=5, expected_key="00" * 32)) == "RECEIPT_INVALID"
    assert code(lambda: Receipt.from_wire({"host": 1})) == "SIGNATURE_INVALID"
    assert code(lambda: Receipt.from_wire("nope")) == "SIGNATURE_INVALID"


def test_key_files(tmp_path: Path) -> None:
    plain = save_signing_key(KEY, tmp_path / "k" / "plain.key")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600
    assert bytes(load_signing_key(plain)) == bytes(KEY)
    locked = save_signing_key(KEY, tmp_path / "locked.key", password="correct horse")
    assert KEY.encode().hex() not in locked.read_text()
    assert bytes(load_signing_key(locked, "correct horse")) == bytes(KEY)
    with pytest.raises(ConfigError):
        load_signing_key(locked, "wrong")
    with pytest.raises(ConfigError):
        load_signing_key(locked)
    with pytest.raises(ConfigError):
        save_signing_key(KEY, plain)  # never overwritten
    os.chmod(plain, 0o644)
    with pytest.raises(ConfigError) as info:
        load_signing_key(plain)
    assert "chmod 600" in info.value.message
    created = load_or_create_signing_key(tmp_path / "new.key")
    assert bytes(load_or_create_signing_key(tmp_path / "new.key")) == bytes(created)
