"""The SDK's side of end-to-end encryption (PROTOCOL.md §2.2, §2.5, §3.2, §5.1).

Theory of operation. A session is encrypted when the host's secp256k1 public key is
known (see :meth:`fabstir.sdk.inference.InferenceManager.connect_to_session` for
which key is trusted). :class:`ClientEncryption` then holds, for that session:

- the client key that signs every ``encrypted_session_init`` (the SDK's account, or a
  random key made once per session), so the node's ``client_address`` is ours;
- the current :class:`~fabstir.protocol.e2e.ClientE2ESession` (the session key).

Like the TS SDK, every prompt starts with a fresh ``encrypted_session_init`` (a new
random session key, message index 0): within one key the public protocol's AAD
``chunk_<i>`` does not name the response, so an old response's chunks could be
replayed into a later one; a new key per prompt rules that out. The init sent when
the session opens is used by the first prompt, so that one costs no extra round trip.

:class:`EncryptedStream` turns one answer's sealed frames back into plaintext
messages for the ordinary :class:`~fabstir.protocol.StreamAccumulator`: each
``encrypted_chunk`` (accepted only as ``chunk_0, chunk_1, …``) becomes a
``stream_chunk``; ``encrypted_response`` carries the finish reason. ``stream_end``
(plaintext) ends the answer; if it never comes, the answer ends
:data:`END_GRACE_S` seconds after the ``final`` chunk or ``encrypted_response``.
"""

from __future__ import annotations

from collections.abc import Sequence

import coincurve

from fabstir.errors import ConfigError
from fabstir.protocol import (
    ChatTurn,
    EncryptedChunk,
    EncryptedMessage,
    EncryptedResponse,
    EncryptedSessionInit,
    EncryptedSessionResume,
    InferenceRequest,
    ServerMessage,
    SessionInitAck,
    StreamChunk,
    StreamEnd,
    encode_inner_payload,
    encrypted_request_body,
    encrypted_resume_body,
)
from fabstir.protocol.e2e import (
    ClientE2ESession,
    E2EError,
    SessionInitPayload,
    build_encrypted_session_init,
    decode_hex,
)
from fabstir.protocol.e2e_keys import random_private_key

__all__ = ["END_GRACE_S", "ClientEncryption", "EncryptedStream", "embed_context", "normalize_public_key"]

END_GRACE_S = 3.0
"""Seconds to wait for ``stream_end`` after the ``final`` chunk or ``encrypted_response`` (as the TS SDK)."""

EMBEDDED_CONTEXT_MESSAGES = 10
"""Messages of restored history embedded in the first prompt to a node that cannot resume encrypted."""


def normalize_public_key(key: str | bytes) -> str:
    """A secp256k1 public key (33 or 65 bytes, hex with optional ``0x``) as compressed lowercase hex.

    Raises:
        ConfigError: not a point on the curve.
    """
    try:
        raw = decode_hex(key, "host public key") if isinstance(key, str) else bytes(key)
        if len(raw) not in (33, 65):
            raise ValueError(len(raw))
        return coincurve.PublicKey(raw).format(compressed=True).hex()
    except (E2EError, ValueError, TypeError) as exc:
        raise ConfigError("the host public key must be a secp256k1 point (33 or 65 bytes of hex)",
                          code="INVALID_HOST_KEY") from exc


class ClientEncryption:
    """One session's encryption state on the client; see the module docstring."""

    def __init__(self, host_public_key: str, client_key: bytes | None, *, required: bool, announced: bool) -> None:
        self.host_public_key = normalize_public_key(host_public_key)
        self._client_key = bytes(client_key) if client_key is not None else random_private_key()
        self.required = required
        """The caller asked for encryption: never fall back to plaintext."""
        self.announced = announced
        """The key came from the node's own ``connected`` message (protects against passive observers only)."""
        self.current: ClientE2ESession | None = None
        self._pending: ClientE2ESession | None = None
        self.fresh = False
        """The current session key has not sealed any message yet (the next prompt may use it)."""
        self.client_address: str | None = None

    def init_message(self, session_id: str, job_id: int | None, chain_id: int | None, model: str,
                     request_id: str) -> EncryptedSessionInit:
        """A new ``encrypted_session_init`` with a fresh session key (used once :meth:`accept` sees the ack)."""
        e2e = ClientE2ESession()
        init = SessionInitPayload(job_id=str(job_id) if job_id is not None else session_id, model_name=model,
                                  session_key=e2e.session_key, price_per_token=0)
        payload = build_encrypted_session_init(self.host_public_key, init, self._client_key)
        if self._pending is not None:
            self._pending.forget()
        self._pending = e2e
        return EncryptedSessionInit(payload=payload, session_id=session_id, job_id=job_id, chain_id=chain_id,
                                    request_id=request_id)

    def accept(self, ack: SessionInitAck) -> None:
        """The node acknowledged the last init: its key becomes the current one."""
        if self._pending is None:
            return
        if self.current is not None:
            self.current.forget()
        self.current, self._pending, self.fresh = self._pending, None, True
        self.client_address = ack.client_address

    def seal_prompt(self, session_id: str, request: InferenceRequest, *, message_index: int | None,
                    compress: bool, request_id: str) -> tuple[EncryptedMessage, EncryptedStream]:
        """The ``encrypted_message`` for one prompt, and the stream that will open its answer."""
        e2e = self._require_current()
        body = encode_inner_payload(encrypted_request_body(request, message_index=message_index), compress=compress)
        message = EncryptedMessage(payload=e2e.encrypt_message(body), session_id=session_id, request_id=request_id)
        self.fresh = False
        return message, EncryptedStream(e2e, request_id)

    def seal_resume(self, session_id: str, history: Sequence[ChatTurn], last_message_index: int, *,
                    job_id: int | None, chain_id: int | None, compress: bool,
                    request_id: str) -> EncryptedSessionResume:
        """An encrypted ``session_resume`` carrying ``history`` under the current key."""
        e2e = self._require_current()
        body = encode_inner_payload(encrypted_resume_body(tuple(history), last_message_index), compress=compress)
        payload = e2e.encrypt_message(body)
        e2e.end_response()  # the node answers session_resumed, not a stream
        self.fresh = False
        return EncryptedSessionResume(session_id=session_id, payload=payload, job_id=job_id, chain_id=chain_id,
                                      request_id=request_id)

    def _require_current(self) -> ClientE2ESession:
        if self.current is None or not self.current.active:
            raise E2EError("no encrypted session key; send encrypted_session_init first",
                           code="SESSION_KEY_NOT_FOUND")
        return self.current

    def forget(self) -> None:
        """Zero the session keys (the session closed)."""
        for e2e in (self.current, self._pending):
            if e2e is not None:
                e2e.forget()
        self.current = self._pending = None
        self.fresh = False


class EncryptedStream:
    """Opens the sealed frames of one answer; see the module docstring."""

    __slots__ = ("_e2e", "_request_id", "finish_reason", "ended", "tokens")

    def __init__(self, e2e: ClientE2ESession, request_id: str) -> None:
        self._e2e = e2e
        self._request_id = request_id
        self.finish_reason: str | None = None
        self.ended = False
        """The ``final`` chunk or ``encrypted_response`` arrived: ``stream_end`` should follow."""
        self.tokens = 0

    def _mine(self, message: ServerMessage) -> bool:
        other = getattr(message, "request_id", None)
        return other is None or other == self._request_id

    def open(self, message: ServerMessage) -> ServerMessage | None:
        """The plaintext equivalent of ``message`` (``None`` when it only carried the finish reason).

        Frames of another request pass through untouched (the accumulator ignores them).

        Raises:
            E2EError: a chunk or response that does not decrypt, or arrives out of order.
        """
        if isinstance(message, EncryptedChunk):
            if not self._mine(message):
                return None
            text = self._e2e.decrypt_chunk(message.payload, final=message.final)
            self.tokens += message.tokens
            self.ended = self.ended or message.final
            return StreamChunk(content=text, tokens=message.tokens, request_id=message.request_id)
        if isinstance(message, EncryptedResponse):
            if self._mine(message):
                self.finish_reason = self._e2e.decrypt_response_final(message.payload)
                self.ended = True
            return None
        if isinstance(message, StreamEnd) and self._mine(message):
            self._e2e.end_response()
        return message

    def synthesized_end(self) -> StreamEnd:
        """The ``stream_end`` the node never sent (after the grace period)."""
        self._e2e.end_response()
        return StreamEnd(reason="complete", tokens_used=self.tokens, finish_reason=self.finish_reason,
                         request_id=self._request_id)


def embed_context(history: Sequence[ChatTurn], prompt: str) -> str:
    """``prompt`` preceded by the last messages of ``history``, for a node that cannot load it otherwise."""
    turns = list(history)[-EMBEDDED_CONTEXT_MESSAGES:]
    if not turns:
        return prompt
    lines = "\n".join(f"{turn.role.capitalize()}: {turn.content}" for turn in turns)
    return f"Previous conversation:\n{lines}\n\nUser: {prompt}"

