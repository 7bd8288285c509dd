"""``peer``: our SDK + node vs. llama-cpp-python's OpenAI-compatible server + the ``openai`` client.

Both servers run as subprocesses over the same GGUF, context, threads and
batch settings; both clients stream the same prompt with greedy sampling and
repeat penalty 1.0. Repetitions alternate in ABBA order (ours, peer, peer, ours, ...)
after warm-up runs, and medians are reported. Both must produce the same text in every run (``same_text``),
or the benchmark fails: different completions are different workloads.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from typing import TYPE_CHECKING

import httpx

from common import (
    LOOPBACK,
    ManagedProcess,
    Sample,
    Settings,
    free_port,
    log,
    rounded,
    sdk_run,
    start_node,
    summarize,
)
from fabstir.sdk import FabstirSDK, Timeouts

if TYPE_CHECKING:
    from openai import AsyncOpenAI

INSTALL_HINT = 'pip install "llama-cpp-python[server]==0.3.36" openai  (the project\'s "bench" extra)'


def _require_peer_packages() -> None:
    missing = []
    for module in ("openai", "llama_cpp.server.app", "sse_starlette", "fastapi"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise RuntimeError(f"the peer benchmark needs {', '.join(missing)}: {INSTALL_HINT}")


async def start_peer(settings: Settings) -> tuple[ManagedProcess, str]:
    """Start ``python -m llama_cpp.server`` on a free loopback port; returns the process and its /v1 URL."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(settings.model), "--host", LOOPBACK,
            "--port", str(port), "--n_ctx", str(settings.context_window), "--n_threads", str(settings.threads),
            # the same batch threads as LlamaCppEngine (llama-cpp-python's default: all cores)
            "--n_threads_batch", str(multiprocessing.cpu_count()), "--seed", "0", "--verbose", "False"]
    process = ManagedProcess("llama-cpp-server", argv)
    base = f"http://{LOOPBACK}:{port}/v1"
    try:
        deadline = time.monotonic() + settings.startup_timeout
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as http:
            while True:
                try:
                    if (await http.get(f"{base}/models")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                process.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama_cpp.server not ready within {settings.startup_timeout:.0f} s; "
                                       f"log tail:\n{process.log_tail()}")
                await asyncio.sleep(0.1)
    except BaseException:
        process.close()
        raise
    log(f"llama_cpp.server ready at {base} (threads {settings.threads})")
    return process, base


async def peer_run(client: AsyncOpenAI, settings: Settings) -> Sample:
    """One streamed completion from the peer server; tokens are counted as non-empty streamed chunks."""
    stamps: list[float] = []
    parts: list[str] = []
    finish: str | None = None
    started = time.perf_counter()
    stream = await client.completions.create(
        model=str(settings.model), prompt=settings.prompt, max_tokens=settings.max_tokens, temperature=0.0,
        seed=0, stream=True, extra_body={"repeat_penalty": 1.0, "top_k": 40, "min_p": 0.0})
    async for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.text:
            stamps.append(time.perf_counter())
            parts.append(choice.text)
        if choice.finish_reason is not None:
            finish = choice.finish_reason
    if finish is None:
        raise RuntimeError("the peer's stream ended without a finish_reason")
    return Sample.from_stamps(started, stamps, len(stamps), "".join(parts))


async def run_peer(settings: Settings) -> dict[str, object]:
    """Measure and return the ``peer`` JSON object."""
    _require_peer_packages()
    from openai import AsyncOpenAI

    node, url = await start_node(settings, parallel=1, threads=settings.threads)
    peer: ManagedProcess | None = None
    try:
        peer, base = await start_peer(settings)
        ours: list[Sample] = []
        theirs: list[Sample] = []
        timeouts = Timeouts(connect=10.0, handshake=10.0, first_token=settings.run_timeout,
                            between_frames=settings.run_timeout)
        client = AsyncOpenAI(base_url=base, api_key="not-needed", max_retries=0, timeout=settings.run_timeout)
        try:
            async with FabstirSDK(timeouts=timeouts) as sdk:
                for number in range(settings.warmup + settings.runs):
                    measured = number >= settings.warmup
                    # ABBA order: which side goes first alternates
                    if number % 2 == 0:
                        await asyncio.sleep(settings.settle)
                        mine = await sdk_run(sdk, url, settings)
                    await asyncio.sleep(settings.settle)
                    other = await asyncio.wait_for(peer_run(client, settings), settings.run_timeout)
                    if number % 2 == 1:
                        await asyncio.sleep(settings.settle)
                        mine = await sdk_run(sdk, url, settings)
                    node.check_alive()
                    peer.check_alive()
                    if measured:
                        ours.append(mine)
                        theirs.append(other)
                    label = f"run {number - settings.warmup + 1}/{settings.runs}" if measured else "warm-up"
                    log(f"peer {label}: ours {mine.tokens_per_s:.0f} tok/s, ttft {mine.ttft_ms:.2f} ms; "
                        f"llama_cpp.server {other.tokens_per_s:.0f} tok/s, ttft {other.ttft_ms:.2f} ms")
        finally:
            await client.close()
    finally:
        node.close()
        if peer is not None:
            peer.close()
    ours_tps, ours_ttft = summarize(ours)
    peer_tps, peer_ttft = summarize(theirs)
    same_text = all(a.text == b.text for a, b in zip(ours, theirs))
    if not same_text:
        mine, other = next((a.text, b.text) for a, b in zip(ours, theirs) if a.text != b.text)
        raise RuntimeError(f"ours and the peer produced different text, so their speeds are not comparable: "
                           f"{mine[:80]!r} vs {other[:80]!r}")
    if ours[0].tokens != theirs[0].tokens:  # the peer's count is its non-empty SSE chunks, not its tokenizer's
        log(f"WARNING: token counts differ: ours {ours[0].tokens}, peer {theirs[0].tokens}")
    return {
        "ours_tokens_per_s": rounded(ours_tps, 1),
        "peer_tokens_per_s": rounded(peer_tps, 1),
        "ratio": rounded(ours_tps / peer_tps, 3),
        "ours_ttft_ms": rounded(ours_ttft, 3),
        "peer_ttft_ms": rounded(peer_ttft, 3),
        "ours_tokens": ours[0].tokens,
        "peer_tokens": theirs[0].tokens,
        "same_text": same_text,
        "peer": "llama_cpp.server (llama-cpp-python) + openai client, completions stream=True",
        "runs": settings.runs,
        "max_tokens": settings.max_tokens,
        "threads": settings.threads,
        **settings.model_info(),
    }
