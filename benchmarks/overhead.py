"""``overhead``: SDK -> WebSocket -> node subprocess -> llama.cpp vs. the same engine called in-process.

Both sides load the same GGUF with the same context and threads, and
generate the same prompt greedily (repeat penalty 1.0). Repetitions
alternate in ABBA order (in-process, SDK, SDK, in-process, ...) after a few warm-up runs
of each, and medians are reported.
"""

from __future__ import annotations

import asyncio

from common import Sample, Settings, inprocess_run, load_engine, log, rounded, sdk_run, start_node, summarize
from fabstir.sdk import FabstirSDK, Timeouts


async def run_overhead(settings: Settings) -> dict[str, object]:
    """Measure and return the ``overhead`` JSON object."""
    node, url = await start_node(settings, parallel=1, threads=settings.threads)
    engine = None
    try:
        engine = load_engine(settings, settings.threads)
        sdk_samples: list[Sample] = []
        local_samples: list[Sample] = []
        async with FabstirSDK(timeouts=_timeouts(settings)) as sdk:
            for number in range(settings.warmup + settings.runs):
                measured = number >= settings.warmup
                # ABBA order: which side goes first alternates, so neither always follows the other
                if number % 2 == 0:
                    await asyncio.sleep(settings.settle)
                    local = inprocess_run(engine, settings)
                await asyncio.sleep(settings.settle)
                remote = await sdk_run(sdk, url, settings)
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
    return {
        "sdk_tokens_per_s": rounded(sdk_tps, 1),
        "inprocess_tokens_per_s": rounded(local_tps, 1),
        "ratio": rounded(sdk_tps / local_tps, 3),
        "sdk_ttft_ms": rounded(sdk_ttft, 3),
        "inprocess_ttft_ms": rounded(local_ttft, 3),
        "ttft_added_ms": rounded(sdk_ttft - local_ttft, 3),
        "sdk_tokens": sdk_samples[0].tokens,
        "inprocess_tokens": local_samples[0].tokens,
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
