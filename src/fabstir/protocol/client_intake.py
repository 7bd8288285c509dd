"""The receiving half of :class:`~fabstir.protocol.client_connection.ClientConnection`: node frames in.

Each frame is parsed, matched to the request awaiting its answer, opened when sealed, and
turned into :data:`~fabstir.protocol.events.ClientEvent` values; the answer's text and
counts go through a :class:`~fabstir.protocol.stream.StreamAccumulator`. The rules it
applies (C1, C3, C4, C5, C6, C7) are stated in :mod:`fabstir.protocol.client_connection`.
"""

from __future__ import annotations

import dataclasses

from fabstir.errors import NodeError, RemoteProtocolError
from fabstir.protocol.connection import Connection
from fabstir.protocol.e2e_codec import ClientE2ECodec
from fabstir.protocol.events import (
    ChunkReceived,
    ClientEvent,
    ErrorReceived,
    RequestRefused,
    StreamEnded,
    StreamPosition,
)
from fabstir.protocol.messages import (
    AuthChallenge,
    AuthChallengeRequest,
    AuthRequest,
    AuthSuccess,
    ClientMessage,
    Connected,
    EncryptedChunk,
    EncryptedResponse,
    EncryptedSessionInit,
    EncryptedSessionResume,
    ErrorMessage,
    History,
    HistoryRequest,
    ServerMessage,
    SessionClear,
    SessionInit,
    SessionInitAck,
    SessionResume,
    SessionResumed,
    StreamChunk,
    StreamEnd,
    TokenRefresh,
)
from fabstir.protocol.parse import parse_server_message
from fabstir.protocol.stream import StreamAccumulator, error_from_message

__all__ = ["Awaited", "ClientIntake"]

Reply = SessionInitAck | SessionResumed | AuthChallenge | AuthSuccess | History
_REPLIES: dict[type, type] = {SessionInit: SessionInitAck, EncryptedSessionInit: SessionInitAck,
                              SessionResume: SessionResumed, EncryptedSessionResume: SessionResumed,
                              AuthChallengeRequest: AuthChallenge, AuthRequest: AuthSuccess, TokenRefresh: AuthSuccess,
                              HistoryRequest: History, SessionClear: History}
"""The reply each non-prompt request waits for."""
_STREAM_FRAMES = (StreamChunk, StreamEnd, EncryptedChunk, EncryptedResponse)


@dataclasses.dataclass(eq=False)
class Awaited:
    """The request awaiting its answer (a prompt has an ``accumulator``)."""

    message: ClientMessage
    accumulator: StreamAccumulator | None = None
    encrypted: bool = False
    index: int | None = None
    """The ``message_index`` a prompt was sent with."""
    tokens: int = 0
    error: NodeError | None = None

    @property
    def request_id(self) -> str | None:
        return self.message.request_id

    def owns(self, message: ServerMessage) -> bool:
        """Rule C3: the frame carries this request's ``id``, or none."""
        other = getattr(message, "request_id", None)
        return other is None or other == self.message.request_id

    def answered_by(self, message: ServerMessage) -> bool:
        return self.accumulator is None and type(message) is _REPLIES.get(type(self.message))


class ClientIntake(Connection[ClientEvent]):
    """Frames in, events out."""

    def __init__(self, message_index: int) -> None:
        super().__init__()
        self.next_message_index = message_index
        """Rule C4: the index of the next prompt."""
        self.features: frozenset[str] = frozenset()
        """Extensions the node advertised (``connected``, then the last ack that listed them)."""
        self.greeting: Connected | None = None
        self.client_address: str | None = None
        """The address the node recovered from the last acknowledged encrypted init."""
        self._e2e = ClientE2ECodec()
        self._awaited: Awaited | None = None
        self._last_prompt: Awaited | None = None

    @property
    def position(self) -> StreamPosition | None:
        """Rule C6: how far the prompt in progress (or the last one) got."""
        last = self._last_prompt
        if last is None or last.accumulator is None:
            return None
        return StreamPosition(last.request_id, last.accumulator.text, last.tokens, last.accumulator.done)

    def receive_frame(self, frame: str | bytes, *, now: float = 0.0) -> None:
        """Take one frame from the node (``now``: when it arrived); then read ``events_received()``.

        Raises:
            RemoteProtocolError, E2EError: Rule C7 (the frame changed nothing).
        """
        if self.closed:
            return
        message = parse_server_message(frame)
        awaited = self._awaited
        if type(message) is StreamChunk and awaited is not None and not awaited.encrypted:
            accumulator = awaited.accumulator
            other, request_id = message.request_id, awaited.message.request_id
            if accumulator is not None and (other is None or other == request_id):
                # the per-token path, as _on_answer would take it: a plaintext chunk of the prompt in progress
                delta = accumulator.feed(message, now)
                if delta is not None:
                    awaited.tokens += delta.tokens
                    self._events.append(ChunkReceived(delta.text, delta.tokens, request_id))
                return
        mine = awaited is not None and awaited.owns(message)
        if isinstance(message, Connected):
            self.greeting, self.features = message, frozenset(message.features or ())
            self._emit(message)
        elif awaited is not None and mine and awaited.accumulator is not None:
            self._on_answer(awaited, awaited.accumulator, message, now)
        elif awaited is not None and mine and isinstance(message, (ErrorMessage, StreamEnd)):
            self._on_refusal(awaited, message)
        elif awaited is not None and mine and awaited.answered_by(message):
            self._on_reply(awaited, message)
        else:
            self._on_stray(message)

    def _on_stray(self, message: ServerMessage) -> None:
        if isinstance(message, ErrorMessage):
            self._emit(ErrorReceived(error_from_message(message)))
        elif not isinstance(message, _STREAM_FRAMES):
            self._emit(message)  # an unsolicited reply, or a type this version does not know

    def _on_answer(self, awaited: Awaited, accumulator: StreamAccumulator, message: ServerMessage,
                   now: float) -> None:
        if isinstance(message, (EncryptedChunk, EncryptedResponse)) and not awaited.encrypted:
            raise RemoteProtocolError(f"{message.to_wire()['type']} answers a plaintext prompt",
                                      request_id=awaited.request_id)
        if isinstance(message, EncryptedResponse):
            self._e2e.open_response(message)
            return
        if isinstance(message, EncryptedChunk):
            message = self._e2e.open_chunk(message)
        elif isinstance(message, StreamEnd) and awaited.encrypted:
            self._e2e.end_response()
            if message.finish_reason is None and self._e2e.finish_reason is not None:
                message = dataclasses.replace(message, finish_reason=self._e2e.finish_reason)
        elif not isinstance(message, (StreamChunk, StreamEnd, ErrorMessage)):
            self._on_stray(message)
            return
        delta = accumulator.feed(message, now)
        if delta is not None:
            awaited.tokens += delta.tokens
            self._emit(ChunkReceived(delta.text, delta.tokens, awaited.request_id))
        if accumulator.done:
            self._end_prompt(awaited, accumulator)

    def _end_prompt(self, awaited: Awaited, accumulator: StreamAccumulator) -> None:
        snapshot = accumulator.snapshot()
        if snapshot.error is None:  # complete or cancelled: the turn counts
            sent = awaited.index if awaited.index is not None else self.next_message_index
            self.next_message_index = (snapshot.message_index if snapshot.message_index is not None else sent) + 1
        self._awaited = None
        self._end_answer()
        self._emit(StreamEnded(awaited.request_id, snapshot))

    def _on_refusal(self, awaited: Awaited, message: ErrorMessage | StreamEnd) -> None:
        if isinstance(message, ErrorMessage):
            awaited.error = awaited.error or error_from_message(message)
            return
        if isinstance(awaited.message, EncryptedSessionInit):
            self._e2e.drop_offer()
        self._awaited = None
        error = awaited.error or NodeError("the node ended the request with an error", code="STREAM_ERROR",
                                           request_id=awaited.request_id)
        self._emit(RequestRefused(awaited.request_id, error))

    def _on_reply(self, awaited: Awaited, message: ServerMessage) -> None:
        assert isinstance(message, Reply)
        if isinstance(message, SessionInitAck):
            if message.features is not None:
                self.features = frozenset(message.features)
            if isinstance(awaited.message, EncryptedSessionInit):
                self._e2e.accept_offer()
                self.client_address = message.client_address
            self._bind()
        elif isinstance(message, SessionResumed):
            self.next_message_index = message.message_index
            self._bind()
        self._awaited = None
        self._emit(message)
