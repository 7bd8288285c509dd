"""One chain seam: contracts are called only from ``fabstir.chain``, through wrappers the SDK and node share.

The wrappers run here on a real EVM (eth-tester): register, update and unregister a host, open a job paid in
an ERC-20 (approval included), and read it back the same way on the SDK's side and on the node's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from fabstir.chain import jobs, registry, tokens
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.deploy import DEFAULT_MIN_STAKE, STABLE_MIN_DEPOSIT, deploy_marketplace
from fabstir.chain.interface import PACKAGE_ROOT, client_interface
from fabstir.chain.records import JobStatus
from fabstir.errors import SessionError
from fabstir.node.host_chain import HostChain, JobRefusedError
from fabstir.sdk.client import FabstirSDK

REPO, FILE_A, FILE_B = "org/models", "a.gguf", "b.gguf"
MODEL_A, MODEL_B = model_id(REPO, FILE_A), model_id(REPO, FILE_B)
NATIVE_PRICE, STABLE_PRICE = 2_000_000, 10_000


def _outside_chain() -> list[Path]:
    chain_dir = PACKAGE_ROOT / "chain"
    return [path for path in PACKAGE_ROOT.rglob("*.py") if not path.is_relative_to(chain_dir)]


def test_no_contract_function_or_event_is_used_outside_the_chain_package() -> None:
    interface = client_interface(_outside_chain())
    uses = [f"{m.contract}.{m.name} at {', '.join(m.used_at)}" for m in interface.members]
    assert (uses, interface.unresolved, interface.dynamic) == ([], (), ())


def test_the_seam_check_sees_direct_and_aliased_uses(tmp_path: Path) -> None:
    source = tmp_path / "leak.py"
    source.write_text("def f(market):\n    market.marketplace.functions.sessionJobs(1)\n"
                      "    events = market.node_registry.events\n    events.StakeAdded().get_logs()\n",
                      encoding="utf-8")
    interface = client_interface([*_outside_chain(), source])
    assert {m.name for m in interface.members} == {"sessionJobs", "StakeAdded"}


@dataclasses.dataclass
class World:
    chain: Chain
    market: Marketplace
    owner: LocalAccount
    host: LocalAccount
    client: LocalAccount


@pytest.fixture
async def world() -> AsyncIterator[World]:
    chain = Chain.embedded(funded_accounts=3)
    owner, host, client = dev_account(0), dev_account(1), dev_account(2)
    try:
        deployment = await deploy_marketplace(chain, owner, models=[(REPO, FILE_A, b"\x0a" * 32),
                                                                    (REPO, FILE_B, b"\x0b" * 32)])
        market = Marketplace(chain, deployment)
        await tokens.mint(chain, owner, market.stake_token, host.address, DEFAULT_MIN_STAKE)
        await tokens.mint(chain, owner, market.stable_token, client.address, 10 * STABLE_MIN_DEPOSIT)
        yield World(chain, market, owner, host, client)
    finally:
        chain.close()


async def test_a_host_registers_updates_and_leaves(world: World) -> None:
    market, host = world.market, world.host
    start = int(world.chain.w3.eth.block_number) + 1
    stake = await registry.register_node(market, host, metadata='{"name":"h"}', api_url="http://127.0.0.1:9",
                                         models=[MODEL_A], min_price_native=NATIVE_PRICE,
                                         min_price_stable=STABLE_PRICE)
    assert stake == await registry.min_stake(market) == DEFAULT_MIN_STAKE
    assert await registry.active_nodes(market) == [host.address]
    assert await registry.nodes_for_model(market, MODEL_B) == []

    await registry.update_node(market, host, metadata='{"name":"h2"}', api_url="http://127.0.0.1:10",
                               models=[MODEL_A, MODEL_B], min_price_native=2 * NATIVE_PRICE,
                               min_price_stable=2 * STABLE_PRICE)
    await registry.set_model_pricing(market, host, MODEL_B, 3 * NATIVE_PRICE, 0)
    record = await registry.host_record(market, host.address.lower())
    assert (record.metadata_json, record.api_url, record.models, record.min_price_native, record.min_price_stable,
            record.stake, record.active) == ('{"name":"h2"}', "http://127.0.0.1:10", (MODEL_A, MODEL_B),
                                             2 * NATIVE_PRICE, 2 * STABLE_PRICE, stake, True)
    assert await registry.nodes_for_model(market, MODEL_B) == [host.address]
    assert await registry.model_pricing(market, host.address, MODEL_B) == 3 * NATIVE_PRICE
    assert await registry.model_pricing(market, host.address, MODEL_B, market.stable_token.address) == \
        await registry.node_pricing(market, host.address, market.stable_token.address) == 2 * STABLE_PRICE
    events = [e.name for e in await registry.registry_events(market, start)]
    assert events == ["NodeRegistered", "MetadataUpdated", "ApiUrlUpdated", "ModelsUpdated", "PricingUpdated",
                      "PricingUpdated", "ModelPricingUpdated"]

    assert (await registry.unregister_node(market, host)).stake == stake
    assert not await registry.is_active_node(market, host.address)
    assert (await registry.host_record(market, host.address)).stake == 0


async def test_the_sdk_and_the_node_read_a_job_through_one_wrapper(world: World) -> None:
    market, client = world.market, world.client
    await registry.register_node(market, world.host, metadata='{"name":"h"}', api_url="http://127.0.0.1:9",
                                 models=[MODEL_A], min_price_native=NATIVE_PRICE, min_price_stable=STABLE_PRICE)
    stable = market.stable_token.address
    job_id = await jobs.create_session_job(market, client, world.host.address, MODEL_A, deposit=STABLE_MIN_DEPOSIT,
                                           price_per_token=STABLE_PRICE, max_duration=600, proof_interval=100,
                                           token=stable)  # the approval is sent first
    job = await jobs.get_session_job(market, job_id)
    assert (job.depositor, job.payment_token, job.deposit, job.model_id, job.status) == (
        client.address, stable, STABLE_MIN_DEPOSIT, MODEL_A, JobStatus.ACTIVE)
    sdk = FabstirSDK(chain=world.chain, deployment=market.deployment, account=client)
    node = HostChain(market, world.host, MODEL_A)
    assert await sdk.sessions.get_session(job_id) == await node.get_job(job_id) == await node.verify_job(job_id) == job

    assert not (await jobs.get_session_job(market, job_id + 1)).exists
    with pytest.raises(SessionError):
        await sdk.sessions.get_session(job_id + 1)
    with pytest.raises(JobRefusedError) as info:
        await node.verify_job(job_id + 1)
    assert info.value.code == "JOB_NOT_FOUND"

    assert await jobs.fee_basis_points(market) == market.deployment.fee_basis_points
    assert await jobs.dispute_window(market) == market.deployment.dispute_window
    await jobs.complete_session_job(market, client, job_id)
    assert [e.name for e in await jobs.session_events(market, job_id)] == ["SessionJobCreated", "SessionCompleted"]
