"""Consented billing (issue 14, P1) on a real EVM: the depositor's countersignatures, provisional claims and
disputes, on the contract directly and through a real node streaming a tiny model to the SDK.

What each test proves is in its docstring; gas figures are printed (``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

import fabstir.sdk.session
from fabstir.chain import jobs
from fabstir.chain.money import EXACT_RULES
from fabstir.chain.records import JobStatus
from fabstir.chain.usage import (
    SECP256K1_HALF_ORDER,
    UsageAck,
    UsageTranscript,
    next_transcript_hash,
    sign_usage,
    usage_message,
    usage_signer,
)
from fabstir.errors import ContractError
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.protocol import Feature
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register, until

SECP256K1_ORDER = 2 * SECP256K1_HALF_ORDER + 1
DEPOSIT = 10**15


async def open_job(world: PaidWorld, client: LocalAccount | None = None) -> int:
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment,
                          account=client or world.client) as sdk:
        return (await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)).job_id


def ack_for(world: PaidWorld, job_id: int, tokens: int, *texts: str, signer: LocalAccount | None = None,
            chain_id: int | None = None, marketplace: str | None = None) -> UsageAck:
    transcript = UsageTranscript()
    for text in texts:
        transcript.add(text, 0)
    return sign_usage(signer or world.client, world.chain.chain_id if chain_id is None else chain_id,
                      marketplace or world.market.deployment.marketplace, job_id, tokens, transcript.transcript_hash)


async def refused(reason: str, call: Coroutine[Any, Any, Any]) -> None:
    with pytest.raises(ContractError) as info:
        await call
    assert info.value.reason == reason


async def gas_of(world: PaidWorld, sender: LocalAccount, call: Any) -> int:
    receipt = await world.chain.transact(sender, call)
    return int(receipt["gasUsed"])


def test_the_transcript_hash_is_a_keccak_chain_over_the_answers() -> None:
    """The definition both ends compute (docs/proofs.md): h0 = 0, h_n = keccak(h_{n-1} ‖ keccak(utf8(text_n)))."""
    transcript = UsageTranscript()
    transcript.add("Paris.", 3)
    transcript.add("Its tower, é", 5)
    first = bytes(Web3.keccak(bytes(32) + bytes(Web3.keccak(text="Paris."))))
    assert transcript.tokens == 8
    assert transcript.transcript_hash == bytes(Web3.keccak(first + bytes(Web3.keccak("Its tower, é".encode()))))
    assert next_transcript_hash(bytes(32), "") == bytes(Web3.keccak(bytes(32) + bytes(Web3.keccak(b""))))


async def test_a_countersigned_checkpoint_is_final_and_over_claims_or_replays_are_refused(world: PaidWorld) -> None:
    """The contract verifies the depositor's EIP-712 countersignature (same digest as the SDK's), binding chain,
    contract, job and count: a higher count, another job's, chain's or contract's signature, a stranger's, a
    high-s twin and a stale one are all refused; the honest claim is accepted at once (no window) and settles
    exactly the countersigned count."""
    await register(world, "http://127.0.0.1:9")
    job, other_job = await open_job(world), await open_job(world)
    market, host = world.market, HostChain(world.market, world.host, world.model)
    assert await host.claim_rules() == EXACT_RULES and EXACT_RULES.countersigned
    ack = ack_for(world, job, 150, "first answer", "second answer")
    message = usage_message(world.chain.chain_id, market.deployment.marketplace, job, 150, ack.transcript_hash)
    digest = bytes(Web3.keccak(b"\x19" + message.version + message.header + message.body))
    on_chain = await world.chain.call(market.marketplace.functions.usageDigest(job, 150, ack.transcript_hash))
    assert bytes(on_chain) == digest
    assert usage_signer(world.chain.chain_id, market.deployment.marketplace, ack) == world.client.address

    def submit(a: UsageAck, tokens: int | None = None, job_id: int | None = None) -> Coroutine[Any, Any, Any]:
        forged = dataclasses.replace(a, tokens=a.tokens if tokens is None else tokens,
                                     job_id=a.job_id if job_id is None else job_id)
        return host.submit_countersigned(forged, host.proof_hash(forged.job_id, forged.tokens, a.transcript_hash))

    await refused("Invalid usage signature", submit(ack, tokens=151))  # more than countersigned
    await refused("Invalid usage signature", submit(ack, job_id=other_job))  # replayed on another job
    await refused("Invalid usage signature", submit(ack_for(world, job, 150, "x", chain_id=world.chain.chain_id + 1)))
    await refused("Invalid usage signature",
                  submit(ack_for(world, job, 150, "x", marketplace=market.deployment.proof_system)))
    await refused("Invalid usage signature", submit(ack_for(world, job, 150, "x", signer=world.stranger)))
    r, s, v = ack.signature[:32], int.from_bytes(ack.signature[32:64], "big"), ack.signature[64]
    twin = dataclasses.replace(ack, signature=r + (SECP256K1_ORDER - s).to_bytes(32, "big") + bytes([55 - v]))
    assert usage_signer(world.chain.chain_id, market.deployment.marketplace, twin) is None
    await refused("Invalid usage signature", submit(twin))
    await refused("Only host", jobs.submit_countersigned_checkpoint(market, world.stranger, ack, b"\x01" * 32))

    gas = await gas_of(world, world.host, market.marketplace.functions.submitCountersignedProof(
        job, 150, ack.transcript_hash, host.proof_hash(job, 150, ack.transcript_hash), ack.signature, "", ""))
    record = await host.usage_record(job)
    assert (record.acknowledged, record.transcript_hash, record.disputed) == (150, ack.transcript_hash, False)
    assert (await host.get_job(job)).tokens_used == 150
    await refused("Not above acknowledged usage", submit(ack))  # stale: already on chain
    await refused("Invalid usage signature", submit(ack, job_id=other_job))
    # every claimed token is countersigned: the host settles at once, without the dispute window
    await host.complete(job)
    final = await host.get_job(job)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == 150
    print(f"\nsubmitCountersignedProof: {gas} gas (first countersigned checkpoint of a job)")


async def test_a_provisional_claim_loses_to_the_depositors_lower_count(world: PaidWorld) -> None:
    """A claim without a countersignature is provisional: within the dispute window the depositor answers with
    its own count (at or above what it countersigned, below the claim), which wins; afterwards the job takes
    countersigned claims only."""
    await register(world, "http://127.0.0.1:9")
    job = await open_job(world)
    market, host = world.market, HostChain(world.market, world.host, world.model)
    countersigned = ack_for(world, job, 100, "answer 1")
    await host.submit_countersigned(countersigned, host.proof_hash(job, 100, countersigned.transcript_hash))
    await world.chain.advance_time(1)
    await host.submit_checkpoint(job, 80, host.proof_hash(job, 180))  # the client received only 20 of them
    assert (await host.get_job(job)).tokens_used == 180
    await refused("Must wait dispute window", host.complete(job))
    received = next_transcript_hash(countersigned.transcript_hash, "answer 2")
    await refused("Only depositor", jobs.dispute_usage(market, world.stranger, job, 120, received))
    await refused("Below acknowledged usage", jobs.dispute_usage(market, world.client, job, 99, received))
    await refused("Not below claimed usage", jobs.dispute_usage(market, world.client, job, 180, received))
    gas = await gas_of(world, world.client, market.marketplace.functions.disputeUsage(job, 120, received))
    record = await host.usage_record(job)
    assert (record.acknowledged, record.transcript_hash, record.disputed) == (120, received, True)
    await world.chain.advance_time(1)
    await refused("Usage disputed", host.submit_checkpoint(job, 10, host.proof_hash(job, 130)))
    events = [e.name for e in await jobs.session_events(market, job)]
    assert events == ["SessionJobCreated", "ProofSubmitted", "ProofSubmitted"]
    await host.complete(job)  # everything left is what the depositor conceded: no wait
    final = await host.get_job(job)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == 120
    print(f"\ndisputeUsage: {gas} gas")


async def test_an_undisputed_provisional_claim_is_paid_after_the_window(world: PaidWorld) -> None:
    """The rule for a client that under-signs and does not dispute: the provisional claim stands once the window
    has passed (then a dispute comes too late), and the host settles it."""
    await register(world, "http://127.0.0.1:9")
    job = await open_job(world)
    market, host = world.market, HostChain(world.market, world.host, world.model)
    await world.chain.advance_time(1)
    await host.submit_checkpoint(job, 70, host.proof_hash(job, 70))
    await world.chain.advance_time(world.market.deployment.dispute_window + 1)
    await refused("No claim in dispute window", jobs.dispute_usage(market, world.client, job, 10, b"\x00" * 32))
    await host.complete(job)
    final = await host.get_job(job)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == 70


# --------------------------------------------------------------------------------------------- through a node


def ledger_ack(ledger: Path, job_id: int) -> tuple[int, int]:
    """(transcript tokens, countersigned tokens) as the node's ledger file holds them."""
    with sqlite3.connect(ledger) as db:
        row = db.execute("SELECT transcript_tokens, ack_tokens FROM usage WHERE job_id = ?", (job_id,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (-1, -1)


async def test_the_node_settles_exactly_what_the_client_countersigned(slow_world: PaidWorld,
                                                                     node_factory: NodeFactory,
                                                                     tmp_path: Path) -> None:
    """Honest path, real node and tiny model: the node advertises usage-countersign, keeps the SDK's
    countersignature next to its served count, claims with it, and completes without waiting out the (long)
    dispute window: billed == served == countersigned."""
    world = slow_world
    ledger = tmp_path / "ledger.db"
    billing = BillingService(HostChain(world.market, world.host, world.model), ledger, checkpoint_tokens=100,
                             retry_delay=0.2, defer_while_streaming=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=45, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        served = sum([(await sdk.inference.send_prompt(f"turn {i}")).tokens_used for i in range(3)])
        session = sdk.inference.session(str(job.job_id))
        assert Feature.USAGE_COUNTERSIGN in session.features
        assert session.usage.tokens == served == 135
        transcript = session.usage.transcript_hash
    async with asyncio.timeout(120):
        while job.job_id not in billing.settled:
            await asyncio.sleep(0.05)
    assert ledger_ack(ledger, job.job_id) == (135, 135)
    final = await billing.host.get_job(job.job_id)
    record = await billing.host.usage_record(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == served
    assert (record.acknowledged, record.transcript_hash) == (served, transcript)
    proofs = [e for e in await jobs.session_events(world.market, job.job_id) if e.name == "ProofSubmitted"]
    assert [e.args["tokensClaimed"] for e in proofs] == [served], "one countersigned claim, nothing provisional"


@pytest.mark.parametrize("disputed", [True, False], ids=["disputed", "undisputed"])
async def test_an_under_signing_client_is_settled_by_the_rule(slow_world: PaidWorld, node_factory: NodeFactory,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              disputed: bool) -> None:
    """The client countersigns two answers, then stops (its key is gone) for the third. The node claims the two
    with the countersignature and the third provisionally once the client has gone. Disputed within the window:
    the depositor's count wins. Undisputed: the host is paid all it served once the window has passed."""
    world = slow_world
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "l.db",
                             checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    market, host = world.market, billing.host
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=45, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        for i in range(2):
            await sdk.inference.send_prompt(f"turn {i}")
        signed = dataclasses.replace(sdk.inference.session(str(job.job_id)).usage)
        with monkeypatch.context() as patch:  # the client signs no more
            patch.setattr(fabstir.sdk.session, "usage_acknowledgement", lambda *_args, **_kwargs: None)
            await sdk.inference.send_prompt("turn 2")
    assert signed.tokens == 90

    async def tail_claimed() -> bool:
        return (await host.get_job(job.job_id)).tokens_used == 135

    await until(tail_claimed)
    assert (await host.usage_record(job.job_id)).acknowledged == 90
    assert (await host.get_job(job.job_id)).tokens_used == 135
    if disputed:
        await jobs.dispute_usage(market, world.client, job.job_id, signed.tokens, signed.transcript_hash)
    else:
        await world.chain.advance_time(market.deployment.dispute_window + 1)
    async with asyncio.timeout(120):
        while job.job_id not in billing.settled:
            await asyncio.sleep(0.05)
    final = await host.get_job(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == (90 if disputed else 135)


async def test_the_public_subset_still_works_without_countersignatures(world: PaidWorld, node_factory: NodeFactory,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never countersigns (as the public SDK) is billed as before: provisional claims, settled after
    the window, billed == served."""
    monkeypatch.setattr(fabstir.sdk.session, "usage_acknowledgement", lambda *_args, **_kwargs: None)
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "l.db",
                             checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=30, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        served = sum([(await sdk.inference.send_prompt(f"q{i}")).tokens_used for i in range(2)])
    async with asyncio.timeout(120):
        while job.job_id not in billing.settled:
            await asyncio.sleep(0.05)
    final = await billing.host.get_job(job.job_id)
    record = await billing.host.usage_record(job.job_id)
    assert final.tokens_used == served == 60 and record.acknowledged == 0


async def test_the_node_keeps_only_countersignatures_of_what_it_sent(world: PaidWorld, tmp_path: Path) -> None:
    """A countersignature is kept only when the depositor signed it for this chain and marketplace, for a count
    and transcript the node reached when an answer ended, and above the last one kept; it is stored durably."""
    await register(world, "http://127.0.0.1:9")
    job = await open_job(world)
    ledger = tmp_path / "l.db"
    billing = BillingService(HostChain(world.market, world.host, world.model), ledger, complete_sessions=False)
    try:
        billing.open_job(job, 1000, 100)
        billing.record_served(job, 12)
        billing.record_answer(job, "first", 12)
        billing.record_served(job, 30)
        billing.record_answer(job, "second", 30)
        depositor = world.client.address
        assert not billing.acknowledge(ack_for(world, job, 42, "first", "second", signer=world.stranger), depositor)
        assert not billing.acknowledge(ack_for(world, job, 42, "first", "other"), depositor), "not what was sent"
        assert not billing.acknowledge(ack_for(world, job, 41, "first", "second"), depositor), "not a point reached"
        assert not billing.acknowledge(ack_for(world, job, 42, "first", "second",
                                               chain_id=world.chain.chain_id + 1), depositor)
        assert billing.acknowledge(ack_for(world, job, 12, "first"), depositor)
        assert billing.acknowledge(ack_for(world, job, 42, "first", "second"), depositor)
        assert not billing.acknowledge(ack_for(world, job, 12, "first"), depositor), "not above the last one"
        assert ledger_ack(ledger, job) == (42, 42)
    finally:
        await billing.aclose()


async def test_the_depositor_settling_disputes_a_provisional_over_claim_first(world: PaidWorld,
                                                                            node_factory: NodeFactory,
                                                                            tmp_path: Path) -> None:
    """A host that claims provisionally more than it streamed (through a real node and the SDK): the depositor's
    ``complete_session`` first answers with what the client received (``dispute_overclaim``), so it pays exactly
    what it was served."""
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "l.db",
                             checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False,
                             complete_sessions=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=60, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        served = sum([(await sdk.inference.send_prompt(f"q{i}")).tokens_used for i in range(2)])
        assert not await sdk.sessions.dispute_overclaim(job.job_id), "nothing claimed beyond what was received"

        async def countersigned() -> bool:
            return (await billing.host.usage_record(job.job_id)).acknowledged == served

        await until(countersigned)
        cheat = HostChain(world.market, world.host, world.model)
        await world.chain.advance_time(1)
        await cheat.submit_checkpoint(job.job_id, 500, cheat.proof_hash(job.job_id, served + 500))
        assert (await sdk.sessions.get_session(job.job_id)).tokens_used == served + 500
        final = await sdk.sessions.complete_session(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == served == 120
    assert (await billing.host.usage_record(job.job_id)).disputed
