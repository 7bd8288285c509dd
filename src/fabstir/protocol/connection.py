"""What the two sans-I/O connections share: the state table, the event queue, the frame queue.

Theory of operation (as python-websockets' ``protocol.py`` and h11's ``Connection``): a
connection does no I/O and reads no clock. Its owner feeds it every text frame the socket
receives (``receive_frame``), then takes the typed events that frame produced
(``events_received``) and the frames to write (``frames_to_send``), in that order, and writes
them before feeding the next frame. Acting on the connection (``send_*``, ``accept_*``)
only queues frames. Time, where the protocol needs it, is an argument.

Rules common to both ends (each end's module states its own on top of these):

Rule 1. A connection is in one :class:`~fabstir.protocol.state.SessionState` at a time and
moves only along :data:`~fabstir.protocol.state.TRANSITIONS`. Both ends use the same
states: ``CONNECTED`` (socket open, no session bound), ``READY`` (a session is bound),
``STREAMING`` (a prompt is being answered), ``CANCELLING`` (its cancel was sent/received),
``CLOSED`` (final). An answer ends back in ``READY`` if a session is bound, else ``CONNECTED``.

Rule 2. An action the protocol forbids raises :class:`~fabstir.errors.LocalProtocolError`
and changes nothing: no state moves, no frame is queued.

Rule 3. After :meth:`Connection.close` nothing is queued any more and received frames are
dropped; the owner closes the socket.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from fabstir.errors import LocalProtocolError
from fabstir.protocol.messages import ClientMessage, ServerMessage
from fabstir.protocol.parse import encode_message
from fabstir.protocol.state import SessionState, SessionStateMachine

__all__ = ["Connection"]

EventT = TypeVar("EventT")

_ANSWERING = frozenset({SessionState.STREAMING, SessionState.CANCELLING})


class Connection(Generic[EventT]):
    """Base of :class:`ClientConnection` and :class:`ServerConnection`; see the module docstring."""

    def __init__(self) -> None:
        self._state = SessionStateMachine(SessionState.CONNECTED)
        self._events: list[EventT] = []
        self._frames: list[str] = []
        self._bound = False

    @property
    def state(self) -> SessionState:
        return self._state.state

    @property
    def streaming(self) -> bool:
        """An answer is in progress (``STREAMING`` or ``CANCELLING``)."""
        return self._state.state in _ANSWERING

    @property
    def closed(self) -> bool:
        return self._state.state is SessionState.CLOSED

    def events_received(self) -> list[EventT]:
        """Every event produced since the last call, oldest first (the list is handed over, then cleared)."""
        events, self._events = self._events, []
        return events

    def frames_to_send(self) -> list[str]:
        """Every text frame queued since the last call, in the order to write them."""
        frames, self._frames = self._frames, []
        return frames

    def close(self) -> None:
        """The socket closed (or is being closed): move to ``CLOSED``; see Rule 3."""
        if not self.closed:
            self._state.move(SessionState.CLOSED)
        self._frames.clear()

    # --- for subclasses ---------------------------------------------------------------

    def _emit(self, event: EventT) -> None:
        self._events.append(event)

    def _queue(self, message: ClientMessage | ServerMessage) -> None:
        if not self.closed:
            self._frames.append(encode_message(message))

    def _queue_text(self, text: str) -> None:
        if not self.closed:
            self._frames.append(text)

    def _require_open(self, action: str) -> None:
        if self.closed:
            raise LocalProtocolError(f"cannot {action}: the connection is closed", code="CONNECTION_CLOSED")

    def _bind(self) -> None:
        """A session is bound: ``CONNECTED`` becomes ``READY`` (an answer in progress ends there)."""
        self._bound = True
        if self._state.state is SessionState.CONNECTED:
            self._state.move(SessionState.READY)

    def _start_answer(self) -> None:
        self._state.move(SessionState.STREAMING)

    def _end_answer(self) -> None:
        if self.streaming:
            self._state.move(SessionState.READY if self._bound else SessionState.CONNECTED)
