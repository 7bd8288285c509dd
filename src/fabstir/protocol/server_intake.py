"""The receiving half of :class:`~fabstir.protocol.server_connection.ServerConnection`: frames in.

Every client frame is read (parsed, its signature checked), then either refused here with
the protocol's codes or turned into one :data:`~fabstir.protocol.events.ServerEvent`. The
rules it applies (S2, S3, S6, S7, S8) are stated in :mod:`fabstir.protocol.server_connection`.
"""

from __future__ import annotations

from fabstir.errors import LocalProtocolError, ProtocolError
from fabstir.protocol.codes import ErrorCode
from fabstir.protocol.connection import Connection
from fabstir.protocol.e2e_codec import ServerE2ECodec, ServerSealer
from fabstir.protocol.e2e_session import InitReplayCache
from fabstir.protocol.events import CancelReceived, PromptReceived, ResumeReceived, ServerEvent
from fabstir.protocol.frames import ClientFrameReader
from fabstir.protocol.messages import (
    AuthChallengeRequest,
    AuthRequest,
    ClientMessage,
    EncryptedMessage,
    EncryptedSessionInit,
    EncryptedSessionResume,
    ErrorMessage,
    HistoryRequest,
    Ping,
    PromptMessage,
    SessionClear,
    SessionInit,
    SessionResume,
    StreamCancel,
    StreamEnd,
    TokenRefresh,
    UsageAcknowledgement,
)
from fabstir.protocol.parse import DEFAULT_MAX_FRAME_BYTES
from fabstir.protocol.signing import ReplayCache
from fabstir.protocol.state import SessionState

__all__ = ["ServerIntake"]

_CONTROL = (SessionInit, AuthChallengeRequest, AuthRequest, TokenRefresh, HistoryRequest, SessionClear,
            UsageAcknowledgement)
"""Requests handed to the node as they are (the message is the event)."""


class Answer:
    """The prompt in progress: what it was, how it is sealed, how far it got."""

    __slots__ = ("event", "sealer", "tokens", "index")

    def __init__(self, event: PromptReceived, sealer: ServerSealer | None) -> None:
        self.event, self.sealer = event, sealer
        self.tokens = 0
        self.index: int | None = None
        """The ``message_index`` the prompt was checked against (Rule S5)."""


class ServerIntake(Connection[ServerEvent]):
    """Frames in, events out (and the refusals the protocol makes by itself)."""

    def __init__(self, *, extensions: bool = True, host_key: bytes | None = None,
                 init_replays: InitReplayCache | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 verify_signatures: bool = False, require_signed: bool = False,
                 replay_cache: ReplayCache | None = None) -> None:
        super().__init__()
        self.extensions = extensions
        """Our protocol extensions are on (``message_index``, ``session_resume``, compressed inner payloads)."""
        self._reader = ClientFrameReader(max_frame_bytes=max_frame_bytes, verify_signatures=verify_signatures,
                                         require_signed=require_signed, replay_cache=replay_cache)
        self._e2e = ServerE2ECodec(host_key=host_key, init_replays=init_replays, allow_compressed=extensions,
                                   max_inner_bytes=4 * max_frame_bytes)
        self._answer: Answer | None = None
        self.session_id: str | None = None
        """The session bound to this connection (errors carry it)."""

    @property
    def request(self) -> PromptReceived | None:
        """The prompt being answered, if any."""
        return self._answer.event if self._answer is not None else None

    @property
    def cancelled(self) -> bool:
        """The client asked to stop the answer in progress."""
        return self.state is SessionState.CANCELLING

    @property
    def tokens_sent(self) -> int:
        """Tokens sent so far in the answer in progress."""
        return self._answer.tokens if self._answer is not None else 0

    def receive_frame(self, frame: str | bytes, *, now_ms: int | None = None) -> None:
        """Take one received frame; then read ``events_received()`` and ``frames_to_send()``.

        Raises:
            LocalProtocolError: ``now_ms`` missing on a connection that verifies signatures.
        """
        if self._reader.verify_signatures and now_ms is None:
            raise LocalProtocolError("pass now_ms: this connection verifies signed frames", code="NOW_REQUIRED")
        if self.closed:
            return
        try:
            message = self._reader.read(frame, now_ms)
        except ProtocolError as exc:
            self._refuse(exc.code, exc.message, exc.request_id, ends=not self.streaming or exc.request_id is not None)
            return
        if self.streaming:
            self._while_answering(message)
        else:
            self._dispatch(message)

    def _while_answering(self, message: ClientMessage) -> None:
        if isinstance(message, StreamCancel):
            if self.state is SessionState.STREAMING and self._answer is not None:
                self._state.move(SessionState.CANCELLING)
                self._emit(CancelReceived(message, self._answer.event.request_id))
        elif isinstance(message, UsageAcknowledgement):  # a countersignature may come while an answer streams
            self._emit(message)
        elif not isinstance(message, Ping):  # a ping is ignored (the public SDK's keep-alive)
            self._refuse(ErrorCode.REQUEST_IN_PROGRESS,
                         "a response is streaming on this connection; wait for stream_end or send stream_cancel",
                         message.request_id, ends=message.request_id is not None)

    def _dispatch(self, message: ClientMessage) -> None:
        if isinstance(message, _CONTROL):
            self._emit(message)
        elif isinstance(message, PromptMessage):
            self._start(PromptReceived(message), None)
        elif isinstance(message, SessionResume) and self.extensions:
            self._emit(ResumeReceived(message))
        elif isinstance(message, (SessionResume, EncryptedSessionResume)) and not self.extensions:
            self._refuse(ErrorCode.UNKNOWN_MESSAGE_TYPE, "unknown message type 'session_resume'", message.request_id)
        elif isinstance(message, (EncryptedMessage, EncryptedSessionInit, EncryptedSessionResume)):
            try:
                self._open(message)
            except ProtocolError as exc:  # a refused sealed message changes nothing
                self._refuse(exc.code, exc.message, message.request_id)
        # a stream_cancel with nothing streaming has no effect, a ping none ever

    def _open(self, message: EncryptedMessage | EncryptedSessionInit | EncryptedSessionResume) -> None:
        """Raises E2EError, RemoteProtocolError: Rule S6."""
        if isinstance(message, EncryptedSessionInit):
            self._emit(self._e2e.open_init(message))
        elif isinstance(message, EncryptedSessionResume):
            resume = self._e2e.open_resume(message, self.session_id)
            self._emit(ResumeReceived(resume, True, self._e2e.signers(resume.session_id)))
        else:
            prompt = self._e2e.open_prompt(message, self.session_id)
            assert prompt.session_id is not None
            sealer = self._e2e.sealer(prompt.session_id)
            self._start(PromptReceived(prompt, True, self._e2e.signers(sealer.session_id)), sealer)

    def _start(self, event: PromptReceived, sealer: ServerSealer | None) -> None:
        self._answer = Answer(event, sealer)
        self._start_answer()
        self._emit(event)

    def _refuse(self, code: str, text: str, request_id: str | None, *, ends: bool = True,
                details: dict[str, object] | None = None) -> None:
        """Rule S3: ``error``, then (``ends``) ``stream_end{reason:"error"}``."""
        sid = self.session_id
        self._queue(ErrorMessage(message=text, code=code, request_id=request_id, session_id=sid,
                                 details=tuple((details or {}).items())))
        if ends:
            self._queue(StreamEnd(reason="error", tokens_used=0, session_id=sid, request_id=request_id))

    def close(self) -> None:
        """Rule S8: zero every key; later frames are dropped, later calls queue nothing."""
        super().close()
        self._answer = None
        self._e2e.forget_all()
