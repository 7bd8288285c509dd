"""``billing``: tokens/s through SDK -> node with on-chain checkpoints ON vs. OFF.

Two in-process nodes over the same GGUF and settings: one paid (a ``BillingService`` with
``checkpoint_tokens=100`` on the embedded chain, serving one session job whose ``proofInterval`` is 100), one
free (no billing). A run is one SDK session with ``prompts`` answers in a row on one connection. The paid node
sends each checkpoint the moment it is due, while answers stream (``defer_while_streaming=False``; the node's
default would hold it back for a quiet moment): one when 200 tokens are unbilled (claiming all but the last
100, which stay back for the answer's tail) and one for the rest when an answer ends. That overlap of chain work
with streaming is what this measures. Every submission is timed; ``checkpoints_during_runs`` counts those that
started inside the paid side's timed windows (``checkpoint_tries_during_runs`` adds the tries the chain
refused, such as anvil's rate limit, which cost the node the same work). Runs alternate in ABBA order after warm-ups; before each run of
either side the paid node's billing must be quiet (nothing pending, less than one claim unbilled), so a
checkpoint never lands in the free side's run (one that does fails the benchmark).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from common import Sample, Settings, log, median, rounded
from fabstir.node.billing import BillingService
from fabstir.node.server import serve_node
from fabstir.sdk import FabstirSDK, PromptOptions, Timeouts
from paid import (
    DEPOSIT,
    HOST_PRICE,
    CheckpointLog,
    PaidMarket,
    chains,
    deploy_paid_market,
    host_billing,
    node_config,
    register,
    wait_billed,
)

CHECKPOINT_TOKENS = 100
"""A checkpoint every 100 tokens while an answer streams (the marketplace's smallest claim), and one at its end."""


async def run_billing(settings: Settings, prompts: int = 3) -> dict[str, object]:
    """Measure and return the ``billing`` JSON object: the embedded chain's keys, then anvil's (``anvil_``)."""
    embedded = await _run_on("embedded", settings, prompts)
    anvil = await _run_on("anvil", settings, prompts)
    shared = ("checkpoint_tokens", "prompts_per_run", "tokens_per_run", "runs", "max_tokens")
    return {
        **{k: v for k, v in embedded.items() if k not in shared},
        **{f"anvil_{k}": v for k, v in anvil.items() if k not in shared},
        **{k: embedded[k] for k in shared},
        **settings.model_info(),
    }


async def _run_on(backend: str, settings: Settings, prompts: int) -> dict[str, object]:
    log(f"billing on the {backend} chain")
    async with chains(backend) as (client_chain, host_chain):
        paid = await deploy_paid_market(client_chain, settings.model)
        with tempfile.TemporaryDirectory(prefix="fabstir-bench-billing-") as scratch:
            billing = host_billing(paid, Path(scratch) / "ledger.db", checkpoint_tokens=CHECKPOINT_TOKENS,
                                   host_chain=host_chain, defer_while_streaming=False)
            checkpoints = CheckpointLog(billing.host)
            config = node_config(settings)
            async with serve_node(config, billing=billing) as paid_node, serve_node(config) as free_node:
                await register(paid, paid_node.url)
                return await _measure(settings, backend, paid, billing, checkpoints, paid_node.url, free_node.url,
                                      prompts)


async def _measure(settings: Settings, backend: str, paid: PaidMarket, billing: BillingService,
                   checkpoints: CheckpointLog, paid_url: str, free_url: str, prompts: int) -> dict[str, object]:
    timeouts = Timeouts(connect=10.0, handshake=30.0, first_token=settings.run_timeout,
                        between_frames=settings.run_timeout)
    with_samples: list[Sample] = []
    without_samples: list[Sample] = []
    paid_windows: list[tuple[float, float]] = []
    free_windows: list[tuple[float, float]] = []
    async with FabstirSDK(chain=paid.chain, deployment=paid.market.deployment, account=paid.client,
                          timeouts=timeouts) as sdk:
        job = await sdk.sessions.create_session(paid.host.address, paid.model, DEPOSIT, HOST_PRICE,
                                                proof_interval=CHECKPOINT_TOKENS)

        async def paid_run(windows: list[tuple[float, float]]) -> Sample:
            await wait_billed(billing, job.job_id, settings.run_timeout)
            await asyncio.sleep(settings.settle)
            return await session_run(sdk, paid_url, settings, prompts, job.job_id, windows)

        async def free_run(windows: list[tuple[float, float]]) -> Sample:
            await wait_billed(billing, job.job_id, settings.run_timeout)
            await asyncio.sleep(settings.settle)
            return await session_run(sdk, free_url, settings, prompts, None, windows)

        for number in range(settings.warmup + settings.runs):
            measured = number >= settings.warmup
            on_windows = paid_windows if measured else []
            off_windows = free_windows if measured else []
            # ABBA order: which side goes first alternates
            if number % 2 == 0:
                on, off = await paid_run(on_windows), await free_run(off_windows)
            else:
                off, on = await free_run(off_windows), await paid_run(on_windows)
            if measured:
                with_samples.append(on)
                without_samples.append(off)
            label = f"run {number - settings.warmup + 1}/{settings.runs}" if measured else "warm-up"
            log(f"billing {backend} {label}: with checkpoints {on.tokens_per_s:.0f} tok/s, without "
                f"{off.tokens_per_s:.0f} tok/s ({on.tokens} tokens)")
        await wait_billed(billing, job.job_id, settings.run_timeout)
        events = await sdk.sessions.get_session_events(job.job_id)
        final = await sdk.sessions.get_session(job.job_id)
    proofs = [int(e.args["tokensClaimed"]) for e in events if e.name == "ProofSubmitted"]
    during_free = checkpoints.during(free_windows, refused_too=True)
    if during_free:
        raise RuntimeError(f"{during_free} checkpoint(s) of the paid node ran during the free side's runs")
    served = sum(s.tokens for s in with_samples) + _warmup_tokens(settings, with_samples)
    for on, off in zip(with_samples, without_samples):
        if on.tokens != off.tokens or on.text != off.text:
            raise RuntimeError(f"paid and free outputs differ ({on.tokens} vs {off.tokens} tokens)")
    with_tps = median([s.tokens_per_s for s in with_samples])
    without_tps = median([s.tokens_per_s for s in without_samples])
    return {
        "with_billing_tokens_per_s": rounded(with_tps, 1),
        "without_billing_tokens_per_s": rounded(without_tps, 1),
        "ratio": rounded(with_tps / without_tps, 3),
        "with_billing_ttft_ms": rounded(median([s.ttft_ms for s in with_samples]), 2),
        "without_billing_ttft_ms": rounded(median([s.ttft_ms for s in without_samples]), 2),
        "checkpoints_submitted": len(proofs),
        "checkpoints_during_runs": checkpoints.during(paid_windows),
        "checkpoint_tries_during_runs": checkpoints.during(paid_windows, refused_too=True),
        "tokens_billed": final.tokens_used,
        "tokens_served": served,
        "checkpoint_tokens": CHECKPOINT_TOKENS,
        "prompts_per_run": prompts,
        "tokens_per_run": with_samples[0].tokens,
        "runs": settings.runs,
        "max_tokens": settings.max_tokens,
    }


def _warmup_tokens(settings: Settings, samples: list[Sample]) -> int:
    """Warm-up runs served the same tokens as measured ones (greedy, same prompts)."""
    return settings.warmup * samples[0].tokens if samples else 0


async def session_run(sdk: FabstirSDK, url: str, settings: Settings, prompts: int, job_id: int | None,
                      windows: list[tuple[float, float]] | None = None) -> Sample:
    """One fresh session (connecting not timed) with ``prompts`` answers in a row.

    ``tokens_per_s`` is all completion tokens over the summed time from each ``send_prompt`` to its
    last token; ``ttft_ms`` is the first answer's. Each answer's timed window is appended to ``windows``.
    """
    session_id = f"bench-{uuid.uuid4().hex[:12]}"  # fresh server-side history; the paid job is job_id
    await sdk.inference.connect_to_session(session_id, url, job_id=job_id)
    tokens, busy, ttft, texts = 0, 0.0, 0.0, []
    try:
        options = PromptOptions(max_tokens=settings.max_tokens, temperature=0.0)
        for turn in range(prompts):
            stamps: list[float] = []
            started = time.perf_counter()
            result = await asyncio.wait_for(
                sdk.inference.send_prompt(settings.prompt, options, session_id=session_id,
                                          on_token=lambda _piece, into=stamps: into.append(time.perf_counter())),
                settings.run_timeout)
            if not stamps:
                raise RuntimeError("an answer produced no text")
            if turn == 0:
                ttft = (stamps[0] - started) * 1000.0
            busy += stamps[-1] - started
            if windows is not None:
                windows.append((started, stamps[-1]))
            tokens += result.completion_tokens
            texts.append(result.text)
    finally:
        await sdk.inference.close(session_id)
    return Sample(tokens, ttft, tokens / busy, "\x00".join(texts))
