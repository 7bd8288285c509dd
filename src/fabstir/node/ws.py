"""The ``/v1/ws`` handler: one instance per WebSocket connection.

Theory of operation: a reader loop parses every frame with the shared
protocol core. Requests run one at a time per connection, on a task of their
own, so the reader keeps listening while a response streams: ``stream_cancel``
stops it between tokens, and any other request gets ``REQUEST_IN_PROGRESS``.

Rules on the wire (PROTOCOL.md part A, plus our extensions):
- ``connected`` is sent on open (with our ``version`` and ``features``).
- A response is ``stream_chunk`` per piece (one token, or all the tokens the engine produced
  while the previous chunk went out, with ``tokens`` their count), an empty sentinel chunk, then
  ``stream_end`` (``reason`` complete or cancelled, ``usage``, ``message_index``).
- An error that ends a request is ``error`` then ``stream_end{reason:"error"}``,
  both carrying the request's ``id``. A bad frame received while another
  request streams gets only the ``error`` (plus a ``stream_end`` when the frame
  had its own ``id``), so the running stream is not mistaken for ended.
- Encrypted sessions (``encrypted_session_init``, ``encrypted_message``) are
  opened by :mod:`fabstir.node.ws_e2e` and then served on the same path as
  plaintext prompts; only the output (an ``Output``) and what the caller proved differ.
- Every request that touches a job or a session's data goes through
  :mod:`fabstir.node.admission` first, and every answer through
  :func:`fabstir.node.serving.generate` (deposit, fitting, fairness, billing).
- A JSON ``ping`` (the public TypeScript SDK's keep-alive) is ignored, also mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from fabstir.errors import ChainError, FabstirError, NodeError, ProtocolError
from fabstir.node.admission import AdmittedJob, Caller
from fabstir.node.runtime import NodeRuntime
from fabstir.node.serving import Answer, as_coded_error, generate, open_billing
from fabstir.node.sessions import SessionContext
from fabstir.node.ws_e2e import EncryptedSessions
from fabstir.protocol import (
    AuthChallengeRequest,
    AuthRequest,
    ClientMessage,
    Connected,
    EncryptedMessage,
    EncryptedSessionInit,
    EncryptedSessionResume,
    ErrorCode,
    ErrorMessage,
    History,
    HistoryRequest,
    InferenceRequest,
    Ping,
    PromptMessage,
    ServerMessage,
    SessionClear,
    SessionInit,
    SessionInitAck,
    SessionResume,
    SessionResumed,
    StreamCancel,
    StreamChunk,
    StreamEnd,
    TokenRefresh,
    Usage,
    encode_message,
    parse_client_message,
)
from fabstir.protocol.auth import AuthError
from fabstir.protocol.e2e import E2EError, E2EErrorCode
from fabstir.protocol.signing import Receipt, SignatureError, sign_receipt, text_digest, verify_message

__all__ = ["Output", "PlainOutput", "WebSocketConnection"]

log = logging.getLogger("fabstir.node.ws")
_connection_ids = itertools.count(1)


class Output(Protocol):
    """How one answer's text goes on the wire (plaintext or sealed)."""

    @property
    def coalesce(self) -> bool:
        """Whether one chunk may carry several pieces (``tokens`` > 1) when the engine is ahead of the socket."""

    def chunk(self, text: str, tokens: int, request_id: str | None) -> ServerMessage:
        """The message carrying one piece of text."""

    def complete(self, finish_reason: str, request_id: str | None) -> list[ServerMessage]:
        """What follows the last piece of a complete (not cancelled) answer, before ``stream_end``."""


class PlainOutput:
    """``stream_chunk`` per piece, then the empty sentinel chunk.

    Pieces the engine produced while the previous chunk was going out travel as one chunk
    (``tokens`` = their count); see :meth:`fabstir.node.engines.pool.EnginePool.stream`.
    """

    __slots__ = ()
    coalesce = True

    def chunk(self, text: str, tokens: int, request_id: str | None) -> ServerMessage:
        return StreamChunk(content=text, tokens=tokens, request_id=request_id)

    def complete(self, finish_reason: str, request_id: str | None) -> list[ServerMessage]:
        return [StreamChunk(content="", tokens=0, request_id=request_id)]


_PLAIN = PlainOutput()


class WebSocketConnection:
    """Serves one client connection until it closes."""

    def __init__(self, websocket: WebSocket, runtime: NodeRuntime) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.session: SessionContext | None = None
        self.connection_id = next(_connection_ids)
        self._send_lock = asyncio.Lock()
        self._active: asyncio.Task[None] | None = None
        self._cancel = threading.Event()
        self._closed = False
        self._jobs: set[int] = set()
        self.extensions = runtime.config.extensions
        self.client_address = websocket.client.host if websocket.client else "unknown"
        self.caller = Caller(client=self.client_address)
        """What this connection proved (session tokens); encrypted sessions add their signer per request."""
        self.e2e = EncryptedSessions(self)

    async def run(self) -> None:
        await self.ws.accept()
        if self.extensions:
            await self.send(Connected(version=self.runtime.version, features=self.runtime.features,
                                      signing_key=self.runtime.signing_public_key,
                                      public_key=self.runtime.e2e_public_key if self.runtime.config.encryption
                                      else None))
        else:
            await self.send(Connected())
        try:
            while True:
                frame = await self.ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                data = frame["text"] if frame.get("text") is not None else frame.get("bytes", b"")
                await self.on_frame(data)
        except WebSocketDisconnect:
            pass
        finally:
            self._closed = True
            await self._stop_active()
            self.e2e.forget_all()
            if self.runtime.billing is not None:
                for job_id in self._jobs:
                    self.runtime.billing.connection_closed(job_id)

    async def send(self, message: ServerMessage) -> None:
        if self._closed:
            return
        text = encode_message(message)
        async with self._send_lock:
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._closed = True
                self._cancel.set()

    async def on_frame(self, data: str | bytes) -> None:
        try:
            message = parse_client_message(data, max_bytes=self.runtime.config.max_frame_bytes)
            self._check_signature(data, message.request_id)
        except ProtocolError as exc:
            ends_request = not self.streaming or exc.request_id is not None
            await self.reject(exc.code, exc.message, exc.request_id, ends_request=ends_request)
            return
        if isinstance(message, Ping):
            return  # the public SDK's keep-alive: ignored, as on the public node
        if self.streaming:
            await self._while_streaming(message)
            return
        try:
            await self.dispatch(message)
        except Exception as exc:  # never leave a request unanswered
            error = as_coded_error(exc, f"a {type(message).__name__}")
            await self.reject(error.code, error.message, message.request_id)

    def _check_signature(self, data: str | bytes, request_id: str | None) -> None:
        """Verify a signed message (``sig``); on a node that requires signatures, refuse unsigned ones.

        Raises:
            SignatureError: SIGNATURE_INVALID, STALE_TIMESTAMP, REPLAYED_NONCE or SIGNATURE_REQUIRED.
        """
        if isinstance(data, str) and '"sig"' in data:
            obj = json.loads(data)
            if "sig" in obj:
                try:
                    verify_message(obj, int(time.time() * 1000), self.runtime.replay_cache)
                except SignatureError as exc:
                    exc.request_id = request_id
                    raise
                return
        if self.runtime.config.require_signed_messages:
            raise SignatureError("this node accepts only signed messages (add 'sig')", code="SIGNATURE_REQUIRED",
                                 request_id=request_id)

    @property
    def streaming(self) -> bool:
        return self._active is not None and not self._active.done()

    async def _while_streaming(self, message: ClientMessage) -> None:
        if isinstance(message, StreamCancel):
            self._cancel.set()
            return
        await self.reject(
            ErrorCode.REQUEST_IN_PROGRESS,
            "a response is streaming on this connection; wait for stream_end or send stream_cancel",
            message.request_id,
            ends_request=message.request_id is not None,
        )

    async def dispatch(self, message: ClientMessage) -> None:
        if isinstance(message, SessionInit):
            await self.on_session_init(message)
        elif isinstance(message, SessionResume):
            if self.extensions:
                await self.on_session_resume(message, self.caller)
            else:
                await self.reject(ErrorCode.UNKNOWN_MESSAGE_TYPE, "unknown message type 'session_resume'",
                                  message.request_id)
        elif isinstance(message, (AuthChallengeRequest, AuthRequest, TokenRefresh, HistoryRequest, SessionClear)):
            await self.on_auth_message(message)
        elif isinstance(message, PromptMessage):
            self._start(message, _PLAIN, self.caller)
        elif isinstance(message, EncryptedSessionInit):
            await self.e2e.on_init(message)
        elif isinstance(message, EncryptedMessage):
            opened = await self.e2e.open_message(message)
            if opened is not None:
                self._start(*opened)
        elif isinstance(message, EncryptedSessionResume):
            if self.extensions:
                await self.e2e.on_resume(message)
            else:
                await self.reject(ErrorCode.UNKNOWN_MESSAGE_TYPE, "unknown message type 'session_resume'",
                                  message.request_id)
        # a stream_cancel with nothing streaming has no effect, as on the public node

    def _start(self, message: PromptMessage, output: Output, caller: Caller) -> None:
        self._cancel = threading.Event()
        self._active = asyncio.create_task(self.serve_prompt(message, output, caller))

    async def reject(self, code: str, text: str, request_id: str | None, *, ends_request: bool = True,
                     details: dict[str, object] | None = None) -> None:
        session_id = self.session.session_id if self.session else None
        await self.send(ErrorMessage(message=text, code=code, request_id=request_id, session_id=session_id,
                                     details=tuple((details or {}).items())))
        if ends_request:
            await self.send(StreamEnd(reason="error", tokens_used=0, session_id=session_id, request_id=request_id))

    async def refuse(self, exc: BaseException, request_id: str | None, where: str) -> None:
        """Answer a failed request with its code (and ``stream_end``)."""
        error = as_coded_error(exc, where)
        details = error.details if isinstance(error, NodeError) else None
        await self.reject(error.code, error.message, request_id, details=details)

    async def on_auth_message(
        self, message: AuthChallengeRequest | AuthRequest | TokenRefresh | HistoryRequest | SessionClear
    ) -> None:
        """JWT session auth and the operations it guards (reading history, clearing a session)."""
        auth = self.runtime.authenticator
        try:
            if isinstance(message, AuthChallengeRequest):
                await self.send(auth.challenge(message))
            elif isinstance(message, AuthRequest):
                session_id = message.session_id or str(message.job_id)
                success, claims = await auth.authenticate(message, session_id)
                self.caller.grants.add(claims)
                await self.send(success)
            elif isinstance(message, TokenRefresh):
                success, claims = auth.refresh(message)
                self.caller.grants.add(claims)
                await self.send(success)
            else:
                await self._session_operation(message)
        except (AuthError, ChainError, NodeError) as exc:
            await self.refuse(exc, message.request_id, type(message).__name__)

    async def _session_operation(self, message: HistoryRequest | SessionClear) -> None:
        """``get_history`` (the session's owner, ``read_history`` on a paid node) or ``session_clear`` (admin)."""
        admission = self.runtime.admission
        job_id = self.session.job_id if self.session and self.session.session_id == message.session_id else None
        if isinstance(message, SessionClear):
            admitted = await admission.admit(self.caller, job_id, message.session_id, permission="admin")
            if admitted is None:  # a free node has no admin
                self.caller.grants.require(job_id, "admin")
        else:
            admitted = await admission.admit(self.caller, job_id, message.session_id, permission="read_history")
        secret = message.session_secret if isinstance(message, HistoryRequest) else None
        session = self.runtime.sessions.get(self._owner(admitted, secret), message.session_id)
        if session is None:
            await self.reject(ErrorCode.SESSION_NOT_FOUND, f"no session {message.session_id!r} of yours on this node",
                              message.request_id)
            return
        if isinstance(message, SessionClear):
            session.replace_history([], 0)
        await self.send(History(session_id=session.session_id, conversation_context=tuple(session.history),
                                message_index=session.next_index, request_id=message.request_id))

    def _owner(self, admitted: AdmittedJob | None, secret: str | None, caller: Caller | None = None) -> str:
        """Owner key of the session a request names (a well-formed ``session_secret`` counts on free nodes)."""
        if admitted is None and secret is not None and 16 <= len(secret) <= 128 and secret.isalnum():
            return "secret:" + secret
        return self.runtime.admission.owner_for(caller or self.caller, admitted)

    def _secret_for(self, owner: str) -> str | None:
        """What the ack tells a free node's opener to present later (``None`` when nothing is needed)."""
        if self.extensions and owner.startswith("secret:"):
            return owner.removeprefix("secret:")
        return None

    async def admit(self, caller: Caller, job_id: int | None, session_id: str | None) -> AdmittedJob | None:
        """Admit ``caller`` for the job and start billing it on this connection.

        Raises:
            JobRefusedError, AuthError: see :meth:`fabstir.node.admission.Admission.admit`.
        """
        admitted = await self.runtime.admission.admit(caller, job_id, session_id)
        if admitted is not None and admitted.job_id not in self._jobs:
            open_billing(self.runtime, admitted)
            self._jobs.add(admitted.job_id)
        return admitted

    def bind(self, session_id: str, admitted: AdmittedJob | None, caller: Caller, *, job_id: int | None = None,
             chain_id: int | None = None, secret: str | None = None) -> SessionContext:
        """Make ``session_id`` (of the caller's owner) this connection's session."""
        owner = self._owner(admitted, secret, caller)
        job = admitted.job_id if admitted is not None else job_id
        self.session = self.runtime.sessions.open(owner, session_id, job, chain_id)
        return self.session

    async def on_session_init(self, message: SessionInit) -> None:
        try:
            admitted = await self.admit(self.caller, message.job_id, message.session_id)
        except (NodeError, AuthError, ChainError) as exc:
            await self.refuse(exc, message.request_id, "session_init")
            return
        session = self.bind(message.session_id, admitted, self.caller, job_id=message.job_id,
                            chain_id=message.chain_id, secret=message.session_secret)
        await self.send(
            SessionInitAck(
                session_id=message.session_id,
                job_id=message.job_id,
                chain_id=message.chain_id,
                features=self.runtime.features if self.extensions else None,
                message_index=session.next_index if self.extensions else None,
                request_id=message.request_id,
                session_secret=self._secret_for(session.owner),
            )
        )

    async def on_session_resume(self, message: SessionResume, caller: Caller) -> None:
        try:
            admitted = await self.admit(caller, message.job_id, message.session_id)
        except (NodeError, AuthError, ChainError) as exc:
            await self.refuse(exc, message.request_id, "session_resume")
            return
        session = self.bind(message.session_id, admitted, caller, job_id=message.job_id, chain_id=message.chain_id,
                            secret=message.session_secret)
        session.replace_history(list(message.conversation_context), message.last_message_index + 1)
        kept = self._count_fitting(session)
        await self.send(
            SessionResumed(
                session_id=session.session_id,
                message_index=session.next_index,
                kept_messages=kept,
                dropped_messages=len(session.history) - kept,
                request_id=message.request_id,
                session_secret=self._secret_for(session.owner),
            )
        )

    def _count_fitting(self, session: SessionContext) -> int:
        """How many stored messages the next prompt will see, after truncation to the window."""
        try:
            prepared = self.runtime.inference.prepare(InferenceRequest(prompt=" ", max_tokens=1), session.history)
        except Exception:  # does not fit, or holds text the engine cannot tokenize: the next prompt says which
            return 0
        return prepared.fitted.kept_messages

    def _session_id_for(self, message: PromptMessage) -> str:
        session_id = message.session_id or (self.session.session_id if self.session else None)
        if session_id is None and message.job_id is not None:
            session_id = str(message.job_id)
        return session_id if session_id is not None else f"connection-{self.connection_id}"

    async def serve_prompt(self, message: PromptMessage, output: Output, caller: Caller) -> None:
        rid = message.request_id
        session_id = self._session_id_for(message)
        assert self.runtime.limiter is not None
        wait = self.runtime.limiter.check(self.client_address, session_id)
        if wait > 0:
            await self.reject("RATE_LIMITED", f"too many requests; retry after {wait:.2f} s", rid,
                              details={"retry_after": round(wait, 3)})
            return
        current = self.session if self.session is not None and self.session.session_id == session_id else None
        try:
            admitted = await self.admit(caller, message.job_id or (current.job_id if current else None), session_id)
            # the session this connection bound (init or resume) is its own; another id opens the caller's
            if current is None or (admitted is not None and current.owner != admitted.owner):
                current = self.bind(session_id, admitted, caller, job_id=message.job_id, chain_id=message.chain_id)
            session = current
            index = session.next_index

            def check_index() -> None:
                if self.extensions and message.message_index is not None and message.message_index != index:
                    raise NodeError(f"expected message_index {index}, got {message.message_index}",
                                    code=ErrorCode.INVALID_MESSAGE_INDEX, details={"expected_message_index": index})

            async def send_piece(text: str, tokens: int) -> None:
                await self.send(output.chunk(text, tokens, rid))

            answer = await generate(self.runtime, admitted, message.request, session.history,
                                    client=self.client_address, cancel=self._cancel, on_piece=send_piece,
                                    check=check_index, coalesce=output.coalesce and self.extensions)
            cancelled = answer.finished.finish_reason == "cancelled"
            closing = [] if cancelled else output.complete(answer.finished.finish_reason, rid)
        except E2EError as exc:
            log.warning("encryption failed on session %s: %s", session_id, exc)
            await self.reject(E2EErrorCode.ENCRYPTION_FAILED, exc.message, rid)
            return
        except Exception as exc:
            if isinstance(exc, FabstirError):
                log.info("request on session %s refused: %s", session_id, exc)
            await self.refuse(exc, rid, f"a prompt on session {session_id}")
            return
        request = message.request
        if request.conversation_context is not None:
            session.history = list(request.conversation_context)
        session.record_turn(request.prompt, answer.text)
        for closing_message in closing:
            await self.send(closing_message)
        await self.send(self._stream_end(session, index, answer, admitted, cancelled, rid))

    def _stream_end(self, session: SessionContext, index: int, answer: Answer, admitted: AdmittedJob | None,
                    cancelled: bool, rid: str | None) -> StreamEnd:
        finished = answer.finished
        usage = Usage(answer.prepared.fitted.prompt_tokens, finished.completion_tokens,
                      self.runtime.inference.context_window)
        return StreamEnd(
            reason="cancelled" if cancelled else "complete",
            tokens_used=answer.tokens_sent,
            finish_reason=finished.finish_reason,
            usage=usage,
            session_id=session.session_id,
            message_index=index if self.extensions else None,
            request_id=rid,
            receipt=self._receipt(session, index, answer, admitted) if self.extensions else None,
        )

    def _receipt(self, session: SessionContext, index: int, answer: Answer,
                 admitted: AdmittedJob | None) -> dict[str, object]:
        """The signed receipt for the answer just streamed."""
        billing = self.runtime.billing
        receipt = Receipt(
            host=billing.host.address if billing is not None else "",
            model=self.runtime.inference.model_id,
            session_id=session.session_id,
            message_index=index,
            tokens=answer.tokens_sent,
            price_per_token=admitted.price_per_token if admitted is not None else None,
            text_sha256=text_digest(answer.text),
            key="",
        )
        return sign_receipt(receipt, self.runtime.signing_key).to_wire()

    async def _stop_active(self) -> None:
        task = self._active
        if task is None or task.done():
            return
        self._cancel.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
