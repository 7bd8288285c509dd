"""End-to-end encryption, part 2: session traffic under the 32-byte ``sessionKey``.

Every message after the init is XChaCha20-Poly1305 under the session key with a
fresh 24-byte nonce; the AAD names the message (PROTOCOL.md §2.5, §3.2)::

    client → node   encrypted_message    AAD "message_<n>"               n = 0, 1, 2 … after each init
    node → client   encrypted_chunk      AAD "chunk_<i>", payload.index  i = 0, 1, 2 … per response
                    (last chunk: empty text, "final": true on the message)
                    encrypted_response   AAD "encrypted_response_final", plaintext = finish_reason

Rule (ours; the public node decrypts with whatever AAD it is given): each side
accepts the peer's AAD indices strictly in order. The node takes only
``message_<expected>``; the client takes only ``chunk_<expected>`` of the response
it is waiting for. A lower index is ``REPLAYED_MESSAGE``; a higher or malformed one
is ``INVALID_MESSAGE_INDEX``; neither changes any state. A host refuses a replayed
init with :class:`InitReplayCache`. ``forget()`` zeroes the key when a session ends.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from fabstir.protocol.e2e_keys import (
    KEY_SIZE,
    NONCE_SIZE,
    E2EError,
    E2EErrorCode,
    OpenedSessionInit,
    decode_hex,
    xchacha_decrypt,
    xchacha_encrypt,
)

__all__ = [
    "CHUNK_AAD_PREFIX",
    "MESSAGE_AAD_PREFIX",
    "RESPONSE_FINAL_AAD",
    "ClientE2ESession",
    "InitReplayCache",
    "ReplayGuard",
    "SealedPayload",
    "ServerE2ESession",
    "SessionCipher",
    "encrypt_chunk_payload",
    "encrypt_message_payload",
    "encrypt_response_final_payload",
    "parse_sealed_payload",
]

MESSAGE_AAD_PREFIX = "message_"
CHUNK_AAD_PREFIX = "chunk_"
RESPONSE_FINAL_AAD = b"encrypted_response_final"
_INDEX = re.compile(rb"0|[1-9][0-9]{0,17}")


@dataclasses.dataclass(frozen=True, slots=True)
class SealedPayload:
    """The decoded ``payload`` of an encrypted message (not yet decrypted)."""

    ciphertext: bytes
    nonce: bytes
    aad: bytes
    index: object = None
    """The unauthenticated ``index`` field of a chunk payload, as received (``None`` if absent)."""


def parse_sealed_payload(payload: object) -> SealedPayload:
    """Decode ``{ciphertextHex, nonceHex, aadHex[, index]}`` with the node's checks and codes.

    Raises:
        E2EError: MISSING_PAYLOAD (``None``), MISSING_PAYLOAD_FIELDS, INVALID_HEX_ENCODING, INVALID_NONCE_SIZE.
    """
    if payload is None:
        raise E2EError("encrypted message has no payload", code=E2EErrorCode.MISSING_PAYLOAD)
    get = payload.get if isinstance(payload, Mapping) else _absent
    ciphertext, nonce, aad = get("ciphertextHex"), get("nonceHex"), get("aadHex")
    if not (isinstance(ciphertext, str) and isinstance(nonce, str) and isinstance(aad, str)):
        raise E2EError("payload needs string ciphertextHex, nonceHex and aadHex",
                       code=E2EErrorCode.MISSING_PAYLOAD_FIELDS)
    sealed = SealedPayload(decode_hex(ciphertext, "ciphertextHex"), decode_hex(nonce, "nonceHex"),
                           decode_hex(aad, "aadHex"), get("index"))
    if len(sealed.nonce) != NONCE_SIZE:
        raise E2EError(f"nonce must be {NONCE_SIZE} bytes, got {len(sealed.nonce)}",
                       code=E2EErrorCode.INVALID_NONCE_SIZE)
    return sealed


def _absent(key: str) -> None:
    return None


class SessionCipher:
    """XChaCha20-Poly1305 under one session key; payloads are the wire's hex objects.

    The key lives in a ``bytearray`` that :meth:`forget` overwrites with zeros. (libsodium
    is handed a short-lived ``bytes`` copy per call, which CPython cannot wipe.)

    Raises:
        E2EError: INVALID_KEY when ``session_key`` is not 32 bytes.
    """

    __slots__ = ("_key", "_live")

    def __init__(self, session_key: bytes | bytearray) -> None:
        if not isinstance(session_key, (bytes, bytearray)) or len(session_key) != KEY_SIZE:
            raise E2EError("session key must be 32 bytes", code=E2EErrorCode.INVALID_KEY)
        self._key = bytearray(session_key)
        self._live = True

    @property
    def active(self) -> bool:
        """False once :meth:`forget` has run."""
        return self._live

    def ensure_active(self) -> None:
        """Raises E2EError: SESSION_KEY_NOT_FOUND once the key was forgotten."""
        if not self._live:
            raise E2EError("the session key was forgotten", code=E2EErrorCode.SESSION_KEY_NOT_FOUND)

    def export_key(self) -> bytes:
        """A ``bytes`` copy of the key. Raises E2EError: SESSION_KEY_NOT_FOUND once forgotten."""
        self.ensure_active()
        return bytes(self._key)

    def encrypt(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> dict[str, Any]:
        """Seal ``plaintext``; returns ``{ciphertextHex, nonceHex, aadHex}`` (lowercase, no ``0x``).

        Raises:
            E2EError: SESSION_KEY_NOT_FOUND (forgotten) or INVALID_NONCE_SIZE.
        """
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise E2EError(f"nonce must be {NONCE_SIZE} bytes", code=E2EErrorCode.INVALID_NONCE_SIZE)
        sealed = xchacha_encrypt(self.export_key(), bytes(nonce), plaintext, aad)
        return {"ciphertextHex": sealed.hex(), "nonceHex": nonce.hex(), "aadHex": aad.hex()}

    def open(self, sealed: SealedPayload) -> bytes:
        """Decrypt a parsed payload. Raises E2EError: SESSION_KEY_NOT_FOUND or DECRYPTION_FAILED."""
        return xchacha_decrypt(self.export_key(), sealed.nonce, sealed.ciphertext, sealed.aad)

    def decrypt(self, payload: object) -> bytes:
        """Parse and decrypt a wire payload with the AAD it carries (the public node's behaviour).

        Raises:
            E2EError: any code of :func:`parse_sealed_payload`, SESSION_KEY_NOT_FOUND, DECRYPTION_FAILED.
        """
        key = self.export_key()
        sealed = parse_sealed_payload(payload)
        return xchacha_decrypt(key, sealed.nonce, sealed.ciphertext, sealed.aad)

    def forget(self) -> None:
        """Overwrite the key with zeros; every later use raises SESSION_KEY_NOT_FOUND."""
        self._key[:] = bytes(len(self._key))
        self._live = False


def _utf8(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise E2EError("decrypted payload is not UTF-8", code=E2EErrorCode.INVALID_UTF8) from exc


def _text(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def encrypt_message_payload(session_key: bytes, plaintext: str | bytes, index: int, *,
                            nonce: bytes | None = None) -> dict[str, Any]:
    """A client ``encrypted_message`` payload with AAD ``message_<index>``."""
    return SessionCipher(session_key).encrypt(_text(plaintext), f"{MESSAGE_AAD_PREFIX}{index}".encode(), nonce)


def encrypt_chunk_payload(session_key: bytes, text: str | bytes, index: int, *,
                          nonce: bytes | None = None) -> dict[str, Any]:
    """A node ``encrypted_chunk`` payload with AAD ``chunk_<index>`` and ``index``."""
    payload = SessionCipher(session_key).encrypt(_text(text), f"{CHUNK_AAD_PREFIX}{index}".encode(), nonce)
    payload["index"] = index
    return payload


def encrypt_response_final_payload(session_key: bytes, finish_reason: str, *,
                                   nonce: bytes | None = None) -> dict[str, Any]:
    """A node ``encrypted_response`` payload: AAD ``encrypted_response_final``, plaintext = finish_reason."""
    return SessionCipher(session_key).encrypt(finish_reason.encode(), RESPONSE_FINAL_AAD, nonce)


class ReplayGuard:
    """Accepts AAD labels ``<prefix><n>`` only in order n = 0, 1, 2 … (no gap, no repeat)."""

    __slots__ = ("_prefix", "_next")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix.encode()
        self._next = 0

    @property
    def expected(self) -> int:
        """The index the next label must carry."""
        return self._next

    def check(self, aad: bytes) -> int:
        """Return the index in ``aad`` if it is the expected one; does not advance.

        Raises:
            E2EError: REPLAYED_MESSAGE (an index already used) or INVALID_MESSAGE_INDEX (a gap or bad label).
        """
        digits = aad[len(self._prefix):] if aad.startswith(self._prefix) else b""
        index = int(digits) if _INDEX.fullmatch(digits) else -1
        if index == self._next:
            return index
        if 0 <= index < self._next:
            raise E2EError(f"{aad!r} was already received (expected index {self._next})",
                           code=E2EErrorCode.REPLAYED_MESSAGE)
        raise E2EError(f"AAD {aad[:40]!r} is not {self._prefix.decode()}{self._next}",
                       code=E2EErrorCode.INVALID_MESSAGE_INDEX)

    def advance(self) -> None:
        self._next += 1

    def reset(self) -> None:
        self._next = 0


class ServerE2ESession:
    """The node's side of one encrypted session (one init; a new init replaces it)."""

    __slots__ = ("_cipher", "_messages", "_chunk")

    def __init__(self, session_key: bytes | bytearray) -> None:
        self._cipher = SessionCipher(session_key)
        self._messages = ReplayGuard(MESSAGE_AAD_PREFIX)
        self._chunk = 0

    @classmethod
    def from_init(cls, opened: OpenedSessionInit) -> ServerE2ESession:
        return cls(opened.init.session_key)

    @property
    def active(self) -> bool:
        return self._cipher.active

    @property
    def expected_message_index(self) -> int:
        return self._messages.expected

    def decrypt_message(self, payload: object) -> str:
        """Open a client ``encrypted_message`` whose AAD must be ``message_<expected>``; starts a new response.

        Raises:
            E2EError: SESSION_KEY_NOT_FOUND, MISSING_PAYLOAD, MISSING_PAYLOAD_FIELDS, INVALID_HEX_ENCODING,
                INVALID_NONCE_SIZE, REPLAYED_MESSAGE, INVALID_MESSAGE_INDEX, DECRYPTION_FAILED, INVALID_UTF8.
        """
        return _utf8(self.decrypt_message_bytes(payload))

    def decrypt_message_bytes(self, payload: object) -> bytes:
        """As :meth:`decrypt_message`, without decoding the plaintext (a compressed inner payload starts
        with ``0xFF``, which is not UTF-8).

        Raises:
            E2EError: as :meth:`decrypt_message`, except INVALID_UTF8.
        """
        self._cipher.ensure_active()
        sealed = parse_sealed_payload(payload)
        self._messages.check(sealed.aad)
        plaintext = self._cipher.open(sealed)
        self._messages.advance()
        self._chunk = 0
        return plaintext

    def encrypt_chunk(self, text: str | bytes, *, nonce: bytes | None = None) -> dict[str, Any]:
        """The next ``encrypted_chunk`` payload (AAD ``chunk_<i>``, ``index`` i). Send the last, empty one
        with ``"final": true`` on the message."""
        payload = self._cipher.encrypt(_text(text), f"{CHUNK_AAD_PREFIX}{self._chunk}".encode(), nonce)
        payload["index"] = self._chunk
        self._chunk += 1
        return payload

    def encrypt_response_final(self, finish_reason: str, *, nonce: bytes | None = None) -> dict[str, Any]:
        """The ``encrypted_response`` payload that ends a response; chunk indices restart at 0."""
        payload = self._cipher.encrypt(finish_reason.encode(), RESPONSE_FINAL_AAD, nonce)
        self._chunk = 0
        return payload

    def forget(self) -> None:
        """Zero the session key (on disconnect or a new init)."""
        self._cipher.forget()


class ClientE2ESession:
    """The SDK's side of one encrypted session: numbers its messages, checks the node's chunks.

    State: idle → (:meth:`encrypt_message`) → streaming → (final chunk) → finished →
    (:meth:`decrypt_response_final` or :meth:`end_response`) → idle. Chunks are accepted only while
    streaming and only as ``chunk_<expected>``.
    """

    __slots__ = ("_cipher", "_messages", "_chunks", "_streaming", "_final_seen")

    def __init__(self, session_key: bytes | bytearray | None = None) -> None:
        self._cipher = SessionCipher(os.urandom(KEY_SIZE) if session_key is None else session_key)
        self._messages = 0
        self._chunks = ReplayGuard(CHUNK_AAD_PREFIX)
        self._streaming = self._final_seen = False

    @property
    def session_key(self) -> bytes:
        """A copy of the key, for :class:`~fabstir.protocol.e2e_keys.SessionInitPayload`."""
        return self._cipher.export_key()

    @property
    def active(self) -> bool:
        return self._cipher.active

    @property
    def next_message_index(self) -> int:
        return self._messages

    def encrypt_message(self, plaintext: str | bytes, *, nonce: bytes | None = None) -> dict[str, Any]:
        """The next ``encrypted_message`` payload (AAD ``message_<n>``); expects a new response."""
        payload = self._cipher.encrypt(_text(plaintext), f"{MESSAGE_AAD_PREFIX}{self._messages}".encode(), nonce)
        self._messages += 1
        self._chunks.reset()
        self._streaming, self._final_seen = True, False
        return payload

    def decrypt_chunk(self, payload: object, *, final: bool = False) -> str:
        """Open the next ``encrypted_chunk``; ``final`` is the message's ``final`` flag.

        Raises:
            E2EError: the codes of :func:`parse_sealed_payload`, REPLAYED_MESSAGE (a chunk already
                received, or none is expected), INVALID_MESSAGE_INDEX, DECRYPTION_FAILED, INVALID_UTF8.
        """
        self._cipher.ensure_active()
        sealed = parse_sealed_payload(payload)
        if not self._streaming:
            raise E2EError("no response is in progress", code=E2EErrorCode.REPLAYED_MESSAGE)
        if self._final_seen:
            raise E2EError("chunk after the final chunk", code=E2EErrorCode.INVALID_MESSAGE_INDEX)
        index = self._chunks.check(sealed.aad)
        if sealed.index is not None and (type(sealed.index) is not int or sealed.index != index):
            raise E2EError(f"payload index {sealed.index!r} does not match its AAD",
                           code=E2EErrorCode.INVALID_MESSAGE_INDEX)
        text = _utf8(self._cipher.open(sealed))
        self._chunks.advance()
        self._final_seen = final
        return text

    def decrypt_response_final(self, payload: object) -> str:
        """Open the ``encrypted_response`` that ends a response; returns the finish_reason.

        Raises:
            E2EError: as :meth:`decrypt_chunk`; REPLAYED_MESSAGE when no response is in progress.
        """
        self._cipher.ensure_active()
        sealed = parse_sealed_payload(payload)
        if not self._streaming:
            raise E2EError("no response is in progress", code=E2EErrorCode.REPLAYED_MESSAGE)
        if sealed.aad != RESPONSE_FINAL_AAD:
            raise E2EError("encrypted_response AAD must be encrypted_response_final",
                           code=E2EErrorCode.INVALID_MESSAGE_INDEX)
        reason = _utf8(self._cipher.open(sealed))
        self.end_response()
        return reason

    def end_response(self) -> None:
        """The response ended without ``encrypted_response`` (``stream_end`` after a cancel or error)."""
        self._streaming = self._final_seen = False

    def forget(self) -> None:
        """Zero the session key."""
        self._cipher.forget()


class InitReplayCache:
    """Remembers the last ``capacity`` inits a host accepted; a replayed one is refused.

    Keyed on :attr:`OpenedSessionInit.init_id` (the ephemeral key's x coordinate), so
    re-encoding or negating the ephemeral key does not get a replay through.
    """

    __slots__ = ("_seen", "_capacity")

    def __init__(self, capacity: int = 65536) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, opened: OpenedSessionInit) -> None:
        """Record an accepted init.

        Raises:
            E2EError: REPLAYED_MESSAGE, this init was already accepted.
        """
        if opened.init_id in self._seen:
            raise E2EError("this encrypted_session_init was already used", code=E2EErrorCode.REPLAYED_MESSAGE)
        self._seen[opened.init_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
