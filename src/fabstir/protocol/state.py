"""The session state table shared by the SDK connection and the node handler.

Rule 1: a session is in exactly one :class:`SessionState` at a time.
Rule 2: it moves only along the edges in :data:`TRANSITIONS`; any other move
raises :class:`~fabstir.errors.LocalProtocolError` and leaves the state as it was.
Rule 3: ``CLOSED`` is final.

::

    IDLE ─► CONNECTING ─► CONNECTED ─► READY ◄─► STREAMING ─► CANCELLING ─► READY
                              │           ▲          │                          │
                              └───────────┼──────────┴───► RECONNECTING ◄───────┘
                                          └──────────────────────┘
    (every state may go to CLOSED; CONNECTED may stream directly for the
     public node's init-less ``inference`` message)
"""

from __future__ import annotations

import enum

from fabstir.errors import LocalProtocolError

__all__ = ["SessionState", "SessionStateMachine", "TRANSITIONS"]


class SessionState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    READY = "ready"
    STREAMING = "streaming"
    CANCELLING = "cancelling"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


_S = SessionState

TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    _S.IDLE: frozenset({_S.CONNECTING, _S.CLOSED}),
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.IDLE, _S.CLOSED}),
    _S.CONNECTED: frozenset({_S.READY, _S.STREAMING, _S.RECONNECTING, _S.CLOSED}),
    _S.READY: frozenset({_S.READY, _S.STREAMING, _S.RECONNECTING, _S.CLOSED}),
    _S.STREAMING: frozenset({_S.READY, _S.CONNECTED, _S.CANCELLING, _S.RECONNECTING, _S.CLOSED}),
    _S.CANCELLING: frozenset({_S.READY, _S.CONNECTED, _S.RECONNECTING, _S.CLOSED}),
    _S.RECONNECTING: frozenset({_S.CONNECTED, _S.CLOSED}),
    _S.CLOSED: frozenset(),
}
"""Allowed moves: ``TRANSITIONS[a]`` holds every state reachable from ``a`` in one step."""


class SessionStateMachine:
    """Holds one session's state and enforces :data:`TRANSITIONS`."""

    def __init__(self, initial: SessionState = SessionState.IDLE) -> None:
        self._state = initial

    @property
    def state(self) -> SessionState:
        return self._state

    def can(self, target: SessionState) -> bool:
        """Whether moving to ``target`` is allowed now."""
        return target in TRANSITIONS[self._state]

    def move(self, target: SessionState) -> None:
        """Move to ``target``.

        Raises:
            LocalProtocolError: the move is not in :data:`TRANSITIONS`.
        """
        if not self.can(target):
            raise LocalProtocolError(
                f"illegal session transition {self._state.name} -> {target.name}",
                code="ILLEGAL_TRANSITION",
            )
        self._state = target
