"""The ``/v1/ws`` handler: one instance per WebSocket connection.

Theory of operation: a reader loop parses every frame with the shared
protocol core. Requests run one at a time per connection, on a task of their
own, so the reader keeps listening while a response streams: ``stream_cancel``
stops it between tokens, and any other request gets ``REQUEST_IN_PROGRESS``.

Rules on the wire (PROTOCOL.md part A, plus our extensions):
- ``connected`` is sent on open (with our ``version`` and ``features``).
- A response is per-token ``stream_chunk``, an empty sentinel chunk, then
  ``stream_end`` (``reason`` complete or cancelled, ``usage``, ``message_index``).
- An error that ends a request is ``error`` then ``stream_end{reason:"error"}``,
  both carrying the request's ``id``. A bad frame received while another
  request streams gets only the ``error`` (plus a ``stream_end`` when the frame
  had its own ``id``), so the running stream is not mistaken for ended.
- Encrypted sessions (``encrypted_session_init``, ``encrypted_message``) are
  opened by :mod:`fabstir.node.ws_e2e` and then served on the same path as
  plaintext prompts; only the output (an ``Output``) differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
import time
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from fabstir.errors import ChainError, EngineError, FabstirError, ProtocolError, TokenLimitExceededError
from fabstir.node.auth import Grants
from fabstir.node.engines.base import Finished, TokenPiece
from fabstir.node.host_chain import JobRefusedError
from fabstir.node.inference import PreparedPrompt
from fabstir.node.runtime import NodeRuntime
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

    def chunk(self, text: str, tokens: int, request_id: str | None) -> ServerMessage:
        """The message carrying one piece of text."""

    def complete(self, finish_reason: str, request_id: str | None) -> list[ServerMessage]:
        """What follows the last piece of a complete (not cancelled) answer, before ``stream_end``."""


class PlainOutput:
    """``stream_chunk`` per piece, then the empty sentinel chunk."""

    __slots__ = ()

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
        self._tokens_sent = 0
        self._tokens_billed = 0
        self._jobs: set[int] = set()
        self._job_prices: dict[int, int] = {}
        self._grants = Grants()
        self.extensions = runtime.config.extensions
        self.client_address = websocket.client.host if websocket.client else "unknown"
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
        if self.streaming:
            await self._while_streaming(message)
        else:
            await self.dispatch(message)

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
                await self.on_session_resume(message)
            else:
                await self.reject(ErrorCode.UNKNOWN_MESSAGE_TYPE, "unknown message type 'session_resume'",
                                  message.request_id)
        elif isinstance(message, (AuthChallengeRequest, AuthRequest, TokenRefresh, HistoryRequest, SessionClear)):
            await self.on_auth_message(message)
        elif isinstance(message, PromptMessage):
            self._start(message, _PLAIN)
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

    def _start(self, message: PromptMessage, output: Output) -> None:
        self._cancel = threading.Event()
        self._active = asyncio.create_task(self.serve_prompt(message, output))

    async def reject(self, code: str, text: str, request_id: str | None, *, ends_request: bool = True,
                     details: dict[str, object] | None = None) -> None:
        session_id = self.session.session_id if self.session else None
        await self.send(ErrorMessage(message=text, code=code, request_id=request_id, session_id=session_id,
                                     details=tuple((details or {}).items())))
        if ends_request:
            await self.send(StreamEnd(reason="error", tokens_used=0, session_id=session_id, request_id=request_id))

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
                self._grants.add(claims)
                await self.send(success)
            elif isinstance(message, TokenRefresh):
                success, claims = auth.refresh(message)
                self._grants.add(claims)
                await self.send(success)
            else:
                await self._session_operation(message)
        except AuthError as exc:
            await self.reject(exc.code, exc.message, message.request_id)
        except ChainError as exc:
            await self.reject(exc.code, exc.message, message.request_id)

    async def _session_operation(self, message: HistoryRequest | SessionClear) -> None:
        session = self.runtime.sessions.get(message.session_id)
        if isinstance(message, SessionClear):
            self._grants.require(session.job_id if session else None, "admin")
        elif self.runtime.config.require_auth:
            self._grants.require(session.job_id if session else None, "read_history")
        if session is None:
            await self.reject(ErrorCode.SESSION_NOT_FOUND, f"no session {message.session_id!r} on this node",
                              message.request_id)
            return
        if isinstance(message, SessionClear):
            session.replace_history([], 0)
        await self.send(History(session_id=session.session_id, conversation_context=tuple(session.history),
                                message_index=session.next_index, request_id=message.request_id))

    async def _admit_job(self, job_id: int | None, session_id: str | None) -> int | None:
        """On a paid node, check the job on chain (once per connection) and start billing it.

        Returns the job id, or ``None`` on a node without a chain.

        Raises:
            JobRefusedError: no job given, or the chain says this node may not serve it.
        """
        billing = self.runtime.billing
        if billing is None:
            return job_id
        if job_id is None and session_id is not None and session_id.removesuffix("n").isdecimal():
            job_id = int(session_id.removesuffix("n"))
        if job_id is None:
            raise JobRefusedError("this node serves paid sessions only: send the on-chain job id",
                                  code="JOB_REQUIRED")
        if self.runtime.config.require_auth:
            self._grants.require(job_id, "prompt")
        if job_id not in self._jobs:
            job = await billing.host.verify_job(job_id)
            self._job_prices[job_id] = job.price_per_token
            billing.open_job(job_id, job.max_tokens, job.proof_interval)
            self._jobs.add(job_id)
        return job_id

    async def on_session_init(self, message: SessionInit) -> None:
        try:
            job_id = await self._admit_job(message.job_id, message.session_id)
        except (JobRefusedError, AuthError) as exc:
            await self.reject(exc.code, exc.message, message.request_id)
            return
        self.session = self.runtime.sessions.open(message.session_id, job_id, message.chain_id)
        await self.send(
            SessionInitAck(
                session_id=message.session_id,
                job_id=message.job_id,
                chain_id=message.chain_id,
                features=self.runtime.features if self.extensions else None,
                message_index=self.session.next_index if self.extensions else None,
                request_id=message.request_id,
            )
        )

    async def on_session_resume(self, message: SessionResume) -> None:
        try:
            job_id = await self._admit_job(message.job_id, message.session_id)
        except (JobRefusedError, AuthError) as exc:
            await self.reject(exc.code, exc.message, message.request_id)
            return
        session = self.runtime.sessions.open(message.session_id, job_id, message.chain_id)
        self.session = session
        session.replace_history(list(message.conversation_context), message.last_message_index + 1)
        kept = self._count_fitting(session)
        await self.send(
            SessionResumed(
                session_id=session.session_id,
                message_index=session.next_index,
                kept_messages=kept,
                dropped_messages=len(session.history) - kept,
                request_id=message.request_id,
            )
        )

    def _count_fitting(self, session: SessionContext) -> int:
        """How many stored messages the next prompt will see, after truncation to the window."""
        try:
            prepared = self.runtime.inference.prepare(InferenceRequest(prompt=" ", max_tokens=1), session.history)
        except TokenLimitExceededError:
            return 0
        return prepared.fitted.kept_messages

    def _session_for(self, message: PromptMessage) -> SessionContext:
        session_id = message.session_id or (self.session.session_id if self.session else None)
        if session_id is None and message.job_id is not None:
            session_id = str(message.job_id)
        if session_id is None:
            session_id = f"connection-{self.connection_id}"
        if self.session is None or self.session.session_id != session_id:
            self.session = self.runtime.sessions.open(session_id, message.job_id, message.chain_id)
        return self.session

    async def serve_prompt(self, message: PromptMessage, output: Output = _PLAIN) -> None:
        rid = message.request_id
        session = self._session_for(message)
        assert self.runtime.limiter is not None
        wait = self.runtime.limiter.check(self.client_address, session.session_id)
        if wait > 0:
            await self.reject("RATE_LIMITED", f"too many requests; retry after {wait:.2f} s", rid,
                              details={"retry_after": round(wait, 3)})
            return
        try:
            job_id = await self._admit_job(message.job_id or session.job_id, session.session_id)
        except (JobRefusedError, AuthError) as exc:
            await self.reject(exc.code, exc.message, rid)
            return
        request = message.request
        if job_id is not None and self.runtime.billing is not None:
            session.job_id = job_id
            remaining = self.runtime.billing.remaining_tokens(job_id)
            if remaining <= 0:
                await self.reject("DEPOSIT_EXHAUSTED", f"job {job_id}'s deposit is used up; open a new session",
                                  rid)
                return
            request = dataclasses.replace(request, max_tokens=min(request.max_tokens, remaining))
        index = session.next_index
        if self.extensions and message.message_index is not None and message.message_index != index:
            await self.reject(
                ErrorCode.INVALID_MESSAGE_INDEX,
                f"expected message_index {index}, got {message.message_index}",
                rid,
                details={"expected_message_index": index},
            )
            return
        try:
            prepared = self.runtime.inference.prepare(request, session.history)
        except TokenLimitExceededError as exc:
            await self.reject(exc.code, exc.message, rid, details=exc.details)
            return
        try:
            text, finished = await self._stream_tokens(prepared, rid, output, job_id)
            cancelled = finished.finish_reason == "cancelled"
            closing = [] if cancelled else output.complete(finished.finish_reason, rid)
        except E2EError as exc:
            log.warning("encryption failed on session %s: %s", session.session_id, exc)
            await self.reject(E2EErrorCode.ENCRYPTION_FAILED, exc.message, rid)
            return
        except EngineError as exc:
            log.warning("generation failed on session %s: %s", session.session_id, exc)
            await self.reject(ErrorCode.ENGINE_ERROR, str(exc.message), rid)
            return
        except FabstirError as exc:  # pragma: no cover - defensive: never leave a request open
            await self.reject(ErrorCode.INTERNAL_ERROR, exc.message, rid)
            return
        if request.conversation_context is not None:
            session.history = list(request.conversation_context)
        session.record_turn(request.prompt, text)
        if job_id is not None and self.runtime.billing is not None:
            # the rest of the answer (tokens reported mid-stream already count); stop tokens included
            self.runtime.billing.add_tokens(job_id, max(0, finished.completion_tokens - self._tokens_billed))
        for closing_message in closing:
            await self.send(closing_message)
        usage = Usage(prepared.fitted.prompt_tokens, finished.completion_tokens, self.runtime.inference.context_window)
        await self.send(
            StreamEnd(
                reason="cancelled" if cancelled else "complete",
                tokens_used=self._tokens_sent,
                finish_reason=finished.finish_reason,
                usage=usage,
                session_id=session.session_id,
                message_index=index if self.extensions else None,
                request_id=rid,
                receipt=self._receipt(session, index, text, job_id) if self.extensions else None,
            )
        )

    def _receipt(self, session: SessionContext, index: int, text: str, job_id: int | None) -> dict[str, object]:
        """The signed receipt for the answer just streamed."""
        billing = self.runtime.billing
        receipt = Receipt(
            host=billing.host.address if billing is not None else "",
            model=self.runtime.inference.model_id,
            session_id=session.session_id,
            message_index=index,
            tokens=self._tokens_sent,
            price_per_token=self._job_prices.get(job_id) if job_id is not None else None,
            text_sha256=text_digest(text),
            key="",
        )
        return sign_receipt(receipt, self.runtime.signing_key).to_wire()

    async def _stream_tokens(self, prepared: PreparedPrompt, rid: str | None, output: Output = _PLAIN,
                             job_id: int | None = None) -> tuple[str, Finished]:
        """Stream the answer; on a paid job, report every ``checkpoint_tokens`` to billing as they are served,
        so long answers are checkpointed while they stream (the chain work happens off this path)."""
        parts: list[str] = []
        self._tokens_sent = self._tokens_billed = 0
        billing = self.runtime.billing if job_id is not None else None
        step = billing.checkpoint_tokens if billing is not None else 0
        finished = Finished("cancelled", 0)
        async with self.runtime.inference.open_stream(prepared, self._cancel) as events:
            async for event in events:
                if isinstance(event, TokenPiece):
                    parts.append(event.text)
                    self._tokens_sent += event.tokens
                    await self.send(output.chunk(event.text, event.tokens, rid))
                    if billing is not None and job_id is not None and self._tokens_sent - self._tokens_billed >= step:
                        billing.add_tokens(job_id, self._tokens_sent - self._tokens_billed, end_of_response=False)
                        self._tokens_billed = self._tokens_sent
                else:
                    finished = event
        return "".join(parts), finished

    async def _stop_active(self) -> None:
        task = self._active
        if task is None or task.done():
            return
        self._cancel.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
