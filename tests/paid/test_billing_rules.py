"""Billing rules on the embedded chain: deposit limits, exactly-once checkpoints, restarts, bad metadata,
served tokens persisted as they stream, and what the chain charges (the SDK and the demo's receipt)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from fabstir.chain.money import EXACT_RULES, PUBLIC_RULES, ClaimRules
from fabstir.chain.records import JobStatus, SessionJob
from fabstir.cli.main import main
from fabstir.errors import NodeError
from fabstir.node.billing import FLUSH_TOKENS, BillingService
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import register_host
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.sdk.billing import BillingTracker, billable_tokens
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register


def service(world: PaidWorld, ledger: Path, rules: ClaimRules | None = None, **kwargs: object) -> BillingService:
    """A billing service on our marketplace (exact rules, detected), or under ``rules`` (the public ones)."""
    return BillingService(HostChain(world.market, world.host, world.model, rules=rules), ledger,
                          checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False,
                          **kwargs)  # type: ignore[arg-type]


async def test_deposit_limits_what_is_served(world: PaidWorld, node_factory: NodeFactory, tmp_path: Path) -> None:
    billing = service(world, tmp_path / "l.db", complete_sessions=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    price = 10**15  # deposit 1.5e14 wei covers exactly 150 tokens
    await world.chain.transact(world.host, world.market.node_registry.functions.updatePricingNative(price))
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=100, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 15 * 10**13, price)
        assert job.max_tokens == 150
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        first = await sdk.inference.send_prompt("one")
        second = await sdk.inference.send_prompt("two")
        assert (first.completion_tokens, second.completion_tokens) == (100, 50)
        with pytest.raises(NodeError) as info:
            await sdk.inference.send_prompt("three")
        assert info.value.code == "DEPOSIT_EXHAUSTED"
    # the client left: on our contracts a remainder under the public 100-token minimum is billed too
    await until(lambda: submitted(billing, job.job_id) == 150)
    assert (await HostChain(world.market, world.host, world.model).get_job(job.job_id)).tokens_used == 150


async def test_checkpoint_after_lost_receipt_is_not_sent_twice(world: PaidWorld, tmp_path: Path) -> None:
    """The node wrote a pending checkpoint, the transaction landed, the receipt was lost (crash)."""
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)
    ledger = tmp_path / "ledger.db"
    first = service(world, ledger)
    entry = first.open_job(job.job_id, job.max_tokens, job.proof_interval)
    entry.generated = 250
    proof = first.host.proof_hash(job.job_id, 250)
    entry.pending_tokens, entry.pending_hash = 250, proof.hex()
    first._save(entry)
    await first.host.submit_checkpoint(job.job_id, 250, proof)  # landed; the process died before recording it
    await first.aclose()
    restarted = service(world, ledger)  # a new process over the same ledger
    await restarted.start()
    try:
        async with asyncio.timeout(30):
            while job.job_id not in restarted.settled:
                await asyncio.sleep(0.1)
    finally:
        await restarted.aclose()
    final = await HostChain(world.market, world.host, world.model).get_job(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == 250, "billed exactly once"
    count = await world.chain.call(world.market.marketplace.functions.getProofCount(job.job_id))
    assert count == 1


async def test_malformed_metadata_is_reported_per_host(world: PaidWorld) -> None:
    await register(world, "http://127.0.0.1:1")
    await world.chain.transact(world.owner, world.market.stake_token.functions.mint(world.stranger.address, 10**21))
    await register_host(world.market, world.stranger, metadata="{not json", api_url="http://127.0.0.1:2",
                        models=[world.model], min_price_native=1, min_price_stable=1)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment) as sdk:
        hosts = {h.address: h for h in await sdk.registry.get_all_active_nodes()}
        assert hosts[world.host.address].metadata is not None and hosts[world.host.address].metadata_error is None
        bad = hosts[world.stranger.address]
        assert bad.metadata is None and bad.metadata_error is not None and "not JSON" in bad.metadata_error
        assert len(await sdk.registry.get_nodes_for_model(world.model)) == 2
        await world.chain.transact(world.stranger, world.market.node_registry.functions.setNodeActive(False))
        assert not await sdk.registry.is_node_active(world.stranger.address)
        assert [h.address for h in await sdk.registry.get_all_active_nodes()] == [world.host.address]
        names = [e.name for e in await sdk.registry.get_registry_events()]
        assert names.count("NodeRegistered") == 2 and "NodeActiveChanged" in names


async def test_long_answers_are_checkpointed_while_they_stream(world: PaidWorld, node_factory: NodeFactory,
                                                                tmp_path: Path) -> None:
    billing = service(world, tmp_path / "l.db", complete_sessions=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=300, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        count = 0

        async def watch(_: str) -> None:
            nonlocal count
            count += 1
            if count == 250:  # the node counts each piece it serves, and checkpoints without waiting for the end
                await until(lambda: served(billing, job.job_id) >= 250 and submitted(billing, job.job_id) >= 100)

        result = await sdk.inference.send_prompt("a long one", on_token=watch)
        assert result.completion_tokens == 300
        await billing.wait_idle(30)
        assert (await sdk.sessions.get_session(job.job_id)).tokens_used == 300


def served(billing: BillingService, job_id: int) -> int:
    entry = billing.entry(job_id)
    return entry.generated if entry else -1


def submitted(billing: BillingService, job_id: int) -> int:
    entry = billing.entry(job_id)
    return entry.submitted if entry else -1


async def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Wait for ``condition`` (checked every 20 ms), failing after a generous ``timeout``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def on_disk(ledger: Path, job_id: int) -> tuple[int, int]:
    """(generated, flush) as the ledger file holds them: what a restarted node would read."""
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        row = db.execute("SELECT generated, flush FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (-1, -1)


async def test_served_tokens_reach_the_ledger_every_32_tokens_or_250_ms(world: PaidWorld, tmp_path: Path) -> None:
    """Per piece in memory; on disk after ``flush_tokens`` tokens, or ``flush_seconds`` with no further piece."""
    ledger = tmp_path / "l.db"
    billing = service(world, ledger, flush_seconds=3600.0)  # the count bound alone first
    try:
        billing.open_job(7, 10_000, 100)
        billing.open_job(8, 10_000, 100)
        for _ in range(FLUSH_TOKENS - 1):
            billing.record_served(7, 1)
        billing.record_served(8, 5)
        assert billing.entry(7).generated == FLUSH_TOKENS - 1  # type: ignore[union-attr]
        assert on_disk(ledger, 7) == (0, 0), "held in memory below the count bound"
        billing.record_served(7, 1)
        assert on_disk(ledger, 7) == (FLUSH_TOKENS, 0) and on_disk(ledger, 8) == (5, 0), "one flush writes all"
        billing.flush_seconds = 0.25  # now the time bound, with no piece after this one
        billing.record_served(7, 3)
        await until(lambda: on_disk(ledger, 7)[0] == FLUSH_TOKENS + 3)
        billing.record_served(7, 2)
        billing.end_response(7)  # the answer ended: on disk at once, marked for billing
        assert on_disk(ledger, 7) == (FLUSH_TOKENS + 5, 1)
        billing.add_tokens(8, 10)  # the one-shot form still persists at once
        assert on_disk(ledger, 8) == (15, 1)
    finally:
        await billing.aclose()


async def test_a_checkpoint_mid_answer_keeps_the_tail_billable(world: PaidWorld, tmp_path: Path) -> None:
    """Public rules: no claim may be under 100 tokens: mid-answer, 100 are kept back so that the answer's end is
    billed too."""
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)
    billing = service(world, tmp_path / "t.db", PUBLIC_RULES, complete_sessions=False)
    await billing.start()
    try:
        billing.open_job(job.job_id, job.max_tokens, job.proof_interval)
        for _ in range(150):
            billing.record_served(job.job_id, 1)
        await billing.wait_idle(30)
        assert submitted(billing, job.job_id) == 0, "150 unbilled: a claim now would leave 50, under the minimum"
        for _ in range(100):
            billing.record_served(job.job_id, 1)
        await billing.wait_idle(30)
        assert submitted(billing, job.job_id) == 150, "250 unbilled: claim 150, keep 100 back"
        for _ in range(10):
            billing.record_served(job.job_id, 1)
        billing.end_response(job.job_id)
        await billing.wait_idle(30)
        assert submitted(billing, job.job_id) == 260, "the answer's last 110 tokens in one claim"
    finally:
        await billing.aclose()
    assert (await HostChain(world.market, world.host, world.model).get_job(job.job_id)).tokens_used == 260


async def test_exact_rules_bill_every_token_served(world: PaidWorld, tmp_path: Path) -> None:
    """Ours: no first claim is padded, and the last remainder (under the public 100-token minimum) is claimed once
    the client has gone: billed == served."""
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)
    billing = service(world, tmp_path / "x.db")
    await billing.start()
    try:
        billing.open_job(job.job_id, job.max_tokens, job.proof_interval)
        for _ in range(250):
            billing.record_served(job.job_id, 1)
        await billing.wait_idle(30)
        assert billing.rules == EXACT_RULES and submitted(billing, job.job_id) == 150, "mid-answer: 100 kept back"
        for _ in range(37):
            billing.record_served(job.job_id, 1)
        billing.end_response(job.job_id)
        await billing.wait_idle(30)
        assert submitted(billing, job.job_id) == 287, "the answer's end with its tail"
        billing.add_tokens(job.job_id, 42)
        await billing.wait_idle(30)
        assert submitted(billing, job.job_id) == 287, "42 wait for more while the client stays"
        billing.connection_closed(job.job_id)
        async with asyncio.timeout(60):
            while job.job_id not in billing.settled:
                await asyncio.sleep(0.05)
    finally:
        await billing.aclose()
    final = await HostChain(world.market, world.host, world.model).get_job(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == 329


async def test_public_rules_charge_the_minimum(world: PaidWorld, tmp_path: Path) -> None:
    """Public rules (kept for the public contracts): 39 tokens served, the first claim pads to the session's
    proof interval."""
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE,
                                                proof_interval=120)
    billing = service(world, tmp_path / "p.db", PUBLIC_RULES, complete_sessions=False)
    await billing.start()
    try:
        billing.open_job(job.job_id, job.max_tokens, job.proof_interval)
        billing.add_tokens(job.job_id, 39)
        await billing.wait_idle(30)
        assert submitted(billing, job.job_id) == 0
        billing.connection_closed(job.job_id)
        await until(lambda: submitted(billing, job.job_id) == 120)
    finally:
        await billing.aclose()


def test_session_cost_is_what_the_chain_charges() -> None:
    """Public rules: served is not billed: the first checkpoint claims the session's proof interval, the deposit
    caps all. Exact rules (ours): billed == served, the deposit caps all."""
    assert [billable_tokens(n, 100, 1000) for n in (0, 1, 39, 100, 250, 5000)] == [0, 100, 100, 100, 250, 1000]
    job = SessionJob(job_id=9, depositor="0x" + "11" * 20, host="0x" + "22" * 20, payment_token=None,
                     deposit=10**15, price_per_token=HOST_PRICE_NATIVE, tokens_used=0, max_duration=60, start_time=0,
                     last_proof_time=0, proof_interval=100, status=JobStatus.ACTIVE, model_id=None,
                     last_proof_hash=b"\0" * 32)
    tracker = BillingTracker()
    tracker.track_session(job)
    assert tracker.get_session_cost(9) == 0 and tracker.get_cost_breakdown(9).explanation is None
    tracker._ledger(9).completion_tokens = 39  # three short answers (as the demo streams)
    cost = tracker.get_cost_breakdown(9)
    assert (cost.served_tokens, cost.billed_tokens) == (39, 100)
    assert tracker.get_session_cost(9) == cost.cost == 100 * HOST_PRICE_NATIVE // 1000
    assert cost.served_cost == 39 * HOST_PRICE_NATIVE // 1000
    assert cost.explanation == "minimum charge of 100 tokens per session"
    assert tracker.get_usage_stats(9).billed_tokens == 100 and tracker.get_billed_tokens(9) == 100
    tracker._ledger(9).completion_tokens = 180
    assert tracker.get_session_cost(9) == 180 * HOST_PRICE_NATIVE // 1000
    exact = BillingTracker()
    exact.track_session(job, EXACT_RULES)
    exact._ledger(9).completion_tokens = 39
    cost = exact.get_cost_breakdown(9)
    assert (cost.served_tokens, cost.billed_tokens, cost.minimum_charge, cost.explanation) == (39, 39, 0, None)
    assert exact.get_session_cost(9) == 39 * HOST_PRICE_NATIVE // 1000


def test_demo_receipt_shows_served_and_billed(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", str(tiny_model), "--max-tokens", "13", "--temperature", "0", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    # our contracts bill exactly what was served (the public ones would charge a 100-token minimum here)
    assert summary["tokens_served"] == summary["completion_tokens"] == summary["tokens_billed"] == 39
    assert summary["billing_rules"] == "exact" and summary["minimum_charge_tokens"] == 0
    assert summary["tokens_countersigned"] == 39  # the client's countersignature covers every token billed
    assert summary["billing_note"] is None
    charged = summary["host_earnings"] + summary["treasury_fee"]
    assert charged == summary["sdk_session_cost"] == 39 * summary["price_per_token"] // 1000
    assert charged + summary["refund"] == summary["deposit"]
    assert "tokens served      39\n" in out
    assert "tokens billed      39 (as served)" in out
    assert "countersigned      39 (by the client, as it streamed)" in out


async def test_checkpoints_wait_for_a_quiet_moment(world: PaidWorld, tmp_path: Path) -> None:
    """The deferral policy, with the engines' idle time injected (busy, then quiet)."""
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)
    idle = [0.0]
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "q.db",
                             checkpoint_tokens=100, retry_delay=0.2, complete_sessions=False,
                             quiet_for=lambda: idle[0], quiet_seconds=0.25, max_defer=30)
    await billing.start()
    try:
        billing.open_job(job.job_id, job.max_tokens, job.proof_interval)
        billing.add_tokens(job.job_id, 150)  # an answer ended while another is streaming
        await asyncio.sleep(0.6)
        assert billing.entry(job.job_id).submitted == 0, "held back while the engines stream"  # type: ignore[union-attr]
        billing.add_tokens(job.job_id, 60)
        idle[0] = 1.0  # the engines went quiet
        await billing.wait_idle(30)
        assert billing.entry(job.job_id).submitted == 210  # type: ignore[union-attr]
        billing.add_tokens(job.job_id, 250)  # 2 x checkpoint_tokens unbilled: no more waiting, even if busy
        idle[0] = 0.0
        await billing.wait_idle(30)
        assert billing.entry(job.job_id).submitted == 460  # type: ignore[union-attr]
    finally:
        await billing.aclose()
