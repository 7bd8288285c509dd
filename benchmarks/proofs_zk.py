"""The ``checkpoint_proofs`` part of the ``proofs`` benchmark (issue 14 P3): what a checkpoint proof costs.

- ``keygen_s``: building the circuit's keys once (compile + setup, into an empty cache), ``pk_bytes`` /
  ``vk_bytes`` their sizes.
- ``prove_s``: median seconds to prove one checkpoint (witness + proof, in this process, over ``runs`` distinct
  checkpoints after one warm-up); ``prove_s_max`` the slowest; ``verify_local_s`` the median local verification.
- ``proof_bytes``: the SNARK; ``calldata_bytes``: the ``proof`` argument on chain (SNARK + the 4 outputs).
- ``verify_onchain_gas``: gas of one ``submitCheckpointProof`` on py-evm (the marketplace's checks, the
  ProofSystem's record, the adapter and the Halo2 pairing check); ``halo2_verify_gas`` the Halo2 verifier's
  ``verifyProof`` alone (estimated).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from common import Settings, log
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.checkpoint_proofs import deploy_checkpoint_verifier, submit_checkpoint_proof
from fabstir.chain.contracts import Marketplace, load_artifact, model_id
from fabstir.chain.deploy import deploy_marketplace
from fabstir.chain.metadata import build_host_metadata
from fabstir.chain.registry import register_node
from fabstir.node.host_chain import HostChain
from fabstir.sdk import FabstirSDK
from fabstir.zk.keys import ensure_keys
from fabstir.zk.prover import CheckpointProof, CheckpointStatement, generate_proof, verify_proof

PRICE = 1_000_000
DEPOSIT = 10**15
TOKENS = 1000


def measure_checkpoint_proofs(settings: Settings, scratch: Path) -> dict[str, object]:
    """The P3 keys (see the module docstring)."""
    started = time.perf_counter()
    keys = ensure_keys(scratch / "zk-keys", progress=log)
    keygen_s = time.perf_counter() - started
    runs = max(3, min(settings.runs, 10))
    log(f"checkpoint proofs: {runs} proofs after one warm-up")
    statements = [CheckpointStatement(31337, "0x" + "11" * 20, job, TOKENS, bytes([job]) * 32)
                  for job in range(runs + 1)]
    prove: list[float] = []
    verify: list[float] = []
    for number, statement in enumerate(statements):
        proof = generate_proof(keys, statement)
        began = time.perf_counter()
        if not verify_proof(keys, proof):
            raise RuntimeError("a fresh checkpoint proof does not verify")
        if number:
            prove.append(proof.prove_s)
            verify.append(time.perf_counter() - began)
    gas, halo2_gas, proof = asyncio.run(_on_chain(keys_dir=keys.directory.parent))
    return {
        "keygen_s": round(keygen_s, 2),
        "pk_bytes": keys.pk.stat().st_size,
        "vk_bytes": keys.vk.stat().st_size,
        "prove_s": round(statistics.median(prove), 3),
        "prove_s_max": round(max(prove), 3),
        "verify_local_s": round(statistics.median(verify), 4),
        "proof_bytes": len(proof.snark),
        "calldata_bytes": len(proof.calldata()),
        "verify_onchain_gas": gas,
        "halo2_verify_gas": halo2_gas,
        "proof_runs": runs,
        "circuit": keys.info["circuit"],
    }


async def _on_chain(keys_dir: Path) -> tuple[int, int, CheckpointProof]:
    """One job on the embedded chain, one claim, one proof submitted: its gas."""
    chain = Chain.embedded(funded_accounts=3)
    try:
        owner, host, client = (dev_account(i) for i in range(3))
        model = ("bench", "tiny.gguf")
        deployment = await deploy_marketplace(chain, owner, models=[(*model, b"\x11" * 32)],
                                              max_tokens_per_second=1_000_000)
        market = Marketplace(chain, deployment)
        await deploy_checkpoint_verifier(market, owner)
        await chain.transact(owner, market.stake_token.functions.mint(host.address, 10_000 * 10**18))
        await register_node(market, host, metadata=build_host_metadata("bench", models=["tiny"]),
                            api_url="http://127.0.0.1:9", models=[model_id(*model)], min_price_native=PRICE,
                            min_price_stable=10_000)
        async with FabstirSDK(chain=chain, deployment=deployment, account=client) as sdk:
            job = (await sdk.sessions.create_session(host.address, model_id(*model), DEPOSIT, PRICE)).job_id
        host_chain = HostChain(market, host, model_id(*model))
        await host_chain.submit_checkpoint(job, TOKENS, host_chain.proof_hash(job, TOKENS))
        statement = CheckpointStatement(chain.chain_id, deployment.marketplace, job, TOKENS, b"\x5a" * 32)
        proof = await asyncio.to_thread(generate_proof, ensure_keys(keys_dir), statement)
        landed = await submit_checkpoint_proof(market, host, job, TOKENS, statement.transcript_hash,
                                               proof.calldata())
        artifact = load_artifact("Halo2Verifier")
        halo2 = chain.w3.eth.contract(address=await _halo2_address(market), abi=artifact["abi"])
        halo2_gas = await chain.run(halo2.functions.verifyProof(proof.snark, list(proof.instances)).estimate_gas)
        return landed.gas_used, int(halo2_gas), proof
    finally:
        chain.close()


async def _halo2_address(market: Marketplace) -> str:
    from fabstir.chain.checkpoint_proofs import checkpoint_verifier

    adapter = await checkpoint_verifier(market)
    assert adapter is not None
    artifact = load_artifact("CheckpointProofVerifier")
    contract = market.chain.w3.eth.contract(address=adapter, abi=artifact["abi"])
    return str(await market.chain.call(contract.functions.halo2()))
