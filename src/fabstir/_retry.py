"""Delays between retries, shared by the SDK's reconnects and the discovery client (bottom layer: no imports)."""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["backoff_delays"]


def backoff_delays(initial_s: float = 0.1, factor: float = 2.0, maximum_s: float = 2.0, *,
                   attempts: int | None = None, jitter: bool = False,
                   rng: random.Random | None = None) -> Iterator[float]:
    """Delays before each retry: ``initial_s``, then times ``factor``, capped at ``maximum_s``.

    Endless unless ``attempts`` is given. With ``jitter`` each delay is drawn from ``[capped / 2, capped]``.
    """
    rng = rng or random.Random()
    delay, count = initial_s, 0
    while attempts is None or count < attempts:
        capped = min(delay, maximum_s)
        yield rng.uniform(capped / 2, capped) if jitter else capped
        delay *= factor
        count += 1
