"""``GET /v1/checkpoints/{session_id}``: the public node's signed checkpoint index, checked against the chain."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from fabstir.node.billing import BillingService
from fabstir.node.checkpoint_index import CheckpointRecord, build_index, index_signer, verify_index
from fabstir.node.host_chain import HostChain
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register

ANSWER = PromptOptions(max_tokens=100, temperature=0.0)  # each answer ends with a 100-token checkpoint


def host_billing(world: PaidWorld, ledger: Path) -> BillingService:
    return BillingService(HostChain(world.market, world.host, world.model), ledger, checkpoint_tokens=100,
                          retry_delay=0.2, defer_while_streaming=False)


async def index_with(client: httpx.AsyncClient, job_id: int, count: int, timeout: float = 60) -> dict[str, Any]:
    """The index once it lists ``count`` checkpoints (they land in the background after each answer)."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/v1/checkpoints/{job_id}")
            if response.status_code == 200 and len(response.json()["checkpoints"]) >= count:
                body: dict[str, Any] = response.json()
                return body
            assert response.status_code in (200, 404), response.text
            await asyncio.sleep(0.1)


async def test_index_matches_the_chain_and_is_signed_by_the_host(world: PaidWorld, node_factory: NodeFactory,
                                                                 tmp_path: Path) -> None:
    billing = host_billing(world, tmp_path / "ledger.db")
    node = await node_factory(billing=billing)
    await register(world, node.url)
    functions = world.market.marketplace.functions
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=ANSWER) as sdk, httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE,
                                                proof_interval=100)
        before = await http.get(f"/v1/checkpoints/{job.job_id}")
        assert before.status_code == 404
        assert before.json() == {"error": f"No checkpoints found for session {job.job_id}"}
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        for turn in range(2):
            await sdk.inference.send_prompt(f"turn {turn}")
            index = await index_with(http, job.job_id, turn + 1)
        assert set(index) == {"sessionId", "hostAddress", "checkpoints", "hostSignature"}
        assert index["sessionId"] == str(job.job_id) and index["hostAddress"] == world.host.address.lower()
        entries = index["checkpoints"]
        assert [e["index"] for e in entries] == list(range(len(entries))) == [0, 1]
        assert all(set(e) == {"index", "proofHash", "deltaCid", "tokenRange", "timestamp"} for e in entries)
        assert all(e["deltaCid"] == "" and isinstance(e["timestamp"], int) for e in entries)
        assert [e["tokenRange"] for e in entries] == [[0, 100], [100, 200]]

        # every entry is the proof at its index on chain, in the order the ProofSubmitted events came
        assert await world.chain.call(functions.getProofCount(job.job_id)) == len(entries)
        events = [e for e in await sdk.sessions.get_session_events(job.job_id) if e.name == "ProofSubmitted"]
        for entry, event in zip(entries, events, strict=True):
            proof_hash, claimed, _, _, delta_cid = await world.chain.call(
                functions.getProofSubmission(job.job_id, entry["index"]))
            start, end = entry["tokenRange"]
            assert entry["proofHash"] == "0x" + bytes(proof_hash).hex() == "0x" + bytes(event.args["proofHash"]).hex()
            assert end - start == claimed == event.args["tokensClaimed"] and delta_cid == ""
        assert entries[-1]["tokenRange"][1] == (await sdk.sessions.get_session(job.job_id)).tokens_used

        # the host's EIP-191 signature over the compact, key-sorted checkpoints, v = 27 or 28
        assert re.fullmatch(r"0x[0-9a-f]{130}", index["hostSignature"])
        assert bytes.fromhex(index["hostSignature"][2:])[64] in (27, 28)
        assert index_signer(index) == world.host.address and verify_index(index, world.host.address)
        assert not verify_index(index, world.client.address)
        forged = {**index, "checkpoints": [{**entries[0], "tokenRange": [0, 150]}, entries[1]]}
        assert index_signer(forged) != world.host.address and not verify_index(forged, world.host.address)

        # still served once the client has gone and the job is settled (the ledger keeps it)
        await sdk.inference.close()
        async with asyncio.timeout(60):
            while job.job_id not in billing.settled:
                await asyncio.sleep(0.1)
        after = await http.get(f"/v1/checkpoints/{job.job_id}")
        assert after.status_code == 200 and after.json()["checkpoints"] == entries


async def test_unknown_and_non_numeric_sessions_are_not_found(world: PaidWorld, node_factory: NodeFactory,
                                                              tmp_path: Path) -> None:
    node = await node_factory(billing=host_billing(world, tmp_path / "ledger.db"))
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        for session_id in ("999", "not-a-job", "9999999999999999999", "99999999999999999999999"):
            response = await http.get(f"/v1/checkpoints/{session_id}")
            assert response.status_code == 404
            assert response.json() == {"error": f"No checkpoints found for session {session_id}"}


async def test_free_node_has_no_checkpoint_service(node_factory: NodeFactory) -> None:
    node = await node_factory()
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        response = await http.get("/v1/checkpoints/1")
    assert response.status_code == 503
    assert response.json() == {"error": "Checkpoint service unavailable"}


async def test_a_ledger_that_cannot_be_read_is_an_internal_error(world: PaidWorld, node_factory: NodeFactory,
                                                                 tmp_path: Path) -> None:
    billing = host_billing(world, tmp_path / "ledger.db")
    node = await node_factory(billing=billing)
    billing._ledger.close()  # the node's database is gone (nothing else touches it: no job was served)
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        response = await http.get("/v1/checkpoints/1")
    assert response.status_code == 500
    assert response.json() == {"error": "Failed to load checkpoints for session 1"}


async def test_ledger_written_before_the_checkpoints_table_still_opens(world: PaidWorld, tmp_path: Path) -> None:
    ledger = tmp_path / "old.db"
    old = BillingService(HostChain(world.market, world.host, world.model), ledger)
    old.open_job(7, 1000)
    await old.aclose()
    db = sqlite3.connect(ledger)  # the file as an older node left it: a jobs table only
    db.execute("DROP TABLE checkpoints")
    db.commit()
    db.close()
    reopened = BillingService(HostChain(world.market, world.host, world.model), ledger)
    try:
        assert reopened.checkpoints(7) == []
        assert [entry.job_id for entry in reopened._ledger.unfinished()] == [7]
    finally:
        await reopened.aclose()


def test_index_signature_round_trip_and_malformed_indexes() -> None:
    host = Account.create()
    records = [CheckpointRecord(0, b"\x01" * 32, 0, 100, 1_700_000_000_000),
               CheckpointRecord(1, b"\x02" * 32, 100, 250, 1_700_000_001_000)]
    index = build_index("5", host, records)
    assert index["checkpoints"][1] == {"index": 1, "proofHash": "0x" + "02" * 32, "deltaCid": "",
                                       "tokenRange": [100, 250], "timestamp": 1_700_000_001_000}
    assert verify_index(index, host.address)
    for broken in ({**index, "hostSignature": "0x1234"}, {**index, "checkpoints": "none"},
                   {k: v for k, v in index.items() if k != "hostSignature"}):
        assert not verify_index(broken, host.address)
