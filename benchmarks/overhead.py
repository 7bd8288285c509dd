"""``overhead``: SDK -> WebSocket -> node subprocess -> llama.cpp vs. the same engine called in-process.

Both sides load the same GGUF with the same context and threads, and
generate the same prompt greedily (repeat penalty 1.0). Repetitions
alternate in ABBA order (in-process, SDK, SDK, in-process, ...) after a few warm-up runs
of each, and medians are reported.

Beside the wall-clock figures, which a loaded machine moves a lot, the CPU time the node process and the
client spend per token during the measured SDK runs (``node_cpu_us_per_token``, ``client_cpu_us_per_token``;
the node's includes llama.cpp's decode) and how many tokens one ``on_token`` piece carried on average
(``sdk_tokens_per_piece``: above 1 when the node sent several tokens in one chunk).
"""

from __future__ import annotations

import asyncio

from common import (
    Sample,
    Settings,
    inprocess_run,
    load_engine,
    log,
    own_cpu_seconds,
    process_cpu_seconds,
    rounded,
    sdk_run,
    start_node,
    summarize,
)
from fabstir.sdk import FabstirSDK, Timeouts


async def run_overhead(settings: Settings) -> dict[str, object]:
    """Measure and return the ``overhead`` JSON object."""
    node, url = await start_node(settings, parallel=1, threads=settings.threads)
    engine = None
    try:
        engine = load_engine(settings, settings.threads)
        sdk_samples: list[Sample] = []
        local_samples: list[Sample] = []
        node_cpu: float | None = 0.0
        client_cpu = 0.0
        async with FabstirSDK(timeouts=_timeouts(settings)) as sdk:
            for number in range(settings.warmup + settings.runs):
                measured = number >= settings.warmup
                # ABBA order: which side goes first alternates, so neither always follows the other
                if number % 2 == 0:
                    await asyncio.sleep(settings.settle)
                    local = inprocess_run(engine, settings)
                await asyncio.sleep(settings.settle)
                node_before, client_before = process_cpu_seconds(node.pid), own_cpu_seconds()
                remote = await sdk_run(sdk, url, settings)
                node_after, client_after = process_cpu_seconds(node.pid), own_cpu_seconds()
                if measured:
                    client_cpu += client_after - client_before
                    if node_cpu is not None and node_before is not None and node_after is not None:
                        node_cpu += node_after - node_before
                    else:
                        node_cpu = None
                if number % 2 == 1:
                    await asyncio.sleep(settings.settle)
                    local = inprocess_run(engine, settings)
                node.check_alive()
                if measured:
                    local_samples.append(local)
                    sdk_samples.append(remote)
                label = f"run {number - settings.warmup + 1}/{settings.runs}" if measured else "warm-up"
                log(f"overhead {label}: in-process {local.tokens_per_s:.0f} tok/s, ttft {local.ttft_ms:.2f} ms; "
                    f"sdk {remote.tokens_per_s:.0f} tok/s, ttft {remote.ttft_ms:.2f} ms")
    finally:
        if engine is not None:
            engine.close()
        node.close()
    _check_same_output(sdk_samples, local_samples)
    sdk_tps, sdk_ttft = summarize(sdk_samples)
    local_tps, local_ttft = summarize(local_samples)
    served = sum(s.tokens for s in sdk_samples)
    pieces = sum(len(s.stamps) for s in sdk_samples)
    return {
        "sdk_tokens_per_s": rounded(sdk_tps, 1),
        "inprocess_tokens_per_s": rounded(local_tps, 1),
        "ratio": rounded(sdk_tps / local_tps, 3),
        "sdk_ttft_ms": rounded(sdk_ttft, 3),
        "inprocess_ttft_ms": rounded(local_ttft, 3),
        "ttft_added_ms": rounded(sdk_ttft - local_ttft, 3),
        "sdk_tokens": sdk_samples[0].tokens,
        "inprocess_tokens": local_samples[0].tokens,
        "sdk_tokens_per_piece": rounded(served / pieces, 2),
        "node_cpu_us_per_token": rounded(node_cpu / served * 1e6, 1) if node_cpu is not None else None,
        "client_cpu_us_per_token": rounded(client_cpu / served * 1e6, 1),
        "runs": settings.runs,
        "max_tokens": settings.max_tokens,
        "threads": settings.threads,
        **settings.model_info(),
    }


def _timeouts(settings: Settings) -> Timeouts:
    return Timeouts(connect=10.0, handshake=10.0, first_token=settings.run_timeout, between_frames=settings.run_timeout)


def _check_same_output(sdk_samples: list[Sample], local_samples: list[Sample]) -> None:
    """Both sides must have produced the same text and token count, or the comparison is void."""
    for remote, local in zip(sdk_samples, local_samples):
        if remote.tokens != local.tokens or remote.text != local.text:
            raise RuntimeError(
                f"SDK and in-process outputs differ ({remote.tokens} vs {local.tokens} tokens): "
                f"{remote.text[:80]!r} vs {local.text[:80]!r}")
