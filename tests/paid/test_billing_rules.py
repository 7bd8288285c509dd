"""Billing rules on the embedded chain: deposit limits, exactly-once checkpoints, restarts, bad metadata."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fabstir.chain.records import JobStatus
from fabstir.errors import NodeError
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import register_host
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register


def service(world: PaidWorld, ledger: Path, **kwargs: object) -> BillingService:
    return BillingService(HostChain(world.market, world.host, world.model), ledger, checkpoint_tokens=100,
                          retry_delay=0.2, defer_while_streaming=False, **kwargs)  # type: ignore[arg-type]


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
        await billing.wait_idle(30)
        # the last 50 tokens are below the marketplace's 100-token minimum claim: never billable
        assert (await sdk.sessions.get_session(job.job_id)).tokens_used == 100


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
    seen_mid_answer: list[int] = []
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=300, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        count = 0

        def watch(_: str) -> None:
            nonlocal count
            count += 1
            if count == 250:
                entry = billing.entry(job.job_id)
                seen_mid_answer.append(entry.generated if entry else -1)

        result = await sdk.inference.send_prompt("a long one", on_token=watch)
        assert result.completion_tokens == 300
        assert seen_mid_answer == [200], "the node reported 100-token steps to billing while streaming"
        await billing.wait_idle(30)
        assert (await sdk.sessions.get_session(job.job_id)).tokens_used == 300


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
