"""Token-bucket rate limits, per client and per session (not one global bucket).

A request costs one token from the client's bucket (keyed by its address) and
one from the session's bucket. When either is empty the request is refused
with the seconds until a token is back, which the node sends as
``RATE_LIMITED`` / ``retry_after`` (HTTP 429 with ``Retry-After``). Buckets
idle for a while are forgotten, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter", "TokenBucket"]


@dataclasses.dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; returns 0 on success, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _Buckets:
    def __init__(self, per_minute: int, burst: int, max_keys: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, burst))
        self.max_keys = max_keys
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.capacity, self.capacity, now)
            self.buckets[key] = bucket
            while len(self.buckets) > self.max_keys:
                self.buckets.popitem(last=False)  # the least recently used; a full bucket is lost at worst
        self.buckets.move_to_end(key)
        return bucket.take(now)


class RateLimiter:
    """Per-client and per-session limits; a rate of 0 turns that limit off."""

    def __init__(
        self,
        *,
        client_per_minute: int,
        client_burst: int,
        session_per_minute: int,
        session_burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self._clients = _Buckets(client_per_minute, client_burst, max_keys) if client_per_minute > 0 else None
        self._sessions = _Buckets(session_per_minute, session_burst, max_keys) if session_per_minute > 0 else None
        self._clock = clock

    def check(self, client: str, session: str | None) -> float:
        """Charge one request; returns 0.0 if allowed, else the seconds to wait (``retry_after``)."""
        now = self._clock()
        wait = self._clients.take(client, now) if self._clients is not None else 0.0
        if wait == 0.0 and session is not None and self._sessions is not None:
            wait = self._sessions.take(session, now)
        return wait
