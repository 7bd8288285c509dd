"""The ``/v1/ws`` handler: a read-feed-write loop around the sans-I/O :class:`ServerConnection`.

Theory of operation. Every frame the socket receives is fed to the connection
(:mod:`fabstir.protocol.server_connection` states the wire rules: one request at a time,
the ``error`` + ``stream_end`` pairing, ``message_index``, encryption, ignored pings); the
frames it queues are written at once, then each event it produced is acted on here:

- session init (plain or encrypted), resume, auth and history requests go through
  :mod:`fabstir.node.admission` (the job and the depositor on a paid node; the owner of a
  session's data everywhere) and are answered through the connection;
- a prompt runs on a task of its own, so the reader keeps listening while it streams
  (``stream_cancel`` stops it between tokens): it is admitted, rate-limited and generated
  by :func:`fabstir.node.serving.generate` (deposit, fitting, fairness, billing), each
  piece handed to the connection, which seals it for an encrypted session, and it ends with
  a signed receipt in ``stream_end``.

Any failure while acting on an event is answered with its code; nothing is left unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time

from starlette.websockets import WebSocket, WebSocketDisconnect

from fabstir.chain.usage import UsageAck
from fabstir.errors import ChainError, NodeError
from fabstir.node.admission import AdmittedJob, Caller, job_id_from_session
from fabstir.node.runtime import NodeRuntime
from fabstir.node.serving import as_coded_error, check_rate, generate, open_billing, receipt_for
from fabstir.node.sessions import SessionContext
from fabstir.protocol import (
    AuthChallengeRequest,
    AuthRequest,
    CancelReceived,
    Connected,
    EncryptedInitReceived,
    ErrorCode,
    History,
    HistoryRequest,
    InferenceRequest,
    PromptMessage,
    PromptReceived,
    ResumeReceived,
    ServerConnection,
    ServerEvent,
    SessionClear,
    SessionInit,
    TokenRefresh,
    Usage,
    UsageAcknowledgement,
)
from fabstir.protocol.auth import AuthError
from fabstir.protocol.e2e import E2EError, E2EErrorCode

__all__ = ["WebSocketConnection"]

log = logging.getLogger("fabstir.node.ws")
_connection_ids = itertools.count(1)

_REFUSALS = (NodeError, AuthError, ChainError)
"""What admission and the chain refuse with (answered with their codes)."""


class WebSocketConnection:
    """Serves one client connection until it closes."""

    def __init__(self, websocket: WebSocket, runtime: NodeRuntime) -> None:
        self.ws = websocket
        self.runtime = runtime
        config = runtime.config
        self.extensions = config.extensions
        self.connection_id = next(_connection_ids)
        self.client_address = websocket.client.host if websocket.client else "unknown"
        self.caller = Caller(client=self.client_address)
        """What this connection proved (session tokens); encrypted sessions add their signer per request."""
        self.session: SessionContext | None = None
        self.conn = ServerConnection(
            greeting=self._greeting(), extensions=self.extensions,
            host_key=runtime.e2e_key if config.encryption else None, init_replays=runtime.init_replays,
            max_frame_bytes=config.max_frame_bytes, verify_signatures=True,
            require_signed=config.require_signed_messages, replay_cache=runtime.replay_cache)
        self._write_lock = asyncio.Lock()
        self._active: asyncio.Task[None] | None = None
        self._cancel = threading.Event()
        self._closed = False
        self._jobs: set[int] = set()
        self._depositors: dict[int, str] = {}
        """Depositor of each job admitted on this connection (who must countersign its usage)."""

    def _greeting(self) -> Connected:
        runtime = self.runtime
        if not self.extensions:
            return Connected()
        return Connected(version=runtime.version, features=self._features(), signing_key=runtime.signing_public_key,
                         public_key=runtime.e2e_public_key if runtime.config.encryption else None)

    # --- I/O -------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        await self.flush()
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
            self.conn.close()
            await self._stop_active()
            if self.runtime.billing is not None:
                for job_id in self._jobs:
                    self.runtime.billing.connection_closed(job_id)

    async def on_frame(self, data: str | bytes) -> None:
        """Feed one received frame, write what it produced, act on its events."""
        self.conn.receive_frame(data, now_ms=int(time.time() * 1000))
        await self.flush()
        for event in self.conn.events_received():
            try:
                await self.on_event(event)
            except Exception as exc:  # never leave a request unanswered
                self._refuse(exc, getattr(event, "request_id", None), type(event).__name__)
            await self.flush()

    async def flush(self) -> None:
        """Write every frame the connection queued, in order."""
        async with self._write_lock:
            for text in self.conn.frames_to_send():
                await self.write(text)

    async def write(self, text: str) -> None:
        if self._closed:
            return
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True
            self._cancel.set()

    def _refuse(self, exc: BaseException, request_id: str | None, where: str) -> None:
        """Answer a failed request with its code (``error`` + ``stream_end``)."""
        error = as_coded_error(exc, where)
        details = dict(error.details) if isinstance(error, NodeError) else None
        if self.conn.streaming:
            request_id = None  # the request in progress is the one that failed
        self.conn.send_error(error.code, error.message, request_id, details=details)

    # --- events ------------------------------------------------------------------------------

    async def on_event(self, event: ServerEvent) -> None:
        if isinstance(event, PromptReceived):
            self._cancel = threading.Event()
            self._active = asyncio.create_task(self.serve_prompt(event))
        elif isinstance(event, CancelReceived):
            self._cancel.set()
        elif isinstance(event, SessionInit):
            await self.on_session_init(event)
        elif isinstance(event, EncryptedInitReceived):
            await self.on_encrypted_init(event)
        elif isinstance(event, ResumeReceived):
            await self.on_resume(event)
        elif isinstance(event, (HistoryRequest, SessionClear)):
            await self.on_session_operation(event)
        elif isinstance(event, UsageAcknowledgement):
            self.on_usage_ack(event)
        else:
            await self.on_auth(event)

    async def on_auth(self, message: AuthChallengeRequest | AuthRequest | TokenRefresh) -> None:
        """JWT session auth: a challenge, a signed challenge (or token) for a token, a refresh."""
        auth = self.runtime.authenticator
        try:
            if isinstance(message, AuthChallengeRequest):
                self.conn.answer(auth.challenge(message))
                return
            if isinstance(message, AuthRequest):
                success, claims = await auth.authenticate(message, message.session_id or str(message.job_id))
            else:
                success, claims = auth.refresh(message)
        except _REFUSALS as exc:
            self._refuse(exc, message.request_id, type(message).__name__)
            return
        self.caller.grants.add(claims)
        self.conn.answer(success)

    def on_usage_ack(self, message: UsageAcknowledgement) -> None:
        """The depositor's countersignature of its usage: kept by billing if it matches (nothing is answered)."""
        depositor = self._depositors.get(message.job_id)
        if self.runtime.billing is None or depositor is None:
            return
        ack = UsageAck(message.job_id, message.tokens, bytes.fromhex(message.transcript_hash[2:]),
                       bytes.fromhex(message.signature[2:]))
        if not self.runtime.billing.acknowledge(ack, depositor):
            log.info("connection %d: usage_ack for job %d (%d tokens) not kept", self.connection_id,
                     message.job_id, message.tokens)

    async def on_session_operation(self, message: HistoryRequest | SessionClear) -> None:
        """``get_history`` (the session's owner, ``read_history`` on a paid node) or ``session_clear`` (admin)."""
        admission = self.runtime.admission
        job_id = self.session.job_id if self.session and self.session.session_id == message.session_id else None
        try:
            if isinstance(message, SessionClear):
                admitted = await admission.admit(self.caller, job_id, message.session_id, permission="admin")
                if admitted is None:  # a free node has no admin
                    self.caller.grants.require(job_id, "admin")
            else:
                admitted = await admission.admit(self.caller, job_id, message.session_id, permission="read_history")
        except _REFUSALS as exc:
            self._refuse(exc, message.request_id, type(message).__name__)
            return
        secret = message.session_secret if isinstance(message, HistoryRequest) else None
        session = self.runtime.sessions.get(self._owner(admitted, secret, self.caller), message.session_id)
        if session is None:
            self.conn.send_error(ErrorCode.SESSION_NOT_FOUND, f"no session {message.session_id!r} of yours on this "
                                 "node", message.request_id)
            return
        if isinstance(message, SessionClear):
            session.replace_history([], 0)
        self.conn.answer(History(session_id=session.session_id, conversation_context=tuple(session.history),
                                 message_index=session.next_index, request_id=message.request_id))

    async def on_session_init(self, message: SessionInit) -> None:
        try:
            admitted = await self.admit(self.caller, message.job_id, message.session_id)
        except _REFUSALS as exc:
            self._refuse(exc, message.request_id, "session_init")
            return
        session = self.bind(message.session_id, admitted, self.caller, job_id=message.job_id,
                            chain_id=message.chain_id, secret=message.session_secret)
        self.conn.accept_session(message, features=self._features(), message_index=self._index(session),
                                 session_secret=self._secret_for(session.owner))

    async def on_encrypted_init(self, event: EncryptedInitReceived) -> None:
        """Admit the init's signer for the sealed job (paid node), install the key, ack."""
        caller = self.caller.with_proof(event.opened.signer_candidates)
        sealed_job = job_id_from_session(event.opened.init.job_id)
        try:
            admitted = await self.admit(caller, sealed_job, event.session_id)
        except _REFUSALS as exc:
            self._refuse(exc, event.message.request_id, "encrypted_session_init")
            return
        job_id = admitted.job_id if admitted is not None else sealed_job
        session = self.bind(event.session_id, admitted, caller, job_id=job_id, chain_id=event.message.chain_id)
        self.conn.accept_session(event, job_id=job_id, features=self._features(), message_index=self._index(session))

    async def on_resume(self, event: ResumeReceived) -> None:
        resume = event.resume
        caller = self.caller.with_proof(event.signers) if event.encrypted else self.caller
        try:
            admitted = await self.admit(caller, resume.job_id, resume.session_id)
        except _REFUSALS as exc:
            self._refuse(exc, resume.request_id, "session_resume")
            return
        session = self.bind(resume.session_id, admitted, caller, job_id=resume.job_id, chain_id=resume.chain_id,
                            secret=resume.session_secret)
        session.replace_history(list(resume.conversation_context), resume.last_message_index + 1)
        kept = self._count_fitting(session)
        self.conn.accept_resume(event, message_index=session.next_index, kept_messages=kept,
                                dropped_messages=len(session.history) - kept,
                                session_secret=self._secret_for(session.owner))

    # --- sessions and admission -------------------------------------------------------------------

    def _features(self) -> tuple[str, ...] | None:
        return self.runtime.features if self.extensions else None

    def _index(self, session: SessionContext) -> int | None:
        return session.next_index if self.extensions else None

    def _owner(self, admitted: AdmittedJob | None, secret: str | None, caller: Caller) -> str:
        """Owner key of the session a request names (a well-formed ``session_secret`` counts on free nodes)."""
        if admitted is None and secret is not None and 16 <= len(secret) <= 128 and secret.isalnum():
            return "secret:" + secret
        return self.runtime.admission.owner_for(caller, admitted)

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
            self._depositors[admitted.job_id] = admitted.depositor
        return admitted

    def bind(self, session_id: str, admitted: AdmittedJob | None, caller: Caller, *, job_id: int | None = None,
             chain_id: int | None = None, secret: str | None = None) -> SessionContext:
        """Make ``session_id`` (of the caller's owner) this connection's session."""
        owner = self._owner(admitted, secret, caller)
        job = admitted.job_id if admitted is not None else job_id
        self.session = self.runtime.sessions.open(owner, session_id, job, chain_id)
        self.conn.bind_session(session_id)
        return self.session

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

    # --- prompts ---------------------------------------------------------------------------------

    async def serve_prompt(self, event: PromptReceived) -> None:
        """Admit, limit and generate one answer; every outcome ends the request on the wire."""
        try:
            await self._serve(event)
        except E2EError as exc:
            log.warning("encryption failed on connection %d: %s", self.connection_id, exc)
            self.conn.send_error(E2EErrorCode.ENCRYPTION_FAILED, exc.message)
        except Exception as exc:
            if isinstance(exc, _REFUSALS):
                log.info("prompt on connection %d refused: %s", self.connection_id, exc)
            self._refuse(exc, None, "a prompt")
        await self.flush()

    async def _serve(self, event: PromptReceived) -> None:
        message = event.prompt
        caller = self.caller.with_proof(event.signers) if event.encrypted else self.caller
        session_id = self._session_id_for(message)
        check_rate(self.runtime, self.client_address, session_id)
        current = self.session if self.session is not None and self.session.session_id == session_id else None
        admitted = await self.admit(caller, message.job_id or (current.job_id if current else None), session_id)
        # the session this connection bound (init or resume) is its own; another id opens the caller's
        if current is None or (admitted is not None and current.owner != admitted.owner):
            current = self.bind(session_id, admitted, caller, job_id=message.job_id, chain_id=message.chain_id)
        session = current
        index = session.next_index

        async def send_piece(text: str, tokens: int) -> None:
            self.conn.send_chunk(text, tokens)
            await self.flush()

        answer = await generate(self.runtime, admitted, message.request, session.history,
                                client=self.client_address, cancel=self._cancel, on_piece=send_piece,
                                check=lambda: self.conn.check_message_index(index),
                                coalesce=self.extensions and not event.encrypted)
        request = message.request
        if request.conversation_context is not None:
            session.history = list(request.conversation_context)
        session.record_turn(request.prompt, (request.continue_from or "") + answer.text)
        finished = answer.finished
        if admitted is not None and self.runtime.billing is not None:  # what the client's countersignature covers
            self.runtime.billing.record_answer(admitted.job_id, answer.text, answer.tokens_sent)
        self.conn.send_end(finished.finish_reason, tokens_used=answer.tokens_sent,
                           usage=Usage(answer.prepared.fitted.prompt_tokens, finished.completion_tokens,
                                       self.runtime.inference.context_window),
                           message_index=index if self.extensions else None,
                           receipt=receipt_for(self.runtime, session.session_id, index, answer, admitted)
                           if self.extensions else None,
                           session_id=session.session_id)

    async def _stop_active(self) -> None:
        task = self._active
        if task is None or task.done():
            return
        self._cancel.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
