"""Ed25519 signatures over protocol messages: signed client messages and signed receipts.

Canonical form: the message as compact JSON with sorted keys, without its
``sig`` (or ``receipt.sig``) field, UTF-8. Both ends compute it the same way,
so a signature covers every other field of the message.

- A client message may carry ``"sig": {"alg": "ed25519", "key", "ts", "nonce", "sig"}``
  (hex key and signature, ``ts`` in milliseconds, a random hex ``nonce``). The node
  checks the signature, a timestamp window and a nonce replay cache
  (:class:`ReplayCache`).
- The node signs every ``stream_end`` with a ``receipt``: host, model, session,
  message index, tokens, price, SHA-256 of the streamed text, and its Ed25519 key.

Pure: callers pass the clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from collections import OrderedDict
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fabstir.errors import RemoteProtocolError

__all__ = [
    "Receipt",
    "ReplayCache",
    "SignatureError",
    "canonical_bytes",
    "sign_message",
    "sign_receipt",
    "verify_message",
    "verify_receipt",
    "text_digest",
]

DEFAULT_WINDOW_MS = 60_000


class SignatureError(RemoteProtocolError):
    """A signature, its timestamp or its nonce was refused (``code`` says which)."""

    default_code = "SIGNATURE_INVALID"


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """The bytes that are signed: compact JSON, sorted keys, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def text_digest(text: str) -> str:
    """Hex SHA-256 of streamed text, as carried in receipts."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _verify(key_hex: str, signature_hex: str, payload: bytes) -> None:
    try:
        VerifyKey(bytes.fromhex(key_hex)).verify(payload, bytes.fromhex(signature_hex))
    except (ValueError, TypeError, BadSignatureError) as exc:
        raise SignatureError(f"bad Ed25519 signature: {type(exc).__name__}") from None


# --- signed client messages --------------------------------------------------


def sign_message(wire: dict[str, Any], key: SigningKey, now_ms: int, nonce: str | None = None) -> dict[str, Any]:
    """Return ``wire`` with a ``sig`` object added (any existing ``sig`` is replaced)."""
    body = {k: v for k, v in wire.items() if k != "sig"}
    envelope = {"alg": "ed25519", "key": key.verify_key.encode().hex(), "ts": now_ms,
                "nonce": nonce or secrets.token_hex(16)}
    signed = {**body, "sig": envelope}
    envelope["sig"] = key.sign(canonical_bytes({**body, "sig": {**envelope}})).signature.hex()
    return signed


def verify_message(wire: dict[str, Any], now_ms: int, replay: ReplayCache | None = None,
                   window_ms: int = DEFAULT_WINDOW_MS) -> str:
    """Check a signed message; returns the signer's hex public key.

    Raises:
        SignatureError: with code SIGNATURE_INVALID, STALE_TIMESTAMP or REPLAYED_NONCE.
    """
    envelope = wire.get("sig")
    if not isinstance(envelope, dict):
        raise SignatureError("message has no 'sig' object")
    key, ts, nonce, signature = (envelope.get(k) for k in ("key", "ts", "nonce", "sig"))
    if envelope.get("alg") != "ed25519" or not all(isinstance(v, str) for v in (key, nonce, signature)) \
            or not isinstance(ts, int) or isinstance(ts, bool):
        raise SignatureError("'sig' needs alg ed25519, key, ts, nonce and sig")
    assert isinstance(key, str) and isinstance(signature, str) and isinstance(nonce, str)
    unsigned = {**{k: v for k, v in wire.items() if k != "sig"},
                "sig": {k: v for k, v in envelope.items() if k != "sig"}}
    _verify(key, signature, canonical_bytes(unsigned))
    if abs(now_ms - ts) > window_ms:
        raise SignatureError(f"timestamp is {abs(now_ms - ts) / 1000:.0f} s away from the node's clock",
                             code="STALE_TIMESTAMP")
    if replay is not None and not replay.remember(f"{key}:{nonce}", now_ms):
        raise SignatureError("nonce already used", code="REPLAYED_NONCE")
    return key


class ReplayCache:
    """Nonces seen within the timestamp window; bounded, oldest forgotten first."""

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, max_entries: int = 100_000) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._window = window_ms
        self._max = max_entries

    def remember(self, nonce: str, now_ms: int) -> bool:
        """False if ``nonce`` was seen within the window; otherwise records it."""
        while self._seen and (next(iter(self._seen.values())) < now_ms - 2 * self._window
                              or len(self._seen) >= self._max):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now_ms
        return True


# --- receipts ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """What the host attests for one answer; ``sig`` is over the other fields."""

    host: str
    model: str
    session_id: str
    message_index: int | None
    tokens: int
    price_per_token: int | None
    text_sha256: str
    key: str
    sig: str = ""
    fingerprint: str | None = None
    """Extension (feature ``activation-fingerprint``): base64 of the answer's activation fingerprint
    (:mod:`fabstir.fingerprints`); absent from the wire, and from what is signed, when ``None``."""
    prompt_sha256: str | None = None
    """Extension, with ``fingerprint``: hex SHA-256 of the rendered prompt the host generated from."""

    def unsigned(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_wire().items() if k != "sig"}

    def to_wire(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in _OPTIONAL}

    @classmethod
    def from_wire(cls, obj: object) -> Receipt:
        """Raises SignatureError if the object is not a receipt."""
        if not isinstance(obj, dict):
            raise SignatureError("receipt must be an object")
        names = [f.name for f in dataclasses.fields(cls) if f.name not in _OPTIONAL]
        try:
            fields: dict[str, Any] = {k: obj[k] for k in names} | {k: obj.get(k) for k in _OPTIONAL}
            receipt = cls(**fields)
        except (KeyError, TypeError):
            raise SignatureError(f"receipt needs {', '.join(names)}") from None
        if not all(isinstance(getattr(receipt, k), str) for k in ("host", "model", "session_id", "text_sha256",
                                                                  "key", "sig")) \
                or not all(isinstance(getattr(receipt, k), str | None) for k in _OPTIONAL):
            raise SignatureError("receipt fields have the wrong types")
        return receipt


_OPTIONAL = ("fingerprint", "prompt_sha256")


def sign_receipt(receipt: Receipt, key: SigningKey) -> Receipt:
    """The receipt with ``key`` and ``sig`` filled in."""
    keyed = dataclasses.replace(receipt, key=key.verify_key.encode().hex(), sig="")
    return dataclasses.replace(keyed, sig=key.sign(canonical_bytes(keyed.unsigned())).signature.hex())


def verify_receipt(receipt: Receipt, *, text: str, tokens: int, expected_key: str | None = None) -> None:
    """Check the signature and that the receipt matches what the client received.

    Raises:
        SignatureError: forged or altered receipt (code RECEIPT_INVALID), or one signed by
            another key than ``expected_key`` (the host's published key).
    """
    if expected_key is not None and receipt.key.lower() != expected_key.lower().removeprefix("0x"):
        raise SignatureError("receipt signed by a key the host did not publish", code="RECEIPT_INVALID")
    try:
        _verify(receipt.key, receipt.sig, canonical_bytes(receipt.unsigned()))
    except SignatureError:
        raise SignatureError("receipt signature does not verify", code="RECEIPT_INVALID") from None
    if receipt.text_sha256 != text_digest(text) or receipt.tokens != tokens:
        raise SignatureError("receipt does not match the streamed answer", code="RECEIPT_INVALID")
