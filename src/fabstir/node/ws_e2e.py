"""End-to-end encrypted sessions on ``/v1/ws`` (PROTOCOL.md §2.2, §2.5, §3.2, §5.1).

Theory of operation. Each connection owns an :class:`EncryptedSessions`: one
:class:`NodeE2ESession` (the session key and its enforced ``message_<n>`` order) per
session id, created by ``encrypted_session_init`` and replaced (the old key zeroed)
by the next init for that id. Keys never leave the connection: another socket that
names the same session gets ``SESSION_KEY_NOT_FOUND``, and every key is zeroed when
the connection closes.

Each session also remembers who signed its init (over our digest and over the public
TypeScript SDK's): a request that arrives sealed under that session's key is proven to
come from that signer, which :mod:`fabstir.node.admission` accepts as the depositor's
authentication on a paid node (the init itself is admitted the same way).

An ``encrypted_message`` is opened here (a refused one changes no state and is never
billed) and becomes an ordinary :class:`PromptMessage`: the connection serves it on
the same path as a plaintext prompt (server-side context, limits, auth, billing, rate
limits, receipts over the plaintext text), with an :class:`EncryptedOutput` that seals
each piece as ``encrypted_chunk`` (AAD ``chunk_<i>``) and ends a complete answer with
the empty ``final`` chunk and ``encrypted_response`` (AAD ``encrypted_response_final``,
plaintext = finish_reason) before the plaintext ``stream_end``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from fabstir.errors import ChainError, NodeError, ProtocolError
from fabstir.node.admission import Caller, job_id_from_session
from fabstir.protocol import (
    EncryptedChunk,
    EncryptedMessage,
    EncryptedResponse,
    EncryptedSessionInit,
    EncryptedSessionResume,
    ErrorCode,
    PromptMessage,
    ServerMessage,
    SessionInitAck,
    decode_inner_payload,
    parse_encrypted_request,
    parse_encrypted_resume,
)
from fabstir.protocol.auth import AuthError
from fabstir.protocol.e2e import E2EError, E2EErrorCode, ServerE2ESession, open_encrypted_session_init
from fabstir.protocol.e2e_session import parse_sealed_payload

if TYPE_CHECKING:
    from fabstir.node.ws import WebSocketConnection

__all__ = ["EncryptedOutput", "EncryptedSessions", "NodeE2ESession"]

log = logging.getLogger("fabstir.node.ws")

MAX_SESSIONS_PER_CONNECTION = 64
"""Encrypted sessions one connection may hold; the oldest key is zeroed beyond that."""


class NodeE2ESession(ServerE2ESession):
    """:class:`ServerE2ESession` that also hands out the raw plaintext bytes (compressed inner payloads
    start with ``0xFF``, which is not UTF-8)."""

    __slots__ = ()

    def decrypt_message_bytes(self, payload: object) -> bytes:
        """As :meth:`ServerE2ESession.decrypt_message`, without decoding the plaintext.

        Raises:
            E2EError: SESSION_KEY_NOT_FOUND, MISSING_PAYLOAD, MISSING_PAYLOAD_FIELDS, INVALID_HEX_ENCODING,
                INVALID_NONCE_SIZE, REPLAYED_MESSAGE, INVALID_MESSAGE_INDEX, DECRYPTION_FAILED.
        """
        self._cipher.ensure_active()
        sealed = parse_sealed_payload(payload)
        self._messages.check(sealed.aad)
        plaintext = self._cipher.open(sealed)
        self._messages.advance()
        self._chunk = 0
        return plaintext


class EncryptedOutput:
    """How an encrypted answer goes on the wire (the plaintext one is ``ws.PlainOutput``).

    ``chunk`` seals whatever text it is given under the next ``chunk_<i>`` and states its ``tokens``,
    so several pieces could travel in one sealed chunk; ``coalesce`` is off for now, so the encrypted
    stream keeps one chunk per piece (``tests/node/test_encrypted_ws.py`` asserts ``tokens`` 1 per chunk).
    """

    __slots__ = ("_e2e", "_session_id")
    coalesce = False

    def __init__(self, e2e: NodeE2ESession, session_id: str) -> None:
        self._e2e = e2e
        self._session_id = session_id

    def chunk(self, text: str, tokens: int, request_id: str | None) -> ServerMessage:
        """Raises E2EError: SESSION_KEY_NOT_FOUND (the key was zeroed: re-init or disconnect)."""
        return EncryptedChunk(payload=self._e2e.encrypt_chunk(text), tokens=tokens, session_id=self._session_id,
                              request_id=request_id)

    def complete(self, finish_reason: str, request_id: str | None) -> list[ServerMessage]:
        """The empty ``final`` chunk and the ``encrypted_response`` (a cancelled answer gets neither)."""
        return [
            EncryptedChunk(payload=self._e2e.encrypt_chunk(""), tokens=0, session_id=self._session_id,
                           request_id=request_id, final=True),
            EncryptedResponse(payload=self._e2e.encrypt_response_final(finish_reason), session_id=self._session_id,
                              request_id=request_id),
        ]


def job_id_of(text: str) -> int | None:
    """The sealed ``jobId`` as an integer (``"139"`` or the SDK's BigInt form ``"139n"``), else ``None``."""
    return job_id_from_session(text)


class EncryptedSessions:
    """The encrypted sessions of one connection; see the module docstring."""

    def __init__(self, connection: WebSocketConnection) -> None:
        self._conn = connection
        self._sessions: OrderedDict[str, NodeE2ESession] = OrderedDict()
        self._signers: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def forget_all(self) -> None:
        """Zero every key (the connection closed)."""
        while self._sessions:
            _, e2e = self._sessions.popitem()
            e2e.forget()
        self._signers.clear()

    def _install(self, session_id: str, e2e: NodeE2ESession, signers: tuple[str, ...]) -> None:
        old = self._sessions.pop(session_id, None)
        if old is not None:
            old.forget()
        self._sessions[session_id] = e2e
        self._signers[session_id] = signers
        while len(self._sessions) > MAX_SESSIONS_PER_CONNECTION:
            dropped, key = self._sessions.popitem(last=False)
            key.forget()
            self._signers.pop(dropped, None)

    def caller_for(self, session_id: str) -> Caller:
        """The connection's caller, proven to be the signer of ``session_id``'s init."""
        return self._conn.caller.with_proof(self._signers.get(session_id, ()))

    def _key_for(self, session_id: str | None, request_id: str | None) -> tuple[str, NodeE2ESession]:
        conn = self._conn
        session_id = session_id or (conn.session.session_id if conn.session else None)
        if session_id is None:
            raise E2EError("encrypted_message needs a session_id", code=ErrorCode.MISSING_SESSION_ID)
        e2e = self._sessions.get(session_id)
        if e2e is None or not e2e.active:
            raise E2EError(f"no session key for session {session_id[:64]!r} on this connection; "
                           "send encrypted_session_init first", code=E2EErrorCode.SESSION_KEY_NOT_FOUND)
        return session_id, e2e

    def _inner_text(self, e2e: NodeE2ESession, payload: object) -> str:
        config = self._conn.runtime.config
        plaintext = e2e.decrypt_message_bytes(payload)
        return decode_inner_payload(plaintext, allow_compressed=config.extensions,
                                    max_bytes=4 * config.max_frame_bytes)

    async def on_init(self, message: EncryptedSessionInit) -> None:
        """Open the init with the host key, admit the job (paid node), install the key, ack."""
        conn, runtime = self._conn, self._conn.runtime
        rid = message.request_id
        if not runtime.config.encryption:
            await conn.reject(ErrorCode.ENCRYPTION_NOT_SUPPORTED, "this node does not serve encrypted sessions", rid)
            return
        assert runtime.e2e_key is not None
        try:
            opened = open_encrypted_session_init(message.payload, runtime.e2e_key)
            runtime.init_replays.remember(opened)
        except E2EError as exc:
            await conn.reject(exc.code, exc.message, rid)
            return
        init = opened.init
        session_id = message.session_id or init.job_id
        if not session_id:
            await conn.reject(ErrorCode.MISSING_SESSION_ID, "encrypted_session_init needs a session_id", rid)
            return
        caller = conn.caller.with_proof(opened.signer_candidates)
        try:
            admitted = await conn.admit(caller, job_id_of(init.job_id), session_id)
        except (NodeError, AuthError, ChainError) as exc:
            await conn.refuse(exc, rid, "encrypted_session_init")
            return
        job_id = admitted.job_id if admitted is not None else job_id_of(init.job_id)
        session = conn.bind(session_id, admitted, caller, job_id=job_id, chain_id=message.chain_id)
        self._install(session_id, NodeE2ESession(init.session_key), opened.signer_candidates)
        extensions = conn.extensions
        await conn.send(
            SessionInitAck(
                session_id=session_id,
                job_id=job_id,
                chain_id=message.chain_id,
                message="Encrypted session initialized successfully",
                features=runtime.features if extensions else None,
                message_index=session.next_index if extensions else None,
                request_id=rid,
                client_address=opened.client_address,
            )
        )

    async def open_message(self, message: EncryptedMessage
                           ) -> tuple[PromptMessage, EncryptedOutput, Caller] | None:
        """Decrypt and parse one ``encrypted_message``; ``None`` after answering a coded error."""
        try:
            session_id, e2e = self._key_for(message.session_id, message.request_id)
            text = self._inner_text(e2e, message.payload)
            prompt = parse_encrypted_request(text, message)
        except ProtocolError as exc:
            await self._conn.reject(exc.code, exc.message, message.request_id)
            return None
        if prompt.session_id is None:
            prompt = PromptMessage(request=prompt.request, session_id=session_id,
                                   message_index=prompt.message_index, request_id=prompt.request_id)
        return prompt, EncryptedOutput(e2e, session_id), self.caller_for(session_id)

    async def on_resume(self, message: EncryptedSessionResume) -> None:
        """``session_resume`` whose context is sealed under the session's current key."""
        try:
            session_id, e2e = self._key_for(message.session_id, message.request_id)
            resume = parse_encrypted_resume(self._inner_text(e2e, message.payload), message)
        except ProtocolError as exc:
            await self._conn.reject(exc.code, exc.message, message.request_id)
            return
        await self._conn.on_session_resume(resume, self.caller_for(session_id))
