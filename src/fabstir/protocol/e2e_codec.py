"""End-to-end encryption as a codec for the sans-I/O connections (PROTOCOL.md §2.2, §2.5, §3.2).

The connections never see a key: they hand sealed messages to these codecs and get plaintext
messages back, and the other way round.

- :class:`ServerE2ECodec` opens ``encrypted_session_init`` with the host key (refusing a replay
  seen by the node's :class:`InitReplayCache`) and holds one connection's encrypted sessions, one key per session id
  (at most :data:`MAX_SESSIONS_PER_CONNECTION`; the oldest key is zeroed beyond that, and a
  new init for a session id zeroes its old key). It opens ``encrypted_message`` into a
  :class:`PromptMessage` and an encrypted ``session_resume`` into a :class:`SessionResume`,
  and seals answers (``encrypted_chunk`` per piece; a complete answer ends with the empty
  ``final`` chunk and ``encrypted_response``).
- :class:`ClientE2ECodec` holds the client's current key (and the one an unanswered init
  offers), seals prompts and resumes, and opens the answer's frames strictly in order.

Every failure raises :class:`~fabstir.protocol.e2e_keys.E2EError` or
:class:`~fabstir.errors.RemoteProtocolError` with the node's codes and changes no key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from fabstir.protocol.codes import ErrorCode, Feature
from fabstir.protocol.e2e_keys import (
    E2EError,
    E2EErrorCode,
    SessionInitPayload,
    build_encrypted_session_init,
    open_encrypted_session_init,
)
from fabstir.protocol.e2e_session import ClientE2ESession, InitReplayCache, ServerE2ESession
from fabstir.protocol.events import EncryptedInitReceived
from fabstir.protocol.inner import (
    decode_inner_payload,
    encode_inner_payload,
    encrypted_request_body,
    encrypted_resume_body,
    parse_encrypted_request,
    parse_encrypted_resume,
)
from fabstir.protocol.messages import (
    ChatTurn,
    EncryptedChunk,
    EncryptedMessage,
    EncryptedResponse,
    EncryptedSessionInit,
    EncryptedSessionResume,
    InferenceRequest,
    PromptMessage,
    ServerMessage,
    SessionResume,
    StreamChunk,
)

__all__ = ["MAX_SESSIONS_PER_CONNECTION", "ClientE2ECodec", "ServerE2ECodec", "ServerSealer"]

MAX_SESSIONS_PER_CONNECTION = 64
"""Encrypted sessions one server connection may hold; the oldest key is zeroed beyond that."""


class ServerSealer:
    """Seals one answer under one session's key (the ``encrypted_chunk`` ``chunk_<i>`` order)."""

    __slots__ = ("_e2e", "session_id")

    def __init__(self, e2e: ServerE2ESession, session_id: str) -> None:
        self._e2e = e2e
        self.session_id = session_id

    def chunk(self, text: str, tokens: int, request_id: str | None) -> EncryptedChunk:
        """Raises E2EError: SESSION_KEY_NOT_FOUND (the key was zeroed)."""
        return EncryptedChunk(payload=self._e2e.encrypt_chunk(text), tokens=tokens, session_id=self.session_id,
                              request_id=request_id)

    def complete(self, finish_reason: str, request_id: str | None) -> list[ServerMessage]:
        """The empty ``final`` chunk and ``encrypted_response`` (a cancelled answer gets neither)."""
        final = EncryptedChunk(payload=self._e2e.encrypt_chunk(""), tokens=0, session_id=self.session_id,
                               request_id=request_id, final=True)
        response = EncryptedResponse(payload=self._e2e.encrypt_response_final(finish_reason),
                                     session_id=self.session_id, request_id=request_id)
        return [final, response]


class ServerE2ECodec:
    """The encrypted sessions of one server connection; see the module docstring."""

    def __init__(self, *, host_key: bytes | None, init_replays: InitReplayCache | None, allow_compressed: bool,
                 max_inner_bytes: int) -> None:
        self._keys: OrderedDict[str, tuple[ServerE2ESession, tuple[str, ...]]] = OrderedDict()
        self._host_key, self._init_replays = host_key, init_replays
        self._allow_compressed = allow_compressed
        self._max_inner_bytes = max_inner_bytes

    def __len__(self) -> int:
        return len(self._keys)

    def open_init(self, message: EncryptedSessionInit) -> EncryptedInitReceived:
        """Open an init with the host key (nothing is installed until :meth:`install`).

        Raises:
            E2EError: ENCRYPTION_NOT_SUPPORTED (no host key), the codes of :func:`open_encrypted_session_init`,
                REPLAYED_MESSAGE (an init already seen), MISSING_SESSION_ID.
        """
        if self._host_key is None:
            raise E2EError("this node does not serve encrypted sessions", code=ErrorCode.ENCRYPTION_NOT_SUPPORTED)
        opened = open_encrypted_session_init(message.payload, self._host_key)
        if self._init_replays is not None:
            self._init_replays.remember(opened)
        session_id = message.session_id or opened.init.job_id
        if not session_id:
            raise E2EError("encrypted_session_init needs a session_id", code=ErrorCode.MISSING_SESSION_ID)
        return EncryptedInitReceived(message, opened, session_id)

    def install(self, session_id: str, session_key: bytes, signers: tuple[str, ...]) -> None:
        """Key ``session_id`` (zeroing its old key, and the oldest one beyond the limit)."""
        old = self._keys.pop(session_id, None)
        if old is not None:
            old[0].forget()
        self._keys[session_id] = (ServerE2ESession(session_key), signers)
        while len(self._keys) > MAX_SESSIONS_PER_CONNECTION:
            _, (dropped, _) = self._keys.popitem(last=False)
            dropped.forget()

    def forget_all(self) -> None:
        """Zero every key (the connection closed)."""
        while self._keys:
            _, (e2e, _) = self._keys.popitem()
            e2e.forget()

    def signers(self, session_id: str) -> tuple[str, ...]:
        entry = self._keys.get(session_id)
        return entry[1] if entry is not None else ()

    def sealer(self, session_id: str) -> ServerSealer:
        return ServerSealer(self._key(session_id), session_id)

    def _session_of(self, session_id: str | None) -> str:
        if session_id is None:
            raise E2EError("encrypted_message needs a session_id", code=ErrorCode.MISSING_SESSION_ID)
        return session_id

    def _key(self, session_id: str) -> ServerE2ESession:
        entry = self._keys.get(session_id)
        if entry is None or not entry[0].active:
            raise E2EError(f"no session key for session {session_id[:64]!r} on this connection; "
                           "send encrypted_session_init first", code=E2EErrorCode.SESSION_KEY_NOT_FOUND)
        return entry[0]

    def _inner_text(self, session_id: str, payload: object) -> str:
        plaintext = self._key(session_id).decrypt_message_bytes(payload)
        return decode_inner_payload(plaintext, allow_compressed=self._allow_compressed,
                                    max_bytes=self._max_inner_bytes)

    def open_prompt(self, message: EncryptedMessage, bound_session: str | None) -> PromptMessage:
        """The prompt sealed in ``message`` (under its session's key, else the bound session's).

        Raises:
            E2EError, RemoteProtocolError: MISSING_SESSION_ID, SESSION_KEY_NOT_FOUND, the payload and AAD
                codes of :meth:`ServerE2ESession.decrypt_message_bytes`, the inner codes of
                :func:`decode_inner_payload` and :func:`parse_encrypted_request`.
        """
        session_id = self._session_of(message.session_id or bound_session)
        prompt = parse_encrypted_request(self._inner_text(session_id, message.payload), message)
        if prompt.session_id is None:
            prompt = PromptMessage(request=prompt.request, session_id=session_id,
                                   message_index=prompt.message_index, request_id=prompt.request_id)
        return prompt

    def open_resume(self, message: EncryptedSessionResume, bound_session: str | None) -> SessionResume:
        """The ``session_resume`` sealed in ``message``; raises as :meth:`open_prompt`."""
        session_id = self._session_of(message.session_id or bound_session)
        return parse_encrypted_resume(self._inner_text(session_id, message.payload), message)


class ClientE2ECodec:
    """The client's session keys; see the module docstring."""

    def __init__(self) -> None:
        self.current: ClientE2ESession | None = None
        self._pending: ClientE2ESession | None = None
        self.fresh = False
        """The current key has sealed nothing yet."""
        self.finish_reason: str | None = None
        self.final_seen = False

    def offer(self, host_public_key: str | bytes, client_key: bytes, init: SessionInitPayload) -> dict[str, object]:
        """The sealed init payload for ``init`` (its ``session_key`` becomes current once acknowledged)."""
        payload = build_encrypted_session_init(host_public_key, init, client_key)
        self.drop_offer()
        self._pending = ClientE2ESession(init.session_key)
        return payload

    def drop_offer(self) -> None:
        if self._pending is not None:
            self._pending.forget()
            self._pending = None

    def accept_offer(self) -> None:
        """The node acknowledged the init: its key replaces the current one."""
        if self._pending is None:
            return
        if self.current is not None:
            self.current.forget()
        self.current, self._pending, self.fresh = self._pending, None, True

    def _require(self) -> ClientE2ESession:
        if self.current is None or not self.current.active:
            raise E2EError("no encrypted session key", code=E2EErrorCode.SESSION_KEY_NOT_FOUND)
        return self.current

    def seal_prompt(self, request: InferenceRequest, message_index: int | None, features: frozenset[str]) -> object:
        body = encrypted_request_body(request, message_index=message_index)
        payload = self._require().encrypt_message(encode_inner_payload(body, compress=_compress(features)))
        self.fresh, self.finish_reason, self.final_seen = False, None, False
        return payload

    def seal_resume(self, history: Sequence[ChatTurn], last_index: int, features: frozenset[str]) -> object:
        e2e = self._require()
        body = encode_inner_payload(encrypted_resume_body(tuple(history), last_index), compress=_compress(features))
        payload = e2e.encrypt_message(body)
        e2e.end_response()  # the node answers session_resumed, not a stream
        self.fresh = False
        return payload

    def open_chunk(self, message: EncryptedChunk) -> StreamChunk:
        """Raises E2EError: out of order, or it does not decrypt."""
        text = self._require().decrypt_chunk(message.payload, final=message.final)
        self.final_seen = self.final_seen or message.final
        return StreamChunk(content=text, tokens=message.tokens, request_id=message.request_id)

    def open_response(self, message: EncryptedResponse) -> None:
        """Raises E2EError: it does not decrypt, or no answer is in progress."""
        self.finish_reason = self._require().decrypt_response_final(message.payload)
        self.final_seen = True

    def end_response(self) -> None:
        if self.current is not None:
            self.current.end_response()

    def forget(self) -> None:
        for e2e in (self.current, self._pending):
            if e2e is not None:
                e2e.forget()
        self.current = self._pending = None
        self.fresh = False


def _compress(features: frozenset[str]) -> bool:
    return Feature.E2E_COMPRESSION in features
