"""``selection``: time to rank 10,000 hosts with the composite strategy (pure CPU, no node, no model).

The hosts are random but seeded (the same snapshot every run): price, stake,
reputation, and a measured latency and throughput, each unknown for 10% of
hosts. One repetition is one full ``HostSelector.rank_hosts`` call (normalise,
score, sort with address tie-break, build the ranked list); ``top1_*`` time
``rank_hosts(top_k=1)``, the path of ``select_optimal_host(strategy="composite")``.
"""

from __future__ import annotations

import random
import time

from common import Settings, log, percentile, rounded
from fabstir.discovery import HostCandidate, HostSelector

HOSTS = 10_000
REPEATS = 200
WARMUP = 5
SEED = 12


def random_hosts(n: int, seed: int) -> list[HostCandidate]:
    """A seeded random snapshot of ``n`` hosts."""
    rng = random.Random(seed)
    return [
        HostCandidate(
            address=f"0x{rng.getrandbits(160):040x}", api_url=f"http://host{i}.example:8080", models=("m",),
            price_per_token=rng.randint(1_000, 100_000), stake=rng.randint(0, 10**21), reputation=rng.random(),
            latency_ms=None if rng.random() < 0.1 else rng.uniform(5.0, 500.0),
            tokens_per_s=None if rng.random() < 0.1 else rng.uniform(5.0, 200.0),
        )
        for i in range(n)
    ]


async def run_selection(settings: Settings) -> dict[str, object]:
    """Rank the snapshot REPEATS times; ``settings`` is unused (no model involved)."""
    del settings
    hosts = random_hosts(HOSTS, SEED)
    selector = HostSelector()
    for _ in range(WARMUP):
        selector.rank_hosts(hosts)
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        ranked = selector.rank_hosts(hosts)
        samples.append((time.perf_counter() - started) * 1000)
    top1 = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        best = selector.rank_hosts(hosts, top_k=1)
        top1.append((time.perf_counter() - started) * 1000)
    assert best[0].host == ranked[0].host
    log(f"best {ranked[0].host.address} score {ranked[0].score:.3f}")
    return {"hosts": HOSTS, "repeats": REPEATS, "p50_ms": rounded(percentile(samples, 50), 3),
            "p99_ms": rounded(percentile(samples, 99), 3), "min_ms": rounded(min(samples), 3),
            "top1_p50_ms": rounded(percentile(top1, 50), 3), "top1_p99_ms": rounded(percentile(top1, 99), 3)}
