"""Checkpoint proofs on chain (issue 14 P3): deploy the verifier, submit a proof, read the proven checkpoints.

A host proves a checkpoint it claimed with ``submitCheckpointProof(jobId, cumulativeTokens, transcriptHash,
proof)`` on our marketplace (feature bit :data:`FEATURE_CHECKPOINT_PROOFS`). The marketplace computes the usage
commitment ``usageDigest(jobId, cumulativeTokens, transcriptHash)`` (:func:`usage_digest`) and has the
ProofSystem's ``checkpointVerifier`` (a ``CheckpointProofVerifier`` over the EZKL ``Halo2Verifier``) check the
proof against it; a proof that does not verify reverts with "Proof rejected". Each verified checkpoint leaves
a ``CheckpointProven`` event, which is the on-chain proof history.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from fabstir.chain.backend import Chain
from fabstir.chain.contracts import Marketplace, load_artifact
from fabstir.chain.usage import usage_message

__all__ = [
    "FEATURE_CHECKPOINT_PROOFS",
    "ProvenCheckpoint",
    "SubmittedProof",
    "checkpoint_verifier",
    "deploy_checkpoint_verifier",
    "proven_checkpoints",
    "submit_checkpoint_proof",
    "usage_digest",
]

FEATURE_CHECKPOINT_PROOFS = 4
"""``marketplaceFeatures`` bit: ``submitCheckpointProof`` exists (ours only)."""


def usage_digest(chain_id: int, marketplace: str, job_id: int, tokens: int, transcript_hash: bytes) -> bytes:
    """The marketplace's ``usageDigest``: the EIP-712 digest binding chain, contract, job, count and transcript."""
    message = usage_message(chain_id, marketplace, job_id, tokens, transcript_hash)
    return bytes(Web3.keccak(b"\x19" + message.version + message.header + message.body))


@dataclasses.dataclass(frozen=True)
class SubmittedProof:
    """A checkpoint proof the chain accepted."""

    tx_hash: str
    gas_used: int
    block_number: int


@dataclasses.dataclass(frozen=True)
class ProvenCheckpoint:
    """One ``CheckpointProven`` event: a checkpoint proof that verified on chain."""

    job_id: int
    host: str
    tokens: int
    transcript_hash: bytes
    commitment: bytes
    tx_hash: str
    block_number: int


async def submit_checkpoint_proof(market: Marketplace, host: LocalAccount, job_id: int, tokens: int,
                                  transcript_hash: bytes, proof: bytes) -> SubmittedProof:
    """``submitCheckpointProof``: prove the checkpoint of ``job_id`` at ``tokens`` cumulative tokens.

    Raises:
        ContractError: refused ("Proof rejected", "Tokens not claimed", "Checkpoint already proven",
            "No checkpoint verifier", "Only host").
    """
    call = market.marketplace.functions.submitCheckpointProof(job_id, tokens, transcript_hash, proof)
    receipt = await market.chain.transact(host, call)
    return SubmittedProof(_hex(receipt["transactionHash"]), int(receipt["gasUsed"]), int(receipt["blockNumber"]))


async def checkpoint_verifier(market: Marketplace) -> str | None:
    """The ProofSystem's checkpoint verifier (``None``: checkpoint proofs are not taken)."""
    address = str(await market.chain.call(market.proof_system.functions.checkpointVerifier()))
    return None if int(address, 16) == 0 else address


async def proven_checkpoints(market: Marketplace, job_id: int, from_block: int = 0) -> list[ProvenCheckpoint]:
    """The checkpoints of ``job_id`` proven on chain (``CheckpointProven`` logs), in chain order."""
    event = market.marketplace.events.CheckpointProven

    def fetch() -> list[ProvenCheckpoint]:
        logs = event().get_logs(from_block=from_block, argument_filters={"jobId": job_id})
        ordered = sorted(logs, key=lambda log: (int(log["blockNumber"]), int(log["logIndex"])))
        return [ProvenCheckpoint(job_id, str(log["args"]["host"]), int(log["args"]["cumulativeTokens"]),
                                 bytes(log["args"]["transcriptHash"]), bytes(log["args"]["commitment"]),
                                 _hex(log["transactionHash"]), int(log["blockNumber"])) for log in ordered]

    return await market.chain.run(fetch)


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _deploy_sync(chain: Chain, owner: LocalAccount, market: Marketplace) -> tuple[str, str]:
    def deploy(name: str, *args: Any) -> str:
        artifact = load_artifact(name)
        factory = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        return str(chain.transact_sync(owner, factory.constructor(*args), label=f"deploy {name}")["contractAddress"])

    halo2 = deploy("Halo2Verifier")
    adapter = deploy("CheckpointProofVerifier", Web3.to_checksum_address(halo2))
    chain.transact_sync(owner, market.proof_system.functions.setCheckpointVerifier(adapter))
    return halo2, adapter


async def deploy_checkpoint_verifier(market: Marketplace, owner: LocalAccount) -> tuple[str, str]:
    """Deploy ``Halo2Verifier`` and ``CheckpointProofVerifier`` and make the latter the ProofSystem's checkpoint
    verifier (``owner`` owns the ProofSystem). Returns ``(halo2 verifier, adapter)`` addresses."""
    return await market.chain.run(_deploy_sync, market.chain, owner, market)
