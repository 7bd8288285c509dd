"""Checkpoint proofs on a real EVM (py-evm): the EZKL verifier accepts a valid proof and refuses a tampered one,
one made for another job and one made for another token count, each with a revert reason.

Gas figures are printed (``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from eth_account.signers.local import LocalAccount

from fabstir.chain import jobs
from fabstir.chain.checkpoint_proofs import (
    FEATURE_CHECKPOINT_PROOFS,
    checkpoint_verifier,
    proven_checkpoints,
    submit_checkpoint_proof,
    usage_digest,
)
from fabstir.errors import ContractError
from fabstir.node.host_chain import HostChain
from fabstir.sdk import FabstirSDK
from fabstir.zk.keys import CircuitKeys
from fabstir.zk.prover import CheckpointProof, CheckpointStatement, generate_proof, verify_proof
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register

DEPOSIT = 10**15
TRANSCRIPT = b"\x5a" * 32


async def open_claimed_job(world: PaidWorld, tokens: int) -> int:
    """A job of the world's client on its host with ``tokens`` claimed (a provisional checkpoint)."""
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        job_id = (await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT,
                                                    HOST_PRICE_NATIVE)).job_id
    host = HostChain(world.market, world.host, world.model)
    await host.submit_checkpoint(job_id, tokens, host.proof_hash(job_id, tokens))
    return job_id


def statement(world: PaidWorld, job_id: int, tokens: int) -> CheckpointStatement:
    return CheckpointStatement(world.chain.chain_id, world.market.deployment.marketplace, job_id, tokens, TRANSCRIPT)


async def refused(reason: str, world: PaidWorld, job_id: int, tokens: int, proof: bytes,
                  sender: LocalAccount | None = None) -> None:
    with pytest.raises(ContractError) as info:
        await submit_checkpoint_proof(world.market, sender or world.host, job_id, tokens, TRANSCRIPT, proof)
    assert info.value.reason == reason


def test_the_commitment_is_the_marketplaces_usage_digest_and_the_inputs_its_bytes() -> None:
    st = CheckpointStatement(31337, "0x" + "ab" * 20, 7, 0x01020304, TRANSCRIPT)
    assert st.commitment == usage_digest(31337, "0x" + "ab" * 20, 7, 0x01020304, TRANSCRIPT)
    assert st.inputs == list(st.commitment) + [4, 3, 2, 1]


async def test_a_valid_proof_verifies_on_chain_and_forged_ones_are_refused(proven_world: PaidWorld,
                                                                           zk_keys: CircuitKeys) -> None:
    world = proven_world
    await register(world, "http://127.0.0.1:9")
    assert await jobs.marketplace_features(world.market) & FEATURE_CHECKPOINT_PROOFS
    assert await checkpoint_verifier(world.market) is not None
    job, other_job = await open_claimed_job(world, 100), await open_claimed_job(world, 100)
    proof = await asyncio.to_thread(generate_proof, zk_keys, statement(world, job, 100))
    print(f"\nprove {proof.prove_s:.2f} s, SNARK {len(proof.snark)} bytes, calldata {len(proof.calldata())} bytes")
    assert verify_proof(zk_keys, proof)

    snark = bytearray(proof.snark)
    snark[200] ^= 0x01
    tampered = proof.with_snark(bytes(snark))
    assert not verify_proof(zk_keys, tampered)
    await refused("Proof rejected", world, job, 100, tampered.calldata())
    await refused("Proof rejected", world, other_job, 100, proof.calldata())  # made for another job
    await refused("Proof rejected", world, job, 99, proof.calldata())  # for another token count
    wrong_outputs = CheckpointProof.from_calldata(proof.statement, proof.calldata())
    wrong_outputs = dataclasses.replace(wrong_outputs, instances=wrong_outputs.instances[:-1] + (7,))
    await refused("Proof rejected", world, job, 100, wrong_outputs.calldata())
    await refused("Proof rejected", world, job, 100, b"")
    await refused("Tokens not claimed", world, job, 101, proof.calldata())
    await refused("Only host", world, job, 100, proof.calldata(), sender=world.stranger)
    for bad in (dataclasses.replace(proof.statement, job_id=other_job),
                dataclasses.replace(proof.statement, tokens=99),
                dataclasses.replace(proof.statement, transcript_hash=b"\x00" * 32)):
        assert not verify_proof(zk_keys, dataclasses.replace(proof, statement=bad))

    accepted = await submit_checkpoint_proof(world.market, world.host, job, 100, TRANSCRIPT, proof.calldata())
    print(f"submitCheckpointProof: {accepted.gas_used} gas")
    await refused("Checkpoint already proven", world, job, 100, proof.calldata())
    [event] = await proven_checkpoints(world.market, job)
    assert (event.tokens, event.transcript_hash, event.commitment, event.tx_hash) == (
        100, TRANSCRIPT, proof.statement.commitment, accepted.tx_hash)
    assert event.host == world.host.address
    assert await proven_checkpoints(world.market, other_job) == []


async def test_with_the_snark_verifier_as_the_claim_verifier_a_claim_without_a_proof_reverts(
        proven_world: PaidWorld) -> None:
    """The ProofSystem's other seam: with the checkpoint verifier checking every claim as it is recorded,
    submitProofOfWork (which carries no proof bytes) reverts."""
    world = proven_world
    await register(world, "http://127.0.0.1:9")
    adapter = await checkpoint_verifier(world.market)
    await world.chain.transact(world.owner, world.market.proof_system.functions.setVerifier(adapter))
    with pytest.raises(ContractError) as info:
        await open_claimed_job(world, 100)
    assert info.value.reason == "Proof rejected"
