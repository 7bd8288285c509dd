"""Consented billing beyond one process and one transport (issue 14, P1 leftovers), on a real EVM with a real
node streaming the suite's tiny model:

- the depositor's received count outlives the SDK (its usage log), so a new process disputes an over-claim;
- answers served over HTTP extend the job's usage transcript and are countersigned with ``POST /v1/usage``.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabstir.chain.records import JobStatus
from fabstir.chain.usage import UsageTranscript, sign_usage
from fabstir.errors import NodeError, SessionError, StorageError
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.protocol import Feature, UsageAcknowledgement
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.sdk.billing import usage_acknowledgement
from fabstir.sdk.node_client import LLMNodeClient
from fabstir.sdk.usage_log import JobUsage, UsageLog
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register, until

DEPOSIT = 10**15
MARKET = "0x" + "ab" * 20


def test_the_usage_log_keeps_the_highest_count_per_chain_marketplace_and_job(tmp_path: Path) -> None:
    path = tmp_path / "private" / "usage.sqlite"
    log = UsageLog(path)
    assert log.get(1, MARKET, 7) is None and not path.exists(), "nothing is written before the first count"
    log.record(1, MARKET, 7, JobUsage(40, 30, b"\x01" * 32))
    log.record(1, MARKET, 7, JobUsage(25, 20, b"\x02" * 32))  # a stale writer never lowers it
    log.record(1, MARKET.upper().replace("0X", "0x"), 8, JobUsage(5, 5, b"\x03" * 32))
    log.record(2, MARKET, 7, JobUsage(9, 9, b"\x04" * 32))
    log.close()
    reopened = UsageLog(path)
    assert reopened.get(1, MARKET, 7) == JobUsage(40, 30, b"\x01" * 32)
    assert reopened.get(1, MARKET, 8) == JobUsage(5, 5, b"\x03" * 32), "marketplace addresses ignore case"
    assert reopened.get(2, MARKET, 7) == JobUsage(9, 9, b"\x04" * 32), "another chain is another job"
    reopened.record(1, MARKET, 7, JobUsage(41, 35, b"\x05" * 32))
    assert reopened.get(1, MARKET, 7) == JobUsage(41, 35, b"\x05" * 32)
    reopened.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_an_unwritable_usage_log_is_a_coded_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError) as info:
        UsageLog(blocker / "usage.sqlite").record(1, MARKET, 1, JobUsage(1, 1, bytes(32)))
    assert info.value.code == "STORAGE_UNAVAILABLE"


async def test_a_new_process_disputes_an_over_claim_with_the_count_its_predecessor_received(
        world: PaidWorld, node_factory: NodeFactory, tmp_path: Path) -> None:
    """The SDK that streamed the answers is gone (closed, its session objects dropped); the host then claims
    provisionally more than it streamed. A fresh SDK with the same usage log answers with the stored count and
    the job settles at exactly what was served."""
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "l.db",
                             checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False,
                             complete_sessions=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    usage_path = tmp_path / "client" / "usage.sqlite"
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          usage_log=usage_path, default_options=PromptOptions(max_tokens=30, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        served = sum([(await sdk.inference.send_prompt(f"q{i}")).tokens_used for i in range(2)])
        transcript = sdk.inference.session(str(job.job_id)).usage.transcript_hash
    assert served == 60

    async def countersigned() -> bool:
        return (await billing.host.usage_record(job.job_id)).acknowledged == served

    await until(countersigned)
    cheat = HostChain(world.market, world.host, world.model)
    await world.chain.advance_time(1)
    await cheat.submit_checkpoint(job.job_id, 500, cheat.proof_hash(job.job_id, served + 500))

    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          usage_log=usage_path) as restarted:
        assert await restarted.sessions.dispute_overclaim(job.job_id)
        record = await billing.host.usage_record(job.job_id)
        assert record.disputed and (record.acknowledged, record.transcript_hash) == (served, transcript)
        final = await restarted.sessions.complete_session(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == served

    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          usage_log=False) as forgetful:
        with pytest.raises(SessionError) as info:
            await forgetful.sessions.dispute_overclaim(job.job_id)
        assert info.value.code == "SESSION_NOT_FOUND", "without a log there is no count to use"


async def test_http_answers_are_countersigned_and_settled_exactly(slow_world: PaidWorld, node_factory: NodeFactory,
                                                                  tmp_path: Path) -> None:
    """A depositor served over ``POST /v1/inference`` (JSON and SSE) countersigns with ``POST /v1/usage``: the
    node keeps only its depositor's signature of a count and transcript it sent, claims with it, and completes
    without waiting out the long dispute window."""
    world = slow_world
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "ledger.db",
                             checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          usage_log=False) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        token = sdk.inference.session_token()
        assert token is not None and Feature.USAGE_COUNTERSIGN in sdk.inference.session(str(job.job_id)).features
        await sdk.inference.aclose()  # the WebSocket only gave us the session token

        transcript = UsageTranscript()
        async with LLMNodeClient(node.url, token=token) as http:
            first = await http.inference("one", max_tokens=12, temperature=0.0, job_id=job.job_id)
            transcript.add(first.text, first.tokens_used)
            streamed = "".join([piece async for piece in http.stream_inference(
                "two", max_tokens=9, temperature=0.0, job_id=job.job_id)])
            transcript.add(streamed, 9)
            served = transcript.tokens
            assert served == 21

            wrong_count = sign_usage(world.client, world.chain.chain_id, world.market.deployment.marketplace,
                                     job.job_id, served + 1, transcript.transcript_hash)
            assert not await http.acknowledge_usage(as_message(wrong_count)), "a count the node never reached"
            by_stranger = sign_usage(world.stranger, world.chain.chain_id, world.market.deployment.marketplace,
                                     job.job_id, served, transcript.transcript_hash)
            assert not await http.acknowledge_usage(as_message(by_stranger)), "not the depositor's signature"
            ack = usage_acknowledgement(sdk, job.job_id, transcript)
            assert ack is not None and await http.acknowledge_usage(ack)
            assert not await http.acknowledge_usage(ack), "the same count again is not news"

        async with LLMNodeClient(node.url) as anonymous:
            with pytest.raises(NodeError) as refused:
                await anonymous.acknowledge_usage(ack)
            assert refused.value.code == "AUTH_REQUIRED", "the usage route goes through admission too"

    async with asyncio.timeout(120):
        while job.job_id not in billing.settled:
            await asyncio.sleep(0.05)
    final = await billing.host.get_job(job.job_id)
    record = await billing.host.usage_record(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == served
    assert (record.acknowledged, record.transcript_hash) == (served, transcript.transcript_hash)


def as_message(ack: Any) -> UsageAcknowledgement:
    return UsageAcknowledgement(job_id=ack.job_id, tokens=ack.tokens, transcript_hash="0x" + ack.transcript_hash.hex(),
                                signature="0x" + ack.signature.hex())


async def test_bad_usage_bodies_get_coded_refusals(world: PaidWorld, node_factory: NodeFactory,
                                                   tmp_path: Path) -> None:
    """``POST /v1/usage`` with bytes that are not a usage_ack: a coded 400 (or 413), never a 500 or silence;
    a free node has no usage to countersign."""
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "l.db",
                             complete_sessions=False)
    paid = await node_factory(billing=billing, max_frame_bytes=4096)
    free = await node_factory()
    ack = {"type": "usage_ack", "job_id": 1, "tokens": 3, "transcript_hash": "0x" + "00" * 32,
           "signature": "0x" + "11" * 65}
    cases: list[tuple[bytes, int, str]] = [
        (b"\xff\xfe", 400, "INVALID_JSON"),
        (b"{", 400, "INVALID_JSON"),
        (b'{"type": "prompt", "prompt": "hi"}', 400, "VALIDATION_ERROR"),
        (b'{"type": "usage_ack", "job_id": 1}', 400, "VALIDATION_ERROR"),
        (b'{"type": "usage_ack", "job_id": 1, "tokens": 3, "transcript_hash": "0x12", "signature": "0x"}', 400,
         "VALIDATION_ERROR"),
        (b" " * 10_000, 413, "PAYLOAD_TOO_LARGE"),
    ]
    async with httpx.AsyncClient(base_url=paid.url, timeout=60) as http:
        for body, status, code in cases:
            response = await http.post("/v1/usage", content=body)
            assert response.status_code == status, (body[:40], response.text)
            assert response.json()["details"]["code"] == code, (body[:40], response.text)
    async with httpx.AsyncClient(base_url=free.url, timeout=60) as http:
        response = await http.post("/v1/usage", json=ack)
        assert response.status_code == 400 and "free sessions" in response.json()["message"]
