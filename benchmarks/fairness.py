"""``fairness``: a victim's time to first token alone, and behind a hog of 10 queued long answers.

The node runs in this process (``serve_node``) with one engine (``--parallel 1``), so every answer
queues for it, and with the per-client cap off, so the hog really has 10 answers queued. The hog
opens 10 WebSocket connections from 127.0.0.2 and sends a long answer (``--max-tokens``) on each;
once its first answer streams, the victim sends a short answer (8 tokens) from 127.0.0.3. Clients
are told apart by address, so the node's fair queue serves the victim next. ``fifo_ttft_ms`` is the
same victim sent from the hog's own address, where it queues behind all of the hog's answers (first
come, first served, as every client was served before the fair queue). Runs alternate (alone,
behind the hog, fifo); medians of ``RUNS`` each are reported. ``turn_ms`` is one hog answer alone
(send to ``stream_end``): the waits are also given in these engine turns.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from common import Settings, log, median, rounded
from fabstir.node.config import NodeConfig
from fabstir.node.server import serve_node

RUNS = 5
HOG_ANSWERS = 10
HOG_ADDRESS = "127.0.0.2"
VICTIM_ADDRESS = "127.0.0.3"
VICTIM_TOKENS = 8


async def _open(url: str, address: str) -> ClientConnection:
    ws = await connect(url, local_addr=(address, 0), max_size=None)
    await ws.recv()  # connected
    await ws.send(json.dumps({"type": "session_init", "session_id": f"fair-{uuid.uuid4().hex[:10]}"}))
    await ws.recv()  # session_init_ack
    return ws


async def _ask(ws: ClientConnection, text: str, max_tokens: int) -> None:
    request = {"model": "", "prompt": text, "max_tokens": max_tokens, "temperature": 0.0}
    await ws.send(json.dumps({"type": "prompt", "id": uuid.uuid4().hex, "prompt": text, "request": request}))


async def _first_text_and_end(ws: ClientConnection, streaming: asyncio.Event | None = None) -> tuple[float, float]:
    """Arrival times of the first non-empty text (``streaming`` is set then) and of ``stream_end``."""
    first = 0.0
    while True:
        message: dict[str, Any] = json.loads(await ws.recv())
        if message["type"] == "stream_chunk" and message.get("content") and not first:
            first = time.perf_counter()
            if streaming is not None:
                streaming.set()
        elif message["type"] == "error":
            raise RuntimeError(f"node refused a prompt: {message}")
        elif message["type"] == "stream_end":
            return first, time.perf_counter()


async def _answer(url: str, address: str, settings: Settings, max_tokens: int) -> tuple[float, float]:
    """One answer on a fresh connection: (TTFT, time to ``stream_end``) in ms."""
    ws = await _open(url, address)
    try:
        started = time.perf_counter()
        await _ask(ws, settings.prompt, max_tokens)
        first, end = await asyncio.wait_for(_first_text_and_end(ws), settings.run_timeout)
        return (first - started) * 1000.0, (end - started) * 1000.0
    finally:
        await ws.close()


async def _victim_ttft(url: str, address: str, settings: Settings) -> float:
    return (await _answer(url, address, settings, VICTIM_TOKENS))[0]


async def _behind_hog(url: str, victim_address: str, settings: Settings) -> float:
    """The victim's TTFT (ms) with ``HOG_ANSWERS`` long answers of the hog queued ahead of it."""
    hogs = [await _open(url, HOG_ADDRESS) for _ in range(HOG_ANSWERS)]
    try:
        for ws in hogs:
            await _ask(ws, settings.prompt, settings.max_tokens)
        streaming = asyncio.Event()
        answers = [asyncio.ensure_future(_first_text_and_end(ws, streaming)) for ws in hogs]
        await asyncio.wait_for(streaming.wait(), settings.run_timeout)  # the hog's first answer is generating
        ttft = await _victim_ttft(url, victim_address, settings)
        await asyncio.wait_for(asyncio.gather(*answers), settings.run_timeout * HOG_ANSWERS)
        return ttft
    finally:
        await asyncio.gather(*(ws.close() for ws in hogs), return_exceptions=True)


async def run_fairness(settings: Settings) -> dict[str, object]:
    """Measure and return the ``fairness`` JSON object."""
    config = NodeConfig(port=0, model_path=str(settings.model), template=settings.template,
                        context_window=settings.context_window, parallel=1, threads=settings.threads,
                        repeat_penalty=1.0, max_concurrent_per_client=0, rate_limit_per_minute=0,
                        session_rate_limit_per_minute=0)
    alone: list[float] = []
    fair: list[float] = []
    fifo: list[float] = []
    turns: list[float] = []
    async with serve_node(config) as node:
        for _ in range(settings.warmup):
            await _victim_ttft(node.ws_url, VICTIM_ADDRESS, settings)
        for run in range(RUNS):
            alone.append(await _victim_ttft(node.ws_url, VICTIM_ADDRESS, settings))
            turns.append((await _answer(node.ws_url, HOG_ADDRESS, settings, settings.max_tokens))[1])
            fair.append(await _behind_hog(node.ws_url, VICTIM_ADDRESS, settings))
            fifo.append(await _behind_hog(node.ws_url, HOG_ADDRESS, settings))
            log(f"fairness run {run + 1}: alone {alone[-1]:.1f} ms, behind hog {fair[-1]:.1f} ms, "
                f"fifo {fifo[-1]:.1f} ms")
    alone_ms, fair_ms, fifo_ms, turn_ms = median(alone), median(fair), median(fifo), median(turns)
    return {
        "victim_alone_ttft_ms": rounded(alone_ms, 1),
        "victim_behind_hog_ttft_ms": rounded(fair_ms, 1),
        "ratio": rounded(fair_ms / alone_ms, 2),
        "fifo_ttft_ms": rounded(fifo_ms, 1),
        "fifo_ratio": rounded(fifo_ms / alone_ms, 2),
        "turn_ms": rounded(turn_ms, 1),
        "behind_hog_turns": rounded((fair_ms - alone_ms) / turn_ms, 2),
        "fifo_turns": rounded((fifo_ms - alone_ms) / turn_ms, 2),
        "hog_answers": HOG_ANSWERS,
        "hog_max_tokens": settings.max_tokens,
        "victim_max_tokens": VICTIM_TOKENS,
        "runs": RUNS,
        "parallel": 1,
        "threads": settings.threads,
        **settings.model_info(),
    }
