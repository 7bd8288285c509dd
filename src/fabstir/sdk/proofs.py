"""A job's checkpoint proofs as the chain records them: ``sdk.proofs.history(job_id)`` (issue 14 P3).

Each entry is a proof that verified on chain (``CheckpointProven``): a proof that does not verify reverts and
leaves nothing, so what the chain lists is verified by construction. The host's own history, with the proofs
it made but the chain refused, is the node's (:meth:`fabstir.zk.service.ProofService.get_proof_history`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fabstir.chain.checkpoint_proofs import proven_checkpoints

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["ProofEntry", "ProofsClient"]


@dataclasses.dataclass(frozen=True, slots=True)
class ProofEntry:
    """One checkpoint proof of a job, verified on chain."""

    job_id: int
    tokens: int
    """Cumulative tokens of the checkpoint it proves."""
    host: str
    transcript_hash: str
    commitment: str
    """The usage commitment the proof is bound to (``usageDigest``), ``0x`` hex."""
    tx_hash: str
    block_number: int
    verified: bool = True
    """Verified on chain (always: a refused proof leaves no record)."""


class ProofsClient:
    """Checkpoint proofs on the SDK's marketplace."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk

    async def history(self, job_id: int) -> list[ProofEntry]:
        """Every checkpoint proof of ``job_id`` that verified on chain, in chain order.

        Raises:
            ConfigError: the SDK has no chain.
        """
        proven = await proven_checkpoints(self._sdk.marketplace, job_id)
        return [ProofEntry(p.job_id, p.tokens, p.host, "0x" + p.transcript_hash.hex(), "0x" + p.commitment.hex(),
                           p.tx_hash, p.block_number) for p in proven]
