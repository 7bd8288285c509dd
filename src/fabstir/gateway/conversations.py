"""Recognising a continuing conversation from the messages an OpenAI client re-sends with every request.

An OpenAI client sends the whole conversation each time. The gateway keys each live session by a hash of its
conversation so far (every turn's role and text, in order); a request whose messages before the last one hash
to a live, idle session's key continues that session, so only the new message travels to the host (which
keeps the context server-side). Anything else opens a new session with the messages as its history.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Callable, Sequence

from fabstir.protocol import ChatTurn

__all__ = ["ConversationIndex", "conversation_key"]


def conversation_key(turns: Sequence[ChatTurn]) -> str:
    """SHA-256 of the turns' roles and texts, in order (compact JSON, so no two conversations collide by framing)."""
    canonical = json.dumps([[t.role, t.content] for t in turns], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ConversationIndex:
    """Live sessions by the key of their conversation; the least recently used beyond ``capacity`` are dropped."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._sessions: collections.OrderedDict[str, str] = collections.OrderedDict()

    def take(self, key: str) -> str | None:
        """The session whose conversation has ``key`` (removed: it is busy until :meth:`put` again)."""
        return self._sessions.pop(key, None)

    def put(self, key: str, session_id: str) -> list[str]:
        """Index ``session_id`` under ``key``; returns the session ids no longer indexed, for the caller to close.

        Those are the least recently used beyond capacity, and the session that held the same conversation
        before (two clients asked the same questions and got the same answers): only one can be found again, and
        one dropped from the index without being closed would keep its connection to the host for good.
        """
        displaced = self._sessions.get(key)
        evicted = [displaced] if displaced is not None and displaced != session_id else []
        self._sessions[key] = session_id
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.capacity:
            evicted.append(self._sessions.popitem(last=False)[1])
        return evicted

    def drop_oldest(self, count: int, where: Callable[[str], bool]) -> list[str]:
        """Remove and return up to ``count`` session ids for which ``where`` holds, least recently used first."""
        chosen = [key for key, session_id in self._sessions.items() if where(session_id)][:count]
        return [self._sessions.pop(key) for key in chosen]

    def __len__(self) -> int:
        return len(self._sessions)
