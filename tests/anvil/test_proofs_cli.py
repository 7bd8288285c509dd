"""``fabstir proofs JOB --network FILE`` on anvil: a checkpoint proved and verified on chain is listed, in a
table and as JSON, by a separate ``fabstir`` process reading the chain."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from fabstir.chain.anvil import AnvilProcess
from fabstir.chain.checkpoint_proofs import deploy_checkpoint_verifier, submit_checkpoint_proof
from fabstir.chain.network import NetworkConfig
from fabstir.errors import ContractError
from fabstir.node.host_chain import HostChain
from fabstir.sdk import FabstirSDK
from fabstir.zk.prover import CheckpointStatement, generate_proof
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register
from tests.zk.conftest import session_keys

pytest.importorskip("ezkl", reason="checkpoint proofs need the ezkl package (the test extra installs it)")


async def fabstir(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "fabstir.cli", *args,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    return int(process.returncode or 0), out.decode(), err.decode()


async def test_fabstir_proofs_lists_the_proofs_verified_on_chain(anvil: AnvilProcess, anvil_world: PaidWorld,
                                                                  tmp_path: Path,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    world = anvil_world
    keys = await asyncio.to_thread(session_keys, tmp_path_factory)
    await deploy_checkpoint_verifier(world.market, world.owner)
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job = (await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)).job_id
    host = HostChain(world.market, world.host, world.model)
    async with asyncio.timeout(60):
        while True:  # anvil mines a block a second: a claim in the job's own second is over the rate cap
            try:
                await host.submit_checkpoint(job, 100, host.proof_hash(job, 100))
                break
            except ContractError as exc:  # "Excessive tokens claimed" until the next block
                if "Excessive tokens claimed" not in exc.reason:
                    raise
                await asyncio.sleep(0.5)
    transcript = b"\x33" * 32
    proof = await asyncio.to_thread(generate_proof, keys, CheckpointStatement(
        world.chain.chain_id, world.market.deployment.marketplace, job, 100, transcript))
    landed = await submit_checkpoint_proof(world.market, world.host, job, 100, transcript, proof.calldata())
    network = tmp_path / "network.json"
    NetworkConfig(name="anvil", rpc_url=anvil.rpc_url, deployment=world.market.deployment).save(network)

    code, out, err = await fabstir("proofs", str(job), "--network", str(network), "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["job_id"], row["tokens"], row["tx_hash"], row["verified"]) == (job, 100, landed.tx_hash, True)
    assert row["commitment"] == "0x" + proof.statement.commitment.hex()
    code, out, err = await fabstir("proofs", str(job), "--network", str(network))
    assert code == 0, err
    assert landed.tx_hash in out and "yes" in out
    code, out, err = await fabstir("proofs", str(job + 1), "--network", str(network), "--json")
    assert (code, json.loads(out)) == (0, [])
    code, _, err = await fabstir("proofs", str(job))
    assert code == 1 and "error: CONFIG_ERROR" in err
