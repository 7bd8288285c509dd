"""Server-side conversation state, kept per (owner, session id) across connections.

Sessions survive a disconnect (a client may reconnect and resume on the same
host, as with the public node). Each belongs to an owner key (see
:mod:`fabstir.node.admission`): the same session id named by someone else is
another conversation. At most ``max_sessions`` are kept; the least recently
used is forgotten first.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from fabstir.protocol import ChatTurn

__all__ = ["SessionContext", "SessionStore"]


@dataclasses.dataclass(slots=True)
class SessionContext:
    """One session's history and the next expected ``message_index``."""

    session_id: str
    owner: str = ""
    """Whose conversation this is (an admission owner key)."""
    job_id: int | None = None
    chain_id: int | None = None
    history: list[ChatTurn] = dataclasses.field(default_factory=list)
    next_index: int = 0
    max_history_chars: int = 4_000_000

    def record_turn(self, prompt: str, answer: str) -> None:
        """Append a finished exchange and advance the message index."""
        self.history.append(ChatTurn("user", prompt))
        if answer:
            self.history.append(ChatTurn("assistant", answer))
        self.next_index += 1
        self._trim()

    def replace_history(self, turns: list[ChatTurn], next_index: int) -> None:
        """Load a client's own copy of the conversation (``session_resume``)."""
        self.history = list(turns)
        self.next_index = next_index
        self._trim()

    def _trim(self) -> None:
        total = sum(len(t.content) for t in self.history)
        while self.history and total > self.max_history_chars:
            total -= len(self.history.pop(0).content)


class SessionStore:
    """Sessions by owner and id, bounded, least recently used dropped first."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self._sessions: OrderedDict[tuple[str, str], SessionContext] = OrderedDict()
        self._max = max_sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, owner: str, session_id: str) -> SessionContext | None:
        """``owner``'s session ``session_id``, if kept."""
        session = self._sessions.get((owner, session_id))
        if session is not None:
            self._sessions.move_to_end((owner, session_id))
        return session

    def find(self, session_id: str) -> SessionContext | None:
        """The most recently used session named ``session_id``, whoever owns it (operators and tests only:
        never answer a client from this)."""
        for (_, sid), session in reversed(self._sessions.items()):
            if sid == session_id:
                return session
        return None

    def open(self, owner: str, session_id: str, job_id: int | None = None,
             chain_id: int | None = None) -> SessionContext:
        """Return ``owner``'s session, creating it if new; history of an existing one is kept."""
        session = self.get(owner, session_id)
        if session is None:
            session = SessionContext(session_id=session_id, owner=owner)
            self._sessions[(owner, session_id)] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        session.job_id = job_id if job_id is not None else session.job_id
        session.chain_id = chain_id if chain_id is not None else session.chain_id
        return session
