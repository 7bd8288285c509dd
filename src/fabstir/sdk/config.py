"""Typed SDK settings: timeouts and the reconnect policy."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

from fabstir._retry import backoff_delays
from fabstir.errors import ConfigError

__all__ = ["RetryPolicy", "Timeouts", "backoff"]


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait for each step; ``None`` waits forever."""

    connect: float | None = 10.0
    """Opening the WebSocket (TCP + HTTP upgrade)."""
    handshake: float | None = 30.0
    """Waiting for ``session_init_ack`` / ``session_resumed`` (the public SDK waits 30 s)."""
    first_token: float | None = 120.0
    """From sending a prompt to its first frame (may include queueing for an engine)."""
    between_frames: float | None = 60.0
    """Longest silence between two frames of one response."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and value <= 0:
                raise ConfigError(f"timeout {field.name} must be positive or None")


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter for reconnecting to a host."""

    attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 5.0
    factor: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.initial_delay < 0 or self.max_delay < 0 or self.factor < 1:
            raise ConfigError("retry policy values must be non-negative (factor >= 1)")


def backoff(policy: RetryPolicy, rng: random.Random | None = None) -> Iterator[float]:
    """Delays before each reconnect attempt: ``policy.attempts`` values, growing, capped."""
    return backoff_delays(policy.initial_delay, policy.factor, policy.max_delay, attempts=policy.attempts,
                          jitter=policy.jitter, rng=rng)
