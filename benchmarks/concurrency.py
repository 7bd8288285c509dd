"""``concurrency``: many WebSocket sessions streaming at once from one node subprocess.

All sessions connect first (not timed), then every session sends its prompt
at the same moment. They all come from 127.0.0.1, so the node runs with its per-address caps off
(connections and answers in flight): every session beyond ``--parallel`` waits in the node's queue
for an engine. A failed session fails the benchmark. Clients record the arrival time of every text piece
(``on_token``); gaps between consecutive pieces of one stream give the
inter-token latency distribution (a piece carries several tokens when the node sent what the engine had
queued in one chunk; ``tokens_per_piece`` says how many on average), and the first piece gives TTFT (which
includes waiting for a free engine: sessions beyond ``--parallel`` queue).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from common import Settings, log, median, percentile, rounded, sdk_run, start_node
from fabstir.sdk import FabstirSDK, PromptOptions, Timeouts

UNCAPPED = {"FABSTIR_NODE_MAX_CONNECTIONS_PER_ADDRESS": "0", "FABSTIR_NODE_MAX_CONCURRENT_PER_CLIENT": "0"}
"""Node settings: no cap on connections or answers in flight per client address (0: no cap)."""


@dataclasses.dataclass(frozen=True)
class ConcurrencyOptions:
    """Shape of the load."""

    sessions: int = 100
    parallel: int = 4
    threads: int = 1
    max_tokens: int = 64
    timeout: float = 120.0


@dataclasses.dataclass
class _Stream:
    session_id: str
    started: float = 0.0
    stamps: list[float] = dataclasses.field(default_factory=list)
    tokens: int = 0


async def run_concurrency(settings: Settings, options: ConcurrencyOptions) -> dict[str, object]:
    """Measure and return the ``concurrency`` JSON object."""
    # every session comes from 127.0.0.1: lift the per-address caps so all of them queue for an engine
    node, url = await start_node(settings, parallel=options.parallel, threads=options.threads, env=UNCAPPED)
    timeouts = Timeouts(connect=30.0, handshake=30.0, first_token=options.timeout, between_frames=60.0)
    try:
        async with FabstirSDK(timeouts=timeouts) as sdk:
            single: list[float] = []
            for _ in range(settings.warmup + 3):
                single.append((await sdk_run(sdk, url, settings, max_tokens=options.max_tokens)).tokens_per_s)
            single_tps = median(single[settings.warmup:])
            log(f"concurrency: single session {single_tps:.0f} tok/s ({options.max_tokens} tokens)")
            result = await asyncio.wait_for(_burst(sdk, url, settings, options), options.timeout + 60.0)
        node.check_alive()
    finally:
        node.close()
    result["single_session_tokens_per_s"] = rounded(single_tps, 1)
    return result


async def _burst(sdk: FabstirSDK, url: str, settings: Settings, options: ConcurrencyOptions) -> dict[str, object]:
    streams = [_Stream(f"bench-c{n}-{uuid.uuid4().hex[:8]}") for n in range(options.sessions)]
    connect_started = time.perf_counter()
    connected = await asyncio.gather(*(sdk.inference.connect_to_session(s.session_id, url) for s in streams),
                                     return_exceptions=True)
    connect_errors = [c for c in connected if isinstance(c, BaseException)]
    live = [s for s, c in zip(streams, connected) if not isinstance(c, BaseException)]
    log(f"concurrency: {len(live)}/{len(streams)} sessions connected in "
        f"{time.perf_counter() - connect_started:.2f} s; sending {len(live)} prompts at once")
    prompt_options = PromptOptions(max_tokens=options.max_tokens, temperature=0.0)

    async def one(stream: _Stream) -> None:
        stream.started = time.perf_counter()
        result = await sdk.inference.send_prompt(
            settings.prompt, prompt_options, session_id=stream.session_id,
            on_token=lambda _piece: stream.stamps.append(time.perf_counter()))
        stream.tokens = result.completion_tokens

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(s) for s in live), return_exceptions=True)
    wall = time.perf_counter() - started
    await asyncio.gather(*(sdk.inference.close(s.session_id) for s in streams), return_exceptions=True)
    errors = connect_errors + [o for o in outcomes if isinstance(o, BaseException)]
    for error in errors[:5]:
        log(f"concurrency error: {type(error).__name__}: {error}")
    done = [s for s, o in zip(live, outcomes) if not isinstance(o, BaseException) and s.stamps]
    gaps = [(b - a) * 1000.0 for s in done for a, b in zip(s.stamps, s.stamps[1:])]
    ttfts = [(s.stamps[0] - s.started) * 1000.0 for s in done]
    total_tokens = sum(s.tokens for s in done)
    short = sum(1 for s in done if s.tokens != options.max_tokens)
    log(f"concurrency: {total_tokens} tokens in {wall:.2f} s = {total_tokens / wall:.0f} tok/s; "
        f"{len(errors)} errors; {short} streams ended before max_tokens")
    if errors:
        raise RuntimeError(f"{len(errors)} of {options.sessions} sessions failed (first: {type(errors[0]).__name__}: "
                           f"{errors[0]}); the aggregate would not measure {options.sessions} streams")
    return {
        "sessions": options.sessions,
        "completed": len(done),
        "errors": len(errors),
        "parallel": options.parallel,
        "threads": options.threads,
        "max_tokens": options.max_tokens,
        "total_tokens": total_tokens,
        "wall_s": rounded(wall, 3),
        "aggregate_tokens_per_s": rounded(total_tokens / wall, 1),
        "tokens_per_piece": rounded(total_tokens / max(1, sum(len(s.stamps) for s in done)), 2),
        "p50_gap_ms": rounded(percentile(gaps, 50), 3),
        "p99_gap_ms": rounded(percentile(gaps, 99), 3),
        "max_gap_ms": rounded(max(gaps, default=float("nan")), 3),
        "p50_ttft_ms": rounded(percentile(ttfts, 50), 1),
        "p99_ttft_ms": rounded(percentile(ttfts, 99), 1),
        **settings.model_info(),
    }
