"""The paid lifecycle on a real JSON-RPC chain (anvil): the same code paths as a public network.

Register, discover, deposit, stream, checkpoint, settle and withdraw; a timeout settled by a third
party; reverts surfacing as ContractError; and a node restart that resumes a half-done checkpoint.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import fabstir.sdk.session
from fabstir.chain.money import settle
from fabstir.chain.records import JobStatus
from fabstir.errors import ContractError
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import earnings, unregister_host, withdraw_earnings
from fabstir.node.server import serve_node
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register

PROMPT = PromptOptions(max_tokens=60, temperature=0.0)
DEPOSIT = 10**15
INACTIVITY_TIMEOUT = 3600  # deploy_marketplace's default, used by build_world


def host_billing(world: PaidWorld, ledger: Path, host: HostChain | None = None, **kwargs: Any) -> BillingService:
    return BillingService(host or HostChain(world.market, world.host, world.model), ledger,
                          checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False, **kwargs)


def client_sdk(world: PaidWorld, account: Any = None) -> FabstirSDK:
    return FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=account or world.client,
                      default_options=PROMPT)


async def wait_settled(billing: BillingService, job_id: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while job_id not in billing.settled:
            await asyncio.sleep(0.1)


async def gas_paid(world: PaidWorld, address: str, first_block: int) -> int:
    """Wei that ``address`` paid for gas in the blocks from ``first_block`` on."""
    w3 = world.chain.w3

    def total() -> int:
        paid = 0
        for number in range(first_block, w3.eth.block_number + 1):
            for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
                if tx["from"] == address:  # type: ignore[index]
                    receipt = w3.eth.get_transaction_receipt(tx["hash"])  # type: ignore[index]
                    paid += receipt["gasUsed"] * receipt["effectiveGasPrice"]
        return paid

    return await world.chain.run(total)


async def until_billed(sdk: FabstirSDK, job_id: int, tokens: int, timeout: float = 60) -> None:
    """Wait (generously) until the chain has billed ``tokens`` on ``job_id``, then check it is exactly that."""
    async with asyncio.timeout(timeout):
        while (await sdk.sessions.get_session(job_id)).tokens_used < tokens:
            await asyncio.sleep(0.05)
    assert (await sdk.sessions.get_session(job_id)).tokens_used == tokens


async def proofs_of(sdk: FabstirSDK, job_id: int) -> list[int]:
    """Tokens claimed by each ProofSubmitted event of ``job_id``, in chain order."""
    events = await sdk.sessions.get_session_events(job_id)
    return [int(e.args["tokensClaimed"]) for e in events if e.name == "ProofSubmitted"]


async def test_full_paid_lifecycle_on_anvil(anvil_world: PaidWorld, node_factory: NodeFactory,
                                            tmp_path: Path) -> None:
    world = anvil_world
    assert world.chain.kind == "rpc" and world.chain.chain_id == 31337
    billing = host_billing(world, tmp_path / "ledger.db")
    node = await node_factory(billing=billing)
    await register(world, node.url)
    fee = world.market.deployment.fee_basis_points
    async with client_sdk(world) as sdk:
        hosts = await sdk.registry.get_all_active_nodes()
        assert [h.address for h in hosts] == [world.host.address] and hosts[0].api_url == node.url
        job = await sdk.sessions.create_session(hosts[0].address, world.model, DEPOSIT, HOST_PRICE_NATIVE,
                                                max_duration=3600, proof_interval=100)
        assert job.status is JobStatus.ACTIVE and job.deposit == DEPOSIT and job.model_id == world.model
        await sdk.inference.connect_to_session(str(job.job_id), hosts[0].api_url, job_id=job.job_id)
        served = [(await sdk.inference.send_prompt(f"turn {i}")).completion_tokens for i in range(3)]
        assert served == [60, 60, 60] and sdk.billing.get_token_usage(job.job_id) == 180
        # the checkpoint of the first 120 tokens (countersigned by the client after the second answer) lands
        await until_billed(sdk, job.job_id, 120)
        await sdk.inference.close()
        # the host settles by itself once chain time passes its last checkpoint plus the 2 s window
        await wait_settled(billing, job.job_id)
        final = await sdk.sessions.get_session(job.job_id)
        # the last 60 tokens, under the public contracts' 100-token minimum, are billed once the client has gone
        assert final.status is JobStatus.COMPLETED and final.tokens_used == 180
        assert await proofs_of(sdk, job.job_id) == [120, 60]
        events = [e.name for e in await sdk.sessions.get_session_events(job.job_id)]
        assert events[0] == "SessionJobCreated" and events[-1] == "SessionCompleted"
    expected = settle(180, HOST_PRICE_NATIVE, fee, DEPOSIT)
    assert (await earnings(world.market, world.host.address)).native == expected.host_earnings
    treasury = await world.chain.call(world.market.marketplace.functions.accumulatedTreasuryNative())
    assert treasury == expected.treasury_fee
    before = await world.chain.balance(world.host.address)
    first_block = await world.chain.run(lambda: world.chain.w3.eth.block_number + 1)
    assert await withdraw_earnings(world.market, world.host) == expected.host_earnings
    assert (await earnings(world.market, world.host.address)).native == 0
    gas = await gas_paid(world, world.host.address, first_block)
    assert await world.chain.balance(world.host.address) == before + expected.host_earnings - gas
    assert (await unregister_host(world.market, world.host)).stake == 1000 * 10**18


async def test_timed_out_session_is_settled_by_a_third_party(anvil_world: PaidWorld, node_factory: NodeFactory,
                                                             tmp_path: Path) -> None:
    world = anvil_world
    billing = host_billing(world, tmp_path / "ledger.db")
    node = await node_factory(billing=billing)
    await register(world, node.url)
    async with client_sdk(world) as sdk, client_sdk(world, world.stranger) as stranger:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        for i in range(2):
            await sdk.inference.send_prompt(f"q{i}")
        await until_billed(sdk, job.job_id, 120)
        # the client goes silent without closing: nobody settles, so the deposit would stay locked
        with pytest.raises(ContractError) as early:
            await stranger.sessions.trigger_timeout(job.job_id)
        assert early.value.reason == "Session not timed out"
        await world.chain.advance_time(INACTIVITY_TIMEOUT + 1)
        client_before = await world.chain.balance(world.client.address)
        timed_out = await stranger.sessions.trigger_timeout(job.job_id)
        assert timed_out.status is JobStatus.TIMED_OUT and timed_out.tokens_used == 120
        expected = settle(120, HOST_PRICE_NATIVE, world.market.deployment.fee_basis_points, DEPOSIT)
        assert (await earnings(world.market, world.host.address)).native == expected.host_earnings
        # the refund went straight back to the depositor, who paid no gas for it
        assert await world.chain.balance(world.client.address) - client_before == expected.refund
        events = [e.name for e in await sdk.sessions.get_session_events(job.job_id)]
        assert events[-1] == "SessionTimedOut"
        await sdk.inference.close()
    # the host sees the job settled by someone else and stops tracking it
    await wait_settled(billing, job.job_id)


async def test_reverts_surface_as_contract_errors_with_reasons(anvil_world: PaidWorld, node_factory: NodeFactory,
                                                               tmp_path: Path) -> None:
    world = anvil_world
    node = await node_factory(billing=host_billing(world, tmp_path / "ledger.db"))
    await register(world, node.url)
    with pytest.raises(ContractError) as again:
        await register(world, node.url)
    assert again.value.reason == "Already registered" and again.value.function == "registerNode"
    assert str(again.value) == "TRANSACTION_REVERTED: registerNode reverted: Already registered"
    async with client_sdk(world) as sdk:
        with pytest.raises(ContractError) as cheap:
            await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE - 1)
        assert cheap.value.reason == "Price below host minimum for model"
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        # a read-only call that reverts surfaces the same way
        with pytest.raises(ContractError) as view:
            await world.chain.call(world.market.marketplace.functions.getProofSubmission(job.job_id, 0))
        assert view.value.reason == "Proof index out of range"
        with pytest.raises(ContractError) as stranger:
            await world.chain.transact(world.stranger, world.market.marketplace.functions.submitProofOfWork(
                job.job_id, 100, b"\x01" * 32, b"\x00" * 65, "", ""))
        assert stranger.value.reason == "Only host"
    # nothing was mined for the refused transactions: the job is untouched
    async with client_sdk(world) as sdk:
        untouched = await sdk.sessions.get_session(job.job_id)
    assert untouched.status is JobStatus.ACTIVE and untouched.tokens_used == 0


class CrashAfterSend(HostChain):
    """A host whose process dies right after sending a checkpoint, before its receipt reaches the ledger."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sent = asyncio.Event()

    async def submit_checkpoint(self, job_id: int, tokens: int, proof_hash: bytes, proof_cid: str = "") -> None:
        await super().submit_checkpoint(job_id, tokens, proof_hash, proof_cid)
        self.sent.set()
        await asyncio.Event().wait()  # never returns: the node is stopped while it waits here


async def test_restarted_node_resumes_billing_from_its_ledger(anvil_world: PaidWorld, node_factory: NodeFactory,
                                                             tiny_model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # a client that does not countersign (as the public SDK): the node sends provisional checkpoints, whose
    # recovery after a crash this test is about (a countersigned one is found by its usage record on chain)
    monkeypatch.setattr(fabstir.sdk.session, "usage_acknowledgement", lambda *_args, **_kwargs: None)
    world = anvil_world
    ledger = tmp_path / "ledger.db"
    crashing = CrashAfterSend(world.market, world.host, world.model)
    first = host_billing(world, ledger, crashing)
    config = NodeConfig(port=0, model_path=str(tiny_model), context_window=512, parallel=2, threads=1)
    async with client_sdk(world) as sdk:
        async with serve_node(config, billing=first) as node:
            await register(world, node.url)
            job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
            await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
            for i in range(2):
                await sdk.inference.send_prompt(f"a{i}")
            # 120 tokens: the checkpoint is sent, and the node "dies" before recording its receipt
            await asyncio.wait_for(crashing.sent.wait(), 30)
            for i in range(2):
                await sdk.inference.send_prompt(f"b{i}")
            await sdk.inference.close()
            await asyncio.sleep(0.2)  # let the node see the client leave (written to the ledger)
            entry = first.entry(job.job_id)
            assert entry is not None and entry.generated == 240 and entry.pending_tokens == 120
            assert entry.submitted == 0 and entry.closed
        # the first node is gone: the job is still open, with only the first checkpoint on chain
        stalled = await sdk.sessions.get_session(job.job_id)
        assert stalled.status is JobStatus.ACTIVE and stalled.tokens_used == 120

        second = host_billing(world, ledger)
        await node_factory(billing=second)  # same host, same ledger file, new process state
        await wait_settled(second, job.job_id)
        final = await sdk.sessions.get_session(job.job_id)
        # the pending checkpoint was found on chain (not sent again), the other 120 tokens were billed,
        # and the job was completed after the dispute window: every token billed exactly once
        assert final.status is JobStatus.COMPLETED and final.tokens_used == 240
        assert await proofs_of(sdk, job.job_id) == [120, 120]
    expected = settle(240, HOST_PRICE_NATIVE, world.market.deployment.fee_basis_points, DEPOSIT)
    assert (await earnings(world.market, world.host.address)).native == expected.host_earnings
