"""The host's view of the marketplace: check session jobs, submit checkpoints, settle.

Every call runs on the chain's worker thread (see :class:`fabstir.chain.Chain`),
never on the event loop's streaming path. Checkpoints are sent in the form the
marketplace speaks (probed once, see :mod:`fabstir.chain.proofs`): signed by the
host where the contract takes a signature, unsigned where it does not.
"""

from __future__ import annotations

import hashlib

from eth_account.signers.local import LocalAccount
from web3 import Web3

from fabstir.chain import jobs
from fabstir.chain.contracts import Marketplace
from fabstir.chain.money import ClaimRules
from fabstir.chain.proofs import ProofForm
from fabstir.chain.records import JobStatus, SessionJob
from fabstir.chain.usage import UsageAck, UsageRecord, usage_signer
from fabstir.errors import NodeError

__all__ = ["HostChain", "JobRefusedError", "checkpoint_hash"]


class JobRefusedError(NodeError):
    """The node will not serve this job (codes JOB_NOT_FOUND, JOB_NOT_ACTIVE, WRONG_HOST, MODEL_MISMATCH)."""

    default_code = "JOB_REFUSED"


def checkpoint_hash(chain_id: int, marketplace: str, job_id: int, cumulative_tokens: int, host: str,
                    transcript_hash: bytes | None = None) -> bytes:
    """A checkpoint's proof hash: unique per job and cumulative count, and the same on every retry.

    Retrying after a lost receipt therefore reuses the hash, and the ProofSystem's reuse check
    makes a double submission impossible. A countersigned checkpoint names the transcript hash the
    depositor signed (so it never collides with a provisional claim of the same count).
    """
    text = f"fabstir-checkpoint-v1|{chain_id}|{marketplace.lower()}|{job_id}|{cumulative_tokens}|{host.lower()}"
    if transcript_hash is not None:
        text += f"|countersigned|{transcript_hash.hex()}"
    return hashlib.sha256(text.encode()).digest()


class HostChain:
    """A host account acting on one marketplace deployment, serving one model."""

    def __init__(self, market: Marketplace, account: LocalAccount, model_id: bytes | None, *,
                 rules: ClaimRules | None = None) -> None:
        """``rules=None``: what checkpoints may claim is detected on chain (:meth:`claim_rules`)."""
        self.market = market
        self.account = account
        self.model_id = model_id
        self._proof_form: ProofForm | None = None
        self._rules = rules

    @property
    def address(self) -> str:
        return str(self.account.address)

    async def get_job(self, job_id: int) -> SessionJob:
        """The job as stored (see :func:`fabstir.chain.jobs.get_session_job`)."""
        return await jobs.get_session_job(self.market, job_id)

    async def verify_job(self, job_id: int) -> SessionJob:
        """The job, if this node may serve it.

        Raises:
            JobRefusedError: the job does not exist, is settled, belongs to another host, or is for
                another model.
        """
        job = await self.get_job(job_id)
        if not job.exists:
            raise JobRefusedError(f"job {job_id} does not exist on chain", code="JOB_NOT_FOUND")
        if job.status is not JobStatus.ACTIVE:
            raise JobRefusedError(f"job {job_id} is {job.status.name.lower()}", code="JOB_NOT_ACTIVE")
        if Web3.to_checksum_address(job.host) != Web3.to_checksum_address(self.address):
            raise JobRefusedError(f"job {job_id} belongs to host {job.host}, not this node ({self.address})",
                                  code="WRONG_HOST")
        if job.model_id is not None and self.model_id is not None and job.model_id != self.model_id:
            raise JobRefusedError(f"job {job_id} is for model 0x{job.model_id.hex()}, this node serves "
                                  f"0x{self.model_id.hex()}", code="MODEL_MISMATCH")
        return job

    def proof_hash(self, job_id: int, cumulative_tokens: int, transcript_hash: bytes | None = None) -> bytes:
        return checkpoint_hash(self.market.chain.chain_id, self.market.marketplace.address, job_id,
                               cumulative_tokens, self.address, transcript_hash)

    def ack_signer(self, ack: UsageAck) -> str | None:
        """Who countersigned ``ack`` on this chain and marketplace (``None``: malformed or high-s)."""
        return usage_signer(self.market.chain.chain_id, self.market.marketplace.address, ack)

    async def usage_record(self, job_id: int) -> UsageRecord:
        """The job's consented usage on the marketplace (ours only)."""
        return await jobs.usage_record(self.market, job_id)

    async def submit_countersigned(self, ack: UsageAck, proof_hash: bytes) -> None:
        """``submitCountersignedProof`` up to ``ack.tokens`` in total (ours only; accepted at once).

        Raises:
            ContractError: refused ("Invalid usage signature", "Not above acknowledged usage"...).
        """
        await jobs.submit_countersigned_checkpoint(self.market, self.account, ack, proof_hash)

    async def is_proof_recorded(self, proof_hash: bytes) -> bool:
        return await jobs.is_proof_recorded(self.market, proof_hash)

    async def proof_form(self) -> ProofForm:
        """Which ``submitProofOfWork`` the marketplace speaks (probed once, then remembered)."""
        if self._proof_form is None:
            self._proof_form = await jobs.detect_proof_form(self.market)
        return self._proof_form

    async def claim_rules(self) -> ClaimRules:
        """What the marketplace lets a checkpoint claim (detected once, see :func:`fabstir.chain.jobs.claim_rules`)."""
        if self._rules is None:
            self._rules = await jobs.claim_rules(self.market)
        return self._rules

    async def submit_checkpoint(self, job_id: int, tokens: int, proof_hash: bytes, proof_cid: str = "") -> None:
        """``submitProofOfWork`` for ``tokens`` more tokens, signed by the host where the contract wants it.

        Raises:
            ContractError: the marketplace refused (too early: "Excessive tokens claimed", deposit
                exceeded, settled job...).
        """
        await jobs.submit_checkpoint(self.market, self.account, job_id, tokens, proof_hash, proof_cid,
                                form=await self.proof_form())

    async def complete(self, job_id: int) -> None:
        """``completeSessionJob`` as the host (allowed once the dispute window has passed)."""
        await jobs.complete_session_job(self.market, self.account, job_id, f"session_job_{job_id}_completed")

    async def dispute_window(self) -> int:
        return await jobs.dispute_window(self.market)
