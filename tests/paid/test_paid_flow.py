"""The whole paid flow on the embedded chain: register, discover, deposit, stream, checkpoint, settle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fabstir.chain.money import settle
from fabstir.chain.records import ZERO_ADDRESS, JobStatus
from fabstir.errors import ContractError, NodeError
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import earnings, unregister_host, withdraw_earnings
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register

PROMPT = PromptOptions(max_tokens=60, temperature=0.0)


def host_billing(world: PaidWorld, tmp_path: Path, **kwargs: object) -> BillingService:
    return BillingService(HostChain(world.market, world.host, world.model), tmp_path / "ledger.db",
                          checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False, **kwargs)  # type: ignore[arg-type]


async def wait_settled(billing: BillingService, job_id: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while job_id not in billing.settled:
            await asyncio.sleep(0.1)


async def test_full_paid_lifecycle_in_eth(world: PaidWorld, node_factory: NodeFactory, tmp_path: Path) -> None:
    billing = host_billing(world, tmp_path)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    fee = world.market.deployment.fee_basis_points
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PROMPT) as sdk:
        hosts = await sdk.registry.get_all_active_nodes()
        assert [h.address for h in hosts] == [world.host.address]
        assert hosts[0].metadata is not None and hosts[0].metadata.name == "test host"
        deposit = 10**15
        before = await world.chain.balance(world.client.address)
        job = await sdk.sessions.create_session(hosts[0].address, world.model, deposit, HOST_PRICE_NATIVE,
                                                max_duration=3600, proof_interval=100)
        assert job.deposit == deposit and job.status is JobStatus.ACTIVE and job.model_id == world.model
        await sdk.inference.connect_to_session(str(job.job_id), hosts[0].api_url, job_id=job.job_id)
        results = [await sdk.inference.send_prompt(f"turn {i}") for i in range(3)]
        served = sum(r.completion_tokens for r in results)
        assert served == 180
        assert sdk.billing.get_token_usage(job.job_id) == 180
        assert sdk.billing.get_session_cost(job.job_id) == 180 * HOST_PRICE_NATIVE // 1000
        await sdk.inference.close()
        await wait_settled(billing, job.job_id)
        final = await sdk.sessions.get_session(job.job_id)
        # 60 tokens per answer: the second answer brings 120 unbilled (>= 100) to a checkpoint; the last 60
        # (under the public contracts' 100-token minimum claim) are billed once the client has gone: on our
        # contracts billed == served
        assert final.status is JobStatus.COMPLETED and final.tokens_used == served == 180
        expected = settle(180, HOST_PRICE_NATIVE, fee, deposit)
        owed = await earnings(world.market, world.host.address)
        assert owed.native == expected.host_earnings
        treasury = await world.chain.call(world.market.marketplace.functions.accumulatedTreasuryNative())
        assert treasury == expected.treasury_fee
        assert expected.host_earnings + expected.treasury_fee + expected.refund == deposit
        after = await world.chain.balance(world.client.address)
        assert before - after >= expected.host_payment  # plus gas
        events = [e.name for e in await sdk.sessions.get_session_events(job.job_id)]
        assert events[0] == "SessionJobCreated" and events[-1] == "SessionCompleted"
        assert events.count("ProofSubmitted") >= 1
    assert await withdraw_earnings(world.market, world.host) == expected.host_earnings
    assert (await earnings(world.market, world.host.address)).native == 0
    assert (await unregister_host(world.market, world.host)).stake == 1000 * 10**18


async def test_paid_session_in_stable_token(world: PaidWorld, node_factory: NodeFactory, tmp_path: Path) -> None:
    billing = host_billing(world, tmp_path)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    usdc = world.market.stable_token.address
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PROMPT) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 2_000_000, 10_000,
                                                proof_interval=100, token=usdc)
        assert job.payment_token == usdc
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        served = sum([(await sdk.inference.send_prompt(f"q{i}")).completion_tokens for i in range(2)])
        completed = None
        # the node claims with the client's countersignature, which comes after each answer: the depositor
        # settling before that claim lands would pay only what was claimed (as on the public contracts)
        async with asyncio.timeout(60):
            while (await sdk.sessions.get_session(job.job_id)).tokens_used < served:
                await asyncio.sleep(0.05)
        # the depositor may settle at any time
        completed = await sdk.sessions.complete_session(job.job_id)
    assert completed.status is JobStatus.COMPLETED and completed.tokens_used == served == 120
    owed = await earnings(world.market, world.host.address)
    assert owed.stable == settle(120, 10_000, 1000, 2_000_000).host_earnings


async def test_node_refuses_unknown_foreign_and_missing_jobs(world: PaidWorld, node_factory: NodeFactory,
                                                             tmp_path: Path) -> None:
    node = await node_factory(billing=host_billing(world, tmp_path))
    await register(world, node.url)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        with pytest.raises(NodeError) as missing:
            await sdk.inference.connect_to_session("999", node.url, job_id=999)
        assert missing.value.code == "JOB_NOT_FOUND"
        with pytest.raises(NodeError) as anonymous:
            await sdk.inference.connect_to_session("not-a-job", node.url)
        assert anonymous.value.code == "JOB_REQUIRED"
        # a job for another host: the stranger registers too and the client pays the stranger
        await world.chain.transact(world.owner, world.market.stake_token.functions.mint(world.stranger.address,
                                                                                         10**21))
        from fabstir.node.registration import register_host
        await register_host(world.market, world.stranger, metadata='{"name":"other"}', api_url="http://127.0.0.1:9",
                            models=[world.model], min_price_native=1, min_price_stable=1)
        foreign = await sdk.sessions.create_session(world.stranger.address, world.model, 10**15, HOST_PRICE_NATIVE)
        with pytest.raises(NodeError) as wrong:
            await sdk.inference.connect_to_session(str(foreign.job_id), node.url, job_id=foreign.job_id)
        assert wrong.value.code == "WRONG_HOST"
        settled = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)
        await sdk.sessions.complete_session(settled.job_id)
        with pytest.raises(NodeError) as done:
            await sdk.inference.connect_to_session(str(settled.job_id), node.url, job_id=settled.job_id)
        assert done.value.code == "JOB_NOT_ACTIVE"


async def test_price_below_host_minimum_is_refused(world: PaidWorld, node_factory: NodeFactory) -> None:
    node = await node_factory()
    await register(world, node.url)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        with pytest.raises(ContractError) as info:
            await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE - 1)
        assert info.value.reason == "Price below host minimum for model"
        assert await sdk.registry.get_node_pricing(world.host.address) == HOST_PRICE_NATIVE
        assert await sdk.registry.get_node_stake(world.host.address) == 1000 * 10**18
        assert ZERO_ADDRESS.startswith("0x")
