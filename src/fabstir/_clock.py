"""The wall clock that signed records are issued and checked against (bottom layer: imports nothing of fabstir)."""

from __future__ import annotations

import time

__all__ = ["wall_clock_ms"]


def wall_clock_ms() -> int:
    """Unix time in milliseconds: the clock announcements are issued and checked against."""
    return time.time_ns() // 1_000_000
