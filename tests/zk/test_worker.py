"""The node's proof worker on a real paid session: a real node streams the suite's tiny model to the SDK on the
embedded chain, bills with the client's countersignatures, and proves and submits each checkpoint in the
background; the host's history, the chain's (through the SDK) and ``fabstir proofs`` show the same proofs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fabstir.chain.backend import Chain
from fabstir.chain.records import JobStatus
from fabstir.cli.main import main
from fabstir.errors import ProofError
from fabstir.node.billing import BillingService
from fabstir.node.config import load_node_config
from fabstir.node.host_chain import HostChain
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.zk.history import ProofHistory
from fabstir.zk.keys import CircuitKeys
from fabstir.zk.service import ProofService
from tests.conftest import NodeFactory
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, build_world, register

DEPOSIT = 10**15


async def test_the_node_proves_and_submits_the_checkpoints_of_a_paid_session(
        proven_world: PaidWorld, node_factory: NodeFactory, zk_keys: CircuitKeys, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    world = proven_world
    proofs = ProofService(world.market, world.host, tmp_path / "proofs", keys_dir=zk_keys.directory.parent)
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "ledger.db",
                             checkpoint_tokens=100, retry_delay=0.2, defer_while_streaming=False, proofs=proofs)
    node = await node_factory(billing=billing)
    await register(world, node.url)
    assert await proofs.ready(timeout=120), "the marketplace takes checkpoint proofs"
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=30, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        await sdk.inference.connect_to_session(str(job.job_id), node.url, job_id=job.job_id)
        served = 0
        for turn in range(2):
            served += (await sdk.inference.send_prompt(f"turn {turn}")).tokens_used
            await asyncio.sleep(0.3)  # let the countersigned checkpoint of this answer land
        transcript = sdk.inference.session(str(job.job_id)).usage.transcript_hash
    async with asyncio.timeout(120):
        while job.job_id not in billing.settled:
            await asyncio.sleep(0.05)
    await proofs.wait_idle(timeout=180)

    final = await billing.host.get_job(job.job_id)
    assert final.status is JobStatus.COMPLETED and final.tokens_used == served
    history = proofs.get_proof_history(job.job_id)
    assert history, "each landed checkpoint was proved"
    assert all(r.status == "verified" and r.locally_verified and r.tx_hash and r.gas_used > 0 for r in history)
    assert history[-1].tokens == served and history[-1].transcript_hash == "0x" + transcript.hex()
    print(f"\n{len(history)} proof(s); prove {[round(r.prove_s, 2) for r in history]} s, "
          f"gas {[r.gas_used for r in history]}, {history[0].proof_bytes} bytes")

    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment) as reader:
        on_chain = await reader.proofs.history(job.job_id)
    assert [(e.tokens, e.commitment, e.tx_hash, e.verified) for e in on_chain] == [
        (r.tokens, r.commitment, r.tx_hash, True) for r in history]

    capsys.readouterr()
    db = str(tmp_path / "proofs" / "proofs.db")
    assert await asyncio.to_thread(main, ["proofs", str(job.job_id), "--history", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["tokens"], row["status"], row["tx_hash"]) for row in listed] == [
        (r.tokens, "verified", r.tx_hash) for r in history]
    assert await asyncio.to_thread(main, ["proofs", str(job.job_id), "--history", db]) == 0
    table = capsys.readouterr().out
    assert "verified" in table and history[-1].tx_hash in table

    # the cache: proving the same checkpoint again returns the stored proof, no second proving run
    again = await proofs.generate_proof(job.job_id, served, transcript)
    assert "0x" + again.proof_hash.hex() == history[-1].proof_hash


async def test_without_a_checkpoint_verifier_the_service_stays_off(tiny_model: Path, tmp_path: Path) -> None:
    """A marketplace that takes no checkpoint proofs: nothing is proved, enqueued checkpoints are dropped, and
    asking for a proof is a coded error."""
    chain = Chain.embedded(funded_accounts=5)
    try:
        world = await build_world(chain, tiny_model.name)
        proofs = ProofService(world.market, world.host, tmp_path / "proofs")
        proofs.enqueue(1, 10)
        await proofs.start()
        assert not await proofs.ready(timeout=60)
        await proofs.wait_idle(timeout=10)
        proofs.enqueue(1, 20)
        with pytest.raises(ProofError) as info:
            await proofs.generate_proof(1, 10)
        assert info.value.code == "ZK_UNAVAILABLE"
        assert proofs.get_proof_history(1) == []
        await proofs.aclose()
    finally:
        chain.close()


def test_a_node_turns_checkpoint_proofs_on_by_configuration() -> None:
    config = load_node_config(env={"FABSTIR_NODE_CHECKPOINT_PROOFS": "true", "FABSTIR_NODE_ZK_CACHE": "/tmp/k"})
    assert config.checkpoint_proofs and config.zk_cache == "/tmp/k"
    assert not load_node_config(env={}).checkpoint_proofs


async def test_a_proof_made_but_not_submitted_is_submitted_after_a_restart(proven_world: PaidWorld,
                                                                          zk_keys: CircuitKeys,
                                                                          tmp_path: Path) -> None:
    """The host stopped between proving and submitting: the next start submits the cached proof."""
    world = proven_world
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job = (await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)).job_id
    host = HostChain(world.market, world.host, world.model)
    await host.submit_checkpoint(job, 40, host.proof_hash(job, 40))
    first = ProofService(world.market, world.host, tmp_path / "proofs", keys_dir=zk_keys.directory.parent)
    await first.start()
    assert await first.ready(timeout=120)
    proof = await first.generate_proof(job, 40)
    first.history.put(first._record(proof, "proved", True))  # what the worker writes before it submits
    await first.aclose()
    stored = ProofHistory(tmp_path / "proofs" / "proofs.db")
    assert [r.status for r in stored.for_job(job)] == ["proved"]
    stored.close()

    second = ProofService(world.market, world.host, tmp_path / "proofs", keys_dir=zk_keys.directory.parent)
    await second.start()
    try:
        assert await second.ready(timeout=120)
        await second.wait_idle(timeout=120)
        (record,) = second.get_proof_history(job)
        assert record.status == "verified" and record.proof_hash == "0x" + proof.proof_hash.hex()
    finally:
        await second.aclose()
