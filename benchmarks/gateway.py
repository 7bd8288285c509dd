"""``gateway``: the official ``openai`` client -> ``fabstir gateway`` -> node, against the SDK -> the same node.

What is measured, on one ``fabstir node serve`` subprocess (127.0.0.1, stories260K, greedy, repeat penalty 1.0)
and one gateway served **in the benchmark's process** (``serve_gateway(Gateway(sdk))`` over uvicorn on
127.0.0.1, the node as its only host, an API key required):

1. Side by side, in ABBA order after warm-ups (direct, gateway, gateway, direct, ...; 50 ms of quiet before
   each run), the same prompt with the same ``max_tokens`` (256):

   - **direct**: ``FabstirSDK`` opens a fresh session on the node (``connect_to_session``: WebSocket +
     ``session_init``), sends the prompt (``send_prompt``, ``temperature=0``) and streams the answer through
     ``on_token``; the session is closed after the last token (not timed).
   - **gateway**: ``openai.AsyncOpenAI(base_url=gateway).chat.completions.create(stream=True,
     stream_options={"include_usage": True}, temperature=0)`` with the prompt as the only (user) message, read
     chunk by chunk. The gateway opens a fresh session on the node for it (a one-message request is a new
     conversation), streams the pieces back as ``chat.completion.chunk`` events, and keeps the session for the
     conversation to continue.

   Both clocks start when the client starts its work for the answer (``connect_to_session`` / ``create``), so
   both sides include opening a session on the node; ``ttft_ms`` ends at the first non-empty text,
   ``tokens_per_s`` = completion tokens / time to the last text. The direct side's figures from
   ``send_prompt`` on (a session already open: what ``overhead`` measures) are reported too (``direct_send_*``).
   Both sides must produce the same text and token count.

2. ``--gateway-streams`` (50) concurrent streaming clients, each its own ``AsyncOpenAI`` (its own connection
   pool), each asking for ``--gateway-max-tokens`` (16) tokens on a conversation of its own (the prompt
   followed by the round and stream number); all start together, a round ends when every
   stream has ended, one warm-up round, then ``--gateway-rounds`` measured rounds.
   ``rps_50_streams`` = answers completed in the measured rounds / their summed wall time. Any exception, or a
   stream that ends without a finish reason, counts in ``errors`` (reported, never retried: the clients run
   with ``max_retries=0`` and the gateway's SDK with ``RetryPolicy(attempts=0)``, so a node refusing
   ``RATE_LIMITED`` / ``TOO_MANY_REQUESTS`` reaches a client as a 429 instead of being waited out).

All those clients come through the gateway from one address, 127.0.0.1. The node is started with the limits
that concurrency needs, set explicitly and reported in ``node_settings``: answers in flight per address = the
number of streams; connections per address = streams + the conversations the gateway keeps open for affinity
(256) + 8; the per-address prompt rate limit off (a run sends several hundred prompts within a minute, more
than the default burst of 200). Everything else is the node's default.

Where the time goes: CPU time per token of the node and of the benchmark's process (``*_cpu_us_per_token``,
measured over the timed runs of each side: on the gateway side the benchmark's process runs the gateway, its
SDK and the openai client), text pieces per answer, and two micro-measurements in this process:
``sse_encode_us_per_chunk`` (the gateway building and encoding one ``chat.completion.chunk`` event) and
``openai_parse_us_per_chunk`` (the openai client reading one such event from an in-memory HTTP response:
httpx, its SSE decoder, ``json.loads``, the pydantic ``ChatCompletionChunk``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from common import (
    Sample,
    Settings,
    log,
    median,
    own_cpu_seconds,
    percentile,
    process_cpu_seconds,
    rounded,
    start_node,
    summarize,
    timed_prompt,
)
from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import StaticSource
from fabstir.gateway import Gateway, serve_gateway, wire
from fabstir.sdk import FabstirSDK, RetryPolicy, Timeouts

if TYPE_CHECKING:
    from openai import AsyncOpenAI

API_KEY = "sk-bench-gateway"
MODEL_NAME = "stories260K"
TARGET_RATIO = 0.95
TARGET_TTFT_ADDED_MS = 5.0
GATEWAY_CONVERSATIONS = 256
"""Conversations the gateway keeps open (its default ``max_conversations``): each holds a connection to the node."""


@dataclasses.dataclass(frozen=True)
class GatewayOptions:
    """Shape of the concurrent part."""

    streams: int = 50
    rounds: int = 10
    max_tokens: int = 16
    parallel: int = 2
    timeout: float = 120.0


def node_settings(options: GatewayOptions) -> dict[str, int]:
    """What the node must allow for ``options.streams`` clients behind one gateway (one address)."""
    return {
        "max_concurrent_per_client": options.streams,
        "max_connections_per_address": options.streams + GATEWAY_CONVERSATIONS + 8,
        "rate_limit_per_minute": 0,
    }


async def run_gateway(settings: Settings, options: GatewayOptions) -> dict[str, object]:
    """Measure and return the ``gateway`` JSON object."""
    from openai import AsyncOpenAI

    limits = node_settings(options)
    env = {f"FABSTIR_NODE_{name.upper()}": str(value) for name, value in limits.items()}
    node, url = await start_node(settings, parallel=options.parallel, threads=settings.threads, env=env)
    timeouts = Timeouts(connect=30.0, handshake=30.0, first_token=settings.run_timeout,
                        between_frames=settings.run_timeout)
    try:
        gateway_sdk = FabstirSDK(discovery_sources=[StaticSource([HostCandidate("bench-node", url)])],
                                 timeouts=timeouts, retry=RetryPolicy(attempts=0))
        gateway = Gateway(gateway_sdk, max_conversations=GATEWAY_CONVERSATIONS)
        async with serve_gateway(gateway, api_keys=[API_KEY]) as server, FabstirSDK(timeouts=timeouts) as sdk:
            log(f"gateway (in this process) at {server.base_url}, its host {url}")
            client = AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0,
                                 timeout=settings.run_timeout)
            try:
                side = await _side_by_side(settings, sdk, client, url, node.pid)
            finally:
                await client.close()
            node.check_alive()
            burst = await _burst(settings, options, server.base_url)
        node.check_alive()
    finally:
        node.close()
    micro = await _micro()
    return {
        **side,
        **burst,
        **micro,
        "node_settings": {"parallel": options.parallel, "threads": settings.threads, **limits,
                          "repeat_penalty": 1.0, "context_window": settings.context_window},
        "gateway": "in the benchmark's process (serve_gateway over uvicorn, 127.0.0.1); its SDK never retries a "
                   "refused prompt (RetryPolicy(attempts=0)), the openai clients run with max_retries=0",
        **settings.model_info(),
    }


# --- 1. side by side --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Direct:
    from_connect: Sample
    from_send: Sample
    connect_ms: float


async def _direct_run(sdk: FabstirSDK, url: str, settings: Settings) -> _Direct:
    """Fresh session (timed: it is part of answering a new conversation), the prompt, every token's arrival."""
    session_id = f"bench-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    await sdk.inference.connect_to_session(session_id, url)
    connected = time.perf_counter()
    try:
        sent = await timed_prompt(sdk, session_id, settings)
    finally:
        await sdk.inference.close(session_id)
    whole = Sample.from_stamps(started, sent.stamps, sent.tokens, sent.text)
    return _Direct(whole, sent, (connected - started) * 1000.0)


async def _gateway_run(client: AsyncOpenAI, settings: Settings, max_tokens: int, prompt: str | None = None) -> Sample:
    """One streamed chat completion of ``prompt`` (default: the benchmark's) through the gateway; tokens from the
    usage chunk."""
    stamps: list[float] = []
    parts: list[str] = []
    finish: str | None = None
    tokens: int | None = None
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": prompt or settings.prompt}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                stamps.append(time.perf_counter())
                parts.append(choice.delta.content)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    if finish is None or tokens is None:
        raise RuntimeError(f"the gateway's stream ended without {'a finish_reason' if finish is None else 'usage'}")
    return Sample.from_stamps(started, stamps, tokens, "".join(parts))


async def _side_by_side(settings: Settings, sdk: FabstirSDK, client: AsyncOpenAI, url: str,
                        node_pid: int) -> dict[str, object]:
    directs: list[_Direct] = []
    through: list[Sample] = []
    cpu = {"direct": [0.0, 0.0], "gateway": [0.0, 0.0]}  # [this process, node]
    node_cpu_known = True

    async def timed(side: str, run: Any) -> Any:
        nonlocal node_cpu_known
        await asyncio.sleep(settings.settle)
        node_before, own_before = process_cpu_seconds(node_pid), own_cpu_seconds()
        result = await asyncio.wait_for(run(), settings.run_timeout)
        node_after, own_after = process_cpu_seconds(node_pid), own_cpu_seconds()
        if measured:
            cpu[side][0] += own_after - own_before
            if node_before is not None and node_after is not None:
                cpu[side][1] += node_after - node_before
            else:
                node_cpu_known = False
        return result

    for number in range(settings.warmup + settings.runs):
        measured = number >= settings.warmup
        # ABBA order: which side goes first alternates, so neither always follows the other
        if number % 2 == 0:
            direct = await timed("direct", lambda: _direct_run(sdk, url, settings))
        gateway = await timed("gateway", lambda: _gateway_run(client, settings, settings.max_tokens))
        if number % 2 == 1:
            direct = await timed("direct", lambda: _direct_run(sdk, url, settings))
        if direct.from_send.text != gateway.text or direct.from_send.tokens != gateway.tokens:
            raise RuntimeError(f"direct and gateway outputs differ ({direct.from_send.tokens} vs {gateway.tokens} "
                               f"tokens): {direct.from_send.text[:80]!r} vs {gateway.text[:80]!r}")
        if measured:
            directs.append(direct)
            through.append(gateway)
        label = f"run {number - settings.warmup + 1}/{settings.runs}" if measured else "warm-up"
        log(f"gateway {label}: direct {direct.from_connect.tokens_per_s:.0f} tok/s, ttft "
            f"{direct.from_connect.ttft_ms:.2f} ms (connect {direct.connect_ms:.2f}); gateway "
            f"{gateway.tokens_per_s:.0f} tok/s, ttft {gateway.ttft_ms:.2f} ms")
    direct_tps, direct_ttft = summarize([d.from_connect for d in directs])
    send_tps, send_ttft = summarize([d.from_send for d in directs])
    gateway_tps, gateway_ttft = summarize(through)
    direct_tokens = sum(d.from_send.tokens for d in directs)
    gateway_tokens = sum(s.tokens for s in through)
    ratio = gateway_tps / direct_tps

    def per_token(seconds: float, tokens: int) -> float | None:
        return rounded(seconds / tokens * 1e6, 1)

    return {
        "ratio": rounded(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "ttft_added_ms": rounded(gateway_ttft - direct_ttft, 3),
        "target_ttft_added_ms": TARGET_TTFT_ADDED_MS,
        "meets_ttft_target": gateway_ttft - direct_ttft <= TARGET_TTFT_ADDED_MS,
        "gateway_tokens_per_s": rounded(gateway_tps, 1),
        "direct_tokens_per_s": rounded(direct_tps, 1),
        "gateway_ttft_ms": rounded(gateway_ttft, 3),
        "direct_ttft_ms": rounded(direct_ttft, 3),
        "direct_connect_ms": rounded(median([d.connect_ms for d in directs]), 3),
        "direct_send_tokens_per_s": rounded(send_tps, 1),
        "direct_send_ttft_ms": rounded(send_ttft, 3),
        "ratio_vs_open_session": rounded(gateway_tps / send_tps, 3),
        "ttft_added_vs_open_session_ms": rounded(gateway_ttft - send_ttft, 3),
        "tokens": through[0].tokens,
        "direct_pieces_per_answer": rounded(median([len(d.from_send.stamps) for d in directs]), 1),
        "gateway_chunks_per_answer": rounded(median([len(s.stamps) for s in through]), 1),
        "direct_client_cpu_us_per_token": per_token(cpu["direct"][0], direct_tokens),
        "gateway_client_cpu_us_per_token": per_token(cpu["gateway"][0], gateway_tokens),
        "direct_node_cpu_us_per_token": per_token(cpu["direct"][1], direct_tokens) if node_cpu_known else None,
        "gateway_node_cpu_us_per_token": per_token(cpu["gateway"][1], gateway_tokens) if node_cpu_known else None,
        "runs": settings.runs,
        "max_tokens": settings.max_tokens,
        "threads": settings.threads,
    }


# --- 2. concurrent streams ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Outcome:
    seconds: float = 0.0
    ttft_ms: float | None = None
    tokens: int = 0
    error: str | None = None


async def _one_stream(client: AsyncOpenAI, settings: Settings, max_tokens: int, prompt: str) -> _Outcome:
    outcome = _Outcome()
    started = time.perf_counter()
    try:
        sample = await asyncio.wait_for(_gateway_run(client, settings, max_tokens, prompt), settings.run_timeout)
    except Exception as exc:  # every failure is counted, none retried
        outcome.error = f"{type(exc).__name__}: {exc}"
    else:
        outcome.ttft_ms, outcome.tokens = sample.ttft_ms, sample.tokens
    outcome.seconds = time.perf_counter() - started
    return outcome


async def _burst(settings: Settings, options: GatewayOptions, base_url: str) -> dict[str, object]:
    from openai import AsyncOpenAI

    clients = [AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=options.timeout)
               for _ in range(options.streams)]
    outcomes: list[_Outcome] = []
    walls: list[float] = []
    try:
        for number in range(1 + options.rounds):
            await asyncio.sleep(settings.settle)
            started = time.perf_counter()
            # every stream a conversation of its own (as many users'), so the gateway keeps each one's session
            got = await asyncio.gather(*(_one_stream(c, settings, options.max_tokens, f"{settings.prompt} {number}.{n}")
                                         for n, c in enumerate(clients)))
            wall = time.perf_counter() - started
            failed = [o for o in got if o.error is not None]
            label = "warm-up round" if number == 0 else f"round {number}/{options.rounds}"
            log(f"gateway {options.streams} streams, {label}: {wall:.3f} s, {len(got) / wall:.1f} answers/s, "
                f"{len(failed)} errors" + (f" (first: {failed[0].error})" if failed else ""))
            if number > 0:
                outcomes.extend(got)
                walls.append(wall)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
    done = [o for o in outcomes if o.error is None]
    errors = [o.error for o in outcomes if o.error is not None]
    wall = sum(walls)
    return {
        "rps_50_streams": rounded(len(done) / wall, 1),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "streams": options.streams,
        "rounds": options.rounds,
        "stream_max_tokens": options.max_tokens,
        "streams_completed": len(done),
        "streams_tokens_per_s": rounded(sum(o.tokens for o in done) / wall, 1),
        "streams_round_s": rounded(median(walls), 3),
        "streams_p50_latency_ms": rounded(percentile([o.seconds * 1000.0 for o in done], 50), 1),
        "streams_p99_latency_ms": rounded(percentile([o.seconds * 1000.0 for o in done], 99), 1),
        "streams_p50_ttft_ms": rounded(percentile([o.ttft_ms for o in done if o.ttft_ms is not None], 50), 1),
        "streams_p99_ttft_ms": rounded(percentile([o.ttft_ms for o in done if o.ttft_ms is not None], 99), 1),
    }


# --- where the time goes: two micro-measurements ---------------------------------------------------------


async def _micro(chunks: int = 4000) -> dict[str, object]:
    """Per ``chat.completion.chunk``: building + encoding it as the gateway does, and the openai client reading it."""
    completion_id, created = wire.new_completion_id(), int(time.time())

    def event(piece: str) -> str:  # what the gateway's SSE stream writes for one piece
        return f"data: {json.dumps(wire.chunk(completion_id, created, MODEL_NAME, content=piece), separators=(',', ':'))}\n\n"

    pieces = [f" word{n % 97}" for n in range(chunks)]
    started = time.perf_counter()
    events = [event(piece) for piece in pieces]
    encode_us = (time.perf_counter() - started) / chunks * 1e6
    body = ("".join(events) + "data: [DONE]\n\n").encode()

    async def stream_bytes() -> Any:
        for offset in range(0, len(body), 4096):
            yield body[offset:offset + 4096]

    from openai import AsyncOpenAI

    http_lib = _openai_http_library()

    def handler(request: Any) -> Any:
        return http_lib.Response(200, headers={"content-type": "text/event-stream"}, content=stream_bytes())

    async with http_lib.AsyncClient(transport=http_lib.MockTransport(handler)) as http:
        client = AsyncOpenAI(base_url="http://gateway.invalid/v1", api_key=API_KEY, http_client=http, max_retries=0)
        started = time.perf_counter()
        stream = await client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                                      stream=True)
        read = sum([1 async for chunk in stream if chunk.choices and chunk.choices[0].delta.content])
        parse_us = (time.perf_counter() - started) / chunks * 1e6
    if read != chunks:
        raise RuntimeError(f"the openai client read {read} of {chunks} chunks")
    return {"sse_encode_us_per_chunk": rounded(encode_us, 1), "openai_parse_us_per_chunk": rounded(parse_us, 1)}


def _openai_http_library() -> Any:
    """The HTTP library the installed openai client is built on (``httpx2`` from openai 3 on, ``httpx`` before)."""
    try:
        import httpx2
    except ImportError:
        return httpx
    return httpx2
