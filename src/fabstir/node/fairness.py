"""A per-client cap on answers generating or queued at once.

Per-minute rate limits (:mod:`fabstir.node.ratelimit`) do not bound how much
work one client has in flight: ten connections can each queue a long answer.
:class:`ConcurrencyCap` counts each client's answers from admission to the end
of the stream, queued or generating, and refuses one more past the limit with
:class:`TooManyRequestsError` (``TOO_MANY_REQUESTS`` with ``retry_after``).
Nothing was generated or billed for a refused request. Fair order among the
admitted answers is the engine pool's job (:class:`fabstir.node.engines.pool.EnginePool`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from fabstir.errors import NodeError
from fabstir.protocol import ErrorCode

__all__ = ["ConcurrencyCap", "TooManyRequestsError"]


class TooManyRequestsError(NodeError):
    """The client already has ``limit`` answers in flight; ``details["retry_after"]`` says when to try again."""

    default_code = ErrorCode.TOO_MANY_REQUESTS


class ConcurrencyCap:
    """At most ``limit`` answers in flight per client key; ``limit`` 0 turns the cap off.

    ``retry_after`` is an estimate: the typical answer's duration (a moving
    average of finished ones) less the age of the client's oldest answer, within
    ``[min_retry, max_retry]`` seconds.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic,
                 min_retry: float = 0.5, max_retry: float = 30.0) -> None:
        if limit < 0:
            raise ValueError("limit must be non-negative")
        self.limit = limit
        self._clock = clock
        self._min_retry = min_retry
        self._max_retry = max_retry
        self._started: dict[str, list[float]] = {}
        self._typical = min_retry

    def in_flight(self, client: str) -> int:
        """Answers ``client`` has admitted and not yet finished."""
        return len(self._started.get(client, ()))

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """Count one answer of ``client`` for the block.

        Raises:
            TooManyRequestsError: ``client`` already has ``limit`` answers in flight; refuse the request
                (send its ``code``, ``message`` and ``details``) and do not generate.
        """
        started = self._started.setdefault(client, [])
        if self.limit and len(started) >= self.limit:
            wait = self.retry_after(client)
            raise TooManyRequestsError(
                f"{len(started)} answers already in flight for this client (limit {self.limit});"
                f" retry after {wait:.2f} s",
                details={"retry_after": wait, "limit": self.limit})
        stamp = self._clock()
        started.append(stamp)
        try:
            yield
        finally:
            started.remove(stamp)
            if not started:
                del self._started[client]
            self._typical = 0.8 * self._typical + 0.2 * (self._clock() - stamp)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` is likely to have a free slot (rounded to ms)."""
        started = self._started.get(client)
        age = self._clock() - started[0] if started else 0.0
        return round(min(self._max_retry, max(self._min_retry, self._typical - age)), 3)
