"""End-to-end encryption, part 1: the primitives and the ``encrypted_session_init`` crypto.

Theory of operation (exactly the public Fabstir scheme, PROTOCOL.md §2.2 and §5.1)::

    client (static key c, fresh ephemeral key e)        host (static key h, H = h·G in the registry)
    shared_x = X(e·H)                                    shared_x = X(h·E)
    k_init   = HKDF-SHA256(shared_x, salt=0^32, info="", L=32)
    ct       = XChaCha20-Poly1305(k_init, nonce24, aad="").seal(init JSON)
    sig      = ECDSA_c(SHA256(ct))        -- ours ("ciphertext"): the node recovers c's address
             | ECDSA_c(SHA256("E2EEv1|"‖E‖"|"‖H‖"|"‖salt‖"|"‖nonce‖"|"‖info[‖"|"‖aad]))  -- TS SDK ("e2eev1")
    payload  = {ephPubHex, saltHex, nonceHex, ciphertextHex, signatureHex, recid, alg, info, aadHex}
                                                         client_address = addr(recover(sig, SHA256(ct)))

The host never rejects an init because of the address it recovers: with the TS
SDK's digest it is an unrelated (but well-defined) address. It does reject a
signature that does not recover (bad v, r or s out of range, high S), as the
node's k256 ``recover_from_prehash`` does.

Every failure raises :class:`E2EError` (a :class:`~fabstir.errors.RemoteProtocolError`)
with an :class:`E2EErrorCode`; the init path uses the public node's codes.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import coincurve
import nacl.bindings
import nacl.exceptions
from eth_hash.auto import keccak

from fabstir.errors import RemoteProtocolError
from fabstir.protocol.parse import check_json_depth

__all__ = [
    "random_private_key",
    "ALG",
    "INIT_PAYLOAD_FIELDS",
    "NONCE_SIZE",
    "E2EError",
    "E2EErrorCode",
    "OpenedSessionInit",
    "SessionInitPayload",
    "SignatureScheme",
    "address_of",
    "build_encrypted_session_init",
    "decode_hex",
    "derive_init_key",
    "e2eev1_preimage",
    "ecdh_shared_point",
    "hkdf_extract",
    "hkdf_sha256",
    "open_encrypted_session_init",
    "recover_address",
    "xchacha_decrypt",
    "xchacha_encrypt",
]

NONCE_SIZE = 24
KEY_SIZE = 32
ALG = "secp256k1-ecdh(ephemeral→static)+hkdf(sha256)+xchacha20-poly1305"
"""The ``alg`` field the TS SDK sends (the node ignores it)."""
INIT_PAYLOAD_FIELDS = ("ephPubHex", "ciphertextHex", "signatureHex", "nonceHex", "aadHex")
"""The payload fields the node requires (all strings; ``aadHex`` may be empty)."""

SignatureScheme = Literal["ciphertext", "e2eev1"]
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_LIB_ERRORS = (ValueError, TypeError, OverflowError, nacl.exceptions.CryptoError)


class E2EErrorCode(enum.StrEnum):
    """Codes of E2E failures; the first group is the public node's, the last three are ours."""

    INVALID_NONCE_SIZE = "INVALID_NONCE_SIZE"
    DECRYPTION_FAILED = "DECRYPTION_FAILED"
    INVALID_HEX_ENCODING = "INVALID_HEX_ENCODING"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    MISSING_PAYLOAD = "MISSING_PAYLOAD"
    MISSING_PAYLOAD_FIELDS = "MISSING_PAYLOAD_FIELDS"
    SESSION_KEY_NOT_FOUND = "SESSION_KEY_NOT_FOUND"
    INVALID_UTF8 = "INVALID_UTF8"
    ENCRYPTION_FAILED = "ENCRYPTION_FAILED"
    REPLAYED_MESSAGE = "REPLAYED_MESSAGE"
    INVALID_MESSAGE_INDEX = "INVALID_MESSAGE_INDEX"
    INVALID_KEY = "INVALID_KEY"


class E2EError(RemoteProtocolError):
    """An end-to-end encryption failure; ``code`` is an :class:`E2EErrorCode`."""

    default_code = E2EErrorCode.DECRYPTION_FAILED


def _fail(code: E2EErrorCode, message: str) -> E2EError:
    return E2EError(message, code=code)


# --- encodings --------------------------------------------------------------


def decode_hex(value: str, field: str) -> bytes:
    """Decode hex as the node does: one optional lowercase ``0x``, either case, even length.

    Raises:
        E2EError: INVALID_HEX_ENCODING.
    """
    text = value[2:] if value.startswith("0x") else value
    if text and not (len(text) % 2 == 0 and text.isascii() and text.isalnum()):  # fromhex would skip spaces
        raise _fail(E2EErrorCode.INVALID_HEX_ENCODING, f"{field} is not valid hex")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise _fail(E2EErrorCode.INVALID_HEX_ENCODING, f"{field} is not valid hex") from exc


def _key_bytes(key: bytes | str, what: str) -> bytes:
    raw = decode_hex(key, what) if isinstance(key, str) else bytes(key)
    if len(raw) != KEY_SIZE or not 0 < int.from_bytes(raw, "big") < _N:
        raise _fail(E2EErrorCode.INVALID_KEY, f"{what} is not a valid secp256k1 private key")
    return raw


def _public_key(raw: bytes, code: E2EErrorCode, what: str) -> coincurve.PublicKey:
    shape_ok = (len(raw) == 33 and raw[0] in (2, 3)) or (len(raw) == 65 and raw[0] == 4)
    try:
        if shape_ok:
            return coincurve.PublicKey(raw)
    except _LIB_ERRORS:
        pass
    raise _fail(code, f"{what} is not a secp256k1 point (33 or 65 bytes)")


def _nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return os.urandom(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise _fail(E2EErrorCode.INVALID_NONCE_SIZE, f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return bytes(nonce)


# --- primitives -------------------------------------------------------------


def ecdh_shared_point(private_key: bytes, public_key: bytes) -> bytes:
    """The compressed point ``private_key · public_key``; its x coordinate is ``[1:]``.

    Raises:
        E2EError: DECRYPTION_FAILED, the public key is not a curve point.
    """
    return _ecdh(private_key, _public_key(public_key, E2EErrorCode.DECRYPTION_FAILED, "ephemeral public key"))


def _ecdh(private_key: bytes, point: coincurve.PublicKey) -> bytes:
    try:
        return point.multiply(private_key).format(compressed=True)
    except _LIB_ERRORS as exc:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "ECDH failed") from exc


def hkdf_extract(salt: bytes | None, ikm: bytes) -> bytes:
    """HKDF-SHA256 extract (RFC 5869); ``salt=None`` means 32 zero bytes."""
    return hmac.digest(salt or bytes(32), ikm, "sha256")


def hkdf_sha256(ikm: bytes, *, salt: bytes | None = None, info: bytes = b"", length: int = 32) -> bytes:
    """HKDF-SHA256 extract-then-expand (RFC 5869)."""
    prk, block, out = hkdf_extract(salt, ikm), b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
    return out[:length]


def derive_init_key(shared_x: bytes) -> bytes:
    """``k_init`` from the ECDH x coordinate (zero salt, empty info, 32 bytes)."""
    return hkdf_sha256(shared_x)


def xchacha_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 (libsodium IETF): ciphertext ‖ 16-byte tag."""
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)
    except _LIB_ERRORS as exc:
        raise _fail(E2EErrorCode.ENCRYPTION_FAILED, "encryption failed") from exc


def xchacha_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Open an XChaCha20-Poly1305 box.

    Raises:
        E2EError: DECRYPTION_FAILED (wrong key, nonce or AAD, or tampered data).
    """
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except _LIB_ERRORS as exc:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "authenticated decryption failed") from exc


def e2eev1_preimage(eph_pub: bytes, host_pub: bytes, salt: bytes, nonce: bytes, info: bytes = b"",
                    aad: bytes = b"") -> bytes:
    """What the TS SDK hashes and signs: ``"E2EEv1|"‖ephPub‖"|"‖hostPub‖"|"‖salt‖"|"‖nonce‖"|"‖info[‖"|"‖aad]``."""
    return b"|".join([b"E2EEv1", eph_pub, host_pub, salt, nonce, info, *([aad] if aad else [])])


def address_of(public_key: bytes) -> str:
    """Lowercase ``0x`` Ethereum address of a 33- or 65-byte public key."""
    uncompressed = _public_key(public_key, E2EErrorCode.INVALID_KEY, "public key").format(compressed=False)
    return "0x" + keccak(uncompressed[1:])[12:].hex()


def recover_address(signature: bytes, digest: bytes) -> str:
    """The address that signed the 32-byte ``digest``, recovered as the public node does.

    ``signature`` is ``r‖s‖v`` with v in 0-3 or 27-30; high-S signatures are refused (k256).

    Raises:
        E2EError: DECRYPTION_FAILED, the signature does not recover a key.
    """
    if len(signature) != 65 or len(digest) != 32:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "signature must be 65 bytes r||s||v over a 32-byte digest")
    recid = signature[64] - 27 if signature[64] >= 27 else signature[64]
    if recid > 3:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, f"recovery id v={signature[64]} is not 0-3 or 27-30")
    if int.from_bytes(signature[32:64], "big") > _N // 2:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "signature has a high S value")
    try:
        key = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes([recid]), digest, hasher=None)
    except _LIB_ERRORS as exc:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "signature does not recover a public key") from exc
    return address_of(key.format(compressed=False))


# --- the init plaintext -------------------------------------------------------


def _valid_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInitPayload:
    """The JSON sealed inside ``encrypted_session_init`` (camelCase on the wire).

    Raises:
        E2EError: INVALID_PAYLOAD when a field has the wrong type or size.
    """

    job_id: str
    model_name: str
    session_key: bytes = dataclasses.field(repr=False)
    price_per_token: int
    recovery_public_key: str | None = None

    def __post_init__(self) -> None:
        price = self.price_per_token
        if not (_valid_text(self.job_id) and _valid_text(self.model_name)
                and isinstance(self.session_key, bytes) and len(self.session_key) == KEY_SIZE
                and isinstance(price, int) and not isinstance(price, bool) and 0 <= price < 1 << 64
                and (self.recovery_public_key is None or _valid_text(self.recovery_public_key))):
            raise _fail(E2EErrorCode.INVALID_PAYLOAD, "session init needs jobId/modelName strings, a 32-byte "
                                                      "sessionKey and a u64 pricePerToken")

    def to_wire(self) -> dict[str, Any]:
        """The JSON object, in the TS SDK's key order (sessionKey, jobId, modelName, pricePerToken, …)."""
        wire: dict[str, Any] = {"sessionKey": self.session_key.hex(), "jobId": self.job_id,
                                "modelName": self.model_name, "pricePerToken": self.price_per_token}
        if self.recovery_public_key is not None:
            wire["recoveryPublicKey"] = self.recovery_public_key
        return wire

    def to_json_bytes(self) -> bytes:
        """UTF-8 JSON byte-identical to the TS SDK's ``JSON.stringify``."""
        return json.dumps(self.to_wire(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> SessionInitPayload:
        """Parse a decrypted init as the node does (unknown keys ignored; ``0x`` allowed on the key).

        Raises:
            E2EError: DECRYPTION_FAILED (the node's code for any init parse failure).
        """
        obj = _load_init_json(data)
        job, model, key, price = (obj.get(k) for k in ("jobId", "modelName", "sessionKey", "pricePerToken"))
        recovery = obj.get("recoveryPublicKey")
        if not (isinstance(job, str) and isinstance(model, str) and isinstance(key, str)
                and isinstance(price, int) and not isinstance(price, bool)):
            raise _fail(E2EErrorCode.DECRYPTION_FAILED, "session init JSON has missing or mistyped fields")
        try:
            key_bytes = decode_hex(key, "sessionKey")
            return cls(job, model, key_bytes, price, recovery)
        except E2EError as exc:
            raise _fail(E2EErrorCode.DECRYPTION_FAILED, f"invalid session init JSON: {exc.message}") from exc


class _Object(dict[str, Any]):
    duplicates: frozenset[str] = frozenset()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        obj.duplicates = frozenset(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    return obj


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _load_init_json(data: bytes) -> _Object:
    try:
        text = data.decode()
        check_json_depth(text)
        obj = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except (ValueError, RecursionError, RemoteProtocolError) as exc:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "session init is not UTF-8 JSON") from exc
    if not isinstance(obj, _Object) or obj.duplicates & {"jobId", "modelName", "sessionKey", "pricePerToken",
                                                          "recoveryPublicKey"}:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "session init must be one JSON object without duplicate fields")
    return obj


# --- build (client) and open (host) --------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class OpenedSessionInit:
    """A decrypted ``encrypted_session_init``.

    Attributes:
        init: the parsed plaintext; ``init.session_key`` keys the session's traffic.
        client_address: lowercase ``0x`` address recovered from SHA256(ciphertext), as the node echoes it.
        init_id: the ephemeral key's x coordinate: equal for a replayed init however it is re-encoded
            (compressed, uncompressed or negated), so a host can refuse replays with :class:`InitReplayCache`.
    """

    init: SessionInitPayload
    client_address: str
    init_id: bytes = dataclasses.field(repr=False)
    sdk_digest_address: str | None = None
    """The address recovered over the TS SDK's E2EEv1 digest (its ``sdk_view``): the real client for an
    init the public SDK signed, an unrelated address for ours (``None`` if nothing recovers)."""

    @property
    def signer_candidates(self) -> tuple[str, ...]:
        """Every address that may have signed the init (ours, then the TS SDK's digest), lowercase."""
        return (self.client_address,) + ((self.sdk_digest_address,) if self.sdk_digest_address else ())


def build_encrypted_session_init(
    host_public_key: bytes | str,
    init: SessionInitPayload,
    client_key: bytes | str,
    *,
    eph_private_key: bytes | str | None = None,
    nonce: bytes | None = None,
    signature_scheme: SignatureScheme = "ciphertext",
) -> dict[str, Any]:
    """Seal ``init`` to the host and sign it; returns the ``payload`` object of ``encrypted_session_init``.

    Deterministic when ``eph_private_key`` and ``nonce`` are given. ``"e2eev1"`` reproduces the TS SDK
    byte for byte; ``"ciphertext"`` (default) lets the node recover the real client address.

    Raises:
        E2EError: INVALID_KEY (a key is malformed) or INVALID_NONCE_SIZE.
    """
    host_raw = decode_hex(host_public_key, "host public key") if isinstance(host_public_key, str) else host_public_key
    host_pub = _public_key(bytes(host_raw), E2EErrorCode.INVALID_KEY, "host public key").format(compressed=True)
    signer = coincurve.PrivateKey(_key_bytes(client_key, "client key"))
    eph = coincurve.PrivateKey(None if eph_private_key is None else _key_bytes(eph_private_key, "ephemeral key"))
    eph_pub, box_nonce, salt = eph.public_key.format(compressed=True), _nonce(nonce), bytes(32)
    k_init = derive_init_key(ecdh_shared_point(eph.secret, host_pub)[1:])
    ciphertext = xchacha_encrypt(k_init, box_nonce, init.to_json_bytes(), b"")
    if signature_scheme == "e2eev1":
        digest = hashlib.sha256(e2eev1_preimage(eph_pub, host_pub, salt, box_nonce)).digest()
    elif signature_scheme == "ciphertext":
        digest = hashlib.sha256(ciphertext).digest()
    else:
        raise _fail(E2EErrorCode.INVALID_PAYLOAD, f"unknown signature scheme {signature_scheme!r}")
    signature = signer.sign_recoverable(digest, hasher=None)
    return {"ephPubHex": eph_pub.hex(), "saltHex": salt.hex(), "nonceHex": box_nonce.hex(),
            "ciphertextHex": ciphertext.hex(), "signatureHex": signature.hex(), "recid": signature[64],
            "alg": ALG, "info": "", "aadHex": ""}


def _init_fields(payload: object) -> tuple[bytes, ...]:
    if payload is None:
        raise _fail(E2EErrorCode.MISSING_PAYLOAD, "encrypted_session_init must include a payload object")
    values = [payload.get(f) if isinstance(payload, Mapping) else None for f in INIT_PAYLOAD_FIELDS]
    if not all(isinstance(v, str) for v in values):
        raise _fail(E2EErrorCode.INVALID_PAYLOAD, "payload needs string " + ", ".join(INIT_PAYLOAD_FIELDS))
    return tuple(decode_hex(v, f) for v, f in zip(values, INIT_PAYLOAD_FIELDS))  # type: ignore[arg-type]


def open_encrypted_session_init(payload: object, host_private_key: bytes | str) -> OpenedSessionInit:
    """Decrypt an ``encrypted_session_init`` payload with the host key and recover the client address.

    Args:
        payload: the message's ``payload`` value (``None`` when the message has none).
        host_private_key: the host's secp256k1 key (32 bytes, or hex with optional ``0x``).

    Raises:
        E2EError: MISSING_PAYLOAD, INVALID_PAYLOAD, INVALID_HEX_ENCODING, INVALID_NONCE_SIZE,
            DECRYPTION_FAILED (bad key, box, JSON or signature), or INVALID_KEY (bad host key).
            Reply with a coded ``error``; the client should send a new init.
    """
    host_key = _key_bytes(host_private_key, "host private key")
    eph_pub, ciphertext, signature, nonce, aad = _init_fields(payload)
    if len(nonce) != NONCE_SIZE:
        raise _fail(E2EErrorCode.INVALID_NONCE_SIZE, f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if not ciphertext or len(signature) != 65:
        raise _fail(E2EErrorCode.DECRYPTION_FAILED, "empty ciphertext or signature not 65 bytes")
    eph_point = _public_key(eph_pub, E2EErrorCode.DECRYPTION_FAILED, "ephemeral public key")
    plaintext = xchacha_decrypt(derive_init_key(_ecdh(host_key, eph_point)[1:]), nonce, ciphertext, aad)
    init = SessionInitPayload.from_json_bytes(plaintext)
    address = recover_address(signature, hashlib.sha256(ciphertext).digest())
    return OpenedSessionInit(init, address, init_id=eph_point.format(compressed=True)[1:],
                             sdk_digest_address=_sdk_digest_signer(payload, host_key, eph_pub, nonce, aad, signature))


def _sdk_digest_signer(payload: object, host_key: bytes, eph_pub: bytes, nonce: bytes, aad: bytes,
                       signature: bytes) -> str | None:
    """The signer over the TS SDK's E2EEv1 preimage (salt and info as the payload carries them), if any."""
    assert isinstance(payload, Mapping)
    salt_hex, info = payload.get("saltHex", ""), payload.get("info", "")
    if not isinstance(salt_hex, str) or not isinstance(info, str):
        return None
    try:
        salt = decode_hex(salt_hex, "saltHex") if salt_hex else bytes(32)
        host_pub = coincurve.PrivateKey(host_key).public_key.format(compressed=True)
        preimage = e2eev1_preimage(eph_pub, host_pub, salt, nonce, info.encode(), aad)
        return recover_address(signature, hashlib.sha256(preimage).digest())
    except E2EError:
        return None


def random_private_key() -> bytes:
    """A fresh random secp256k1 private key (32 bytes)."""
    while True:
        key = os.urandom(32)
        try:
            coincurve.PrivateKey(key)
        except ValueError:  # pragma: no cover - probability 2**-128
            continue
        return key
