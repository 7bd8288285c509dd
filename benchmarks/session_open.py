"""``session_open``: time from ``sdk.sessions.create_session`` to the first token of the first answer.

What a client waits for when it opens a paid session: the deposit transaction and its receipt,
reading the job back, the WebSocket connect and ``session_init`` (the paid node checks the job on
chain), then the prompt until its first token. Measured on the embedded chain (py-evm in this
process, shared by client and node) and on anvil (a real JSON-RPC chain in its own process, the
client and the node each with their own connection, as in production). A fresh session job per run;
the sessions stay open until the end, so no settlement runs behind a measurement.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from common import Settings, log, median, rounded
from fabstir.chain.backend import Chain
from fabstir.node.server import serve_node
from fabstir.sdk import FabstirSDK, PromptOptions, Timeouts
from paid import DEPOSIT, HOST_PRICE, PaidMarket, chains, deploy_paid_market, host_billing, node_config, register

FIRST_ANSWER_TOKENS = 16


async def run_session_open(settings: Settings) -> dict[str, object]:
    """Measure and return the ``session_open`` JSON object."""
    results: dict[str, object] = {}
    for backend in ("embedded", "anvil"):
        async with chains(backend) as (client_chain, host_chain):
            timings = await _measure(settings, backend, client_chain, host_chain)
        for key, values in timings.items():
            results[f"{backend}_{key}"] = rounded(median(values), 2)
    return {**results, "runs": settings.runs, "first_answer_tokens": FIRST_ANSWER_TOKENS, **settings.model_info()}


async def _measure(settings: Settings, backend: str, client_chain: Chain,
                   host_chain: Chain) -> dict[str, list[float]]:
    paid: PaidMarket = await deploy_paid_market(client_chain, settings.model)
    timings: dict[str, list[float]] = {"ms": [], "create_ms": [], "connect_ms": [], "ttft_ms": []}
    timeouts = Timeouts(connect=10.0, handshake=30.0, first_token=settings.run_timeout,
                        between_frames=settings.run_timeout)
    options = PromptOptions(max_tokens=FIRST_ANSWER_TOKENS, temperature=0.0)
    with tempfile.TemporaryDirectory(prefix="fabstir-bench-open-") as scratch:
        billing = host_billing(paid, Path(scratch) / "ledger.db", checkpoint_tokens=1000, host_chain=host_chain)
        async with serve_node(node_config(settings), billing=billing) as node:
            await register(paid, node.url)
            async with FabstirSDK(chain=client_chain, deployment=paid.market.deployment, account=paid.client,
                                  timeouts=timeouts) as sdk:
                for number in range(settings.warmup + settings.runs):
                    await asyncio.sleep(settings.settle)
                    first: list[float] = []
                    started = time.perf_counter()
                    job = await sdk.sessions.create_session(paid.host.address, paid.model, DEPOSIT, HOST_PRICE)
                    created = time.perf_counter()
                    session_id = f"open-{uuid.uuid4().hex[:12]}"
                    await sdk.inference.connect_to_session(session_id, node.url, job_id=job.job_id)
                    connected = time.perf_counter()
                    await asyncio.wait_for(
                        sdk.inference.send_prompt(settings.prompt, options, session_id=session_id,
                                                  on_token=lambda _p, into=first: into.append(time.perf_counter())),
                        settings.run_timeout)
                    if not first:
                        raise RuntimeError("the first answer produced no text")
                    total_ms = (first[0] - started) * 1000.0
                    if number >= settings.warmup:
                        timings["ms"].append(total_ms)
                        timings["create_ms"].append((created - started) * 1000.0)
                        timings["connect_ms"].append((connected - created) * 1000.0)
                        timings["ttft_ms"].append((first[0] - connected) * 1000.0)
                    label = f"run {number - settings.warmup + 1}/{settings.runs}" if number >= settings.warmup \
                        else "warm-up"
                    log(f"session_open {backend} {label}: {total_ms:.1f} ms (create {(created - started) * 1e3:.1f},"
                        f" connect {(connected - created) * 1e3:.1f}, first token {(first[0] - connected) * 1e3:.1f})")
    return timings
