"""Session jobs on the JobMarketplace: open, read, checkpoint, settle, and their events.

Typed wrappers that the SDK (the depositor's side) and the node (the host's side) both use, so every
marketplace call is written once, here. Each awaits :class:`~fabstir.chain.backend.Chain`'s worker thread,
never the event loop, and turns a revert into :class:`~fabstir.errors.ContractError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from fabstir.chain.contracts import Marketplace
from fabstir.chain.money import EXACT_RULES, PUBLIC_RULES, ClaimRules
from fabstir.chain.proofs import (
    FEATURE_EXACT_BILLING,
    FEATURE_USAGE_COUNTERSIGN,
    ProofForm,
    detect_proof_form_sync,
    has_features_getter_sync,
    sign_proof,
)
from fabstir.chain.records import SessionJob
from fabstir.chain.tokens import ensure_allowance
from fabstir.chain.usage import UsageAck, UsageRecord
from fabstir.errors import ContractError

__all__ = [
    "SessionEvent",
    "complete_session_job",
    "claim_rules",
    "create_session_job",
    "detect_proof_form",
    "depositor_job_ids",
    "dispute_usage",
    "dispute_window",
    "fee_basis_points",
    "get_session_job",
    "is_proof_recorded",
    "marketplace_features",
    "session_events",
    "submit_checkpoint",
    "submit_countersigned_checkpoint",
    "trigger_session_timeout",
    "usage_record",
]


@dataclasses.dataclass(frozen=True)
class SessionEvent:
    """One marketplace event about a session (``name`` is the Solidity event name)."""

    name: str
    job_id: int
    block_number: int
    tx_hash: str
    args: dict[str, Any]


async def get_session_job(market: Marketplace, job_id: int) -> SessionJob:
    """The job as stored (``sessionJobs`` and ``sessionModel``); ``exists`` is false for an unknown id."""
    functions = market.marketplace.functions
    row = await market.chain.call(functions.sessionJobs(job_id))
    model = await market.chain.call(functions.sessionModel(job_id))
    return SessionJob.from_getter(row, model)


async def create_session_job(market: Marketplace, depositor: LocalAccount, host: str, model: bytes | None, *,
                             deposit: int, price_per_token: int, max_duration: int, proof_interval: int,
                             token: str | None = None) -> int:
    """Open a session job with ``deposit`` in escrow; returns its id.

    ``token=None`` pays in ETH; an ERC-20 address pays in that token, approved first when the allowance is
    short. ``model=None`` opens a job for no particular model.

    Raises:
        ContractError: the marketplace refused (e.g. ``reason == "Price below host minimum for model"``).
    """
    functions = market.marketplace.functions
    host = Web3.to_checksum_address(host)
    if token is None:
        call = (functions.createSessionJobForModel(host, model, price_per_token, max_duration, proof_interval)
                if model else functions.createSessionJob(host, price_per_token, max_duration, proof_interval))
        receipt = await market.chain.transact(depositor, call, value=deposit)
    else:
        token = Web3.to_checksum_address(token)
        await ensure_allowance(market.chain, depositor, market.token(token), market.marketplace.address, deposit)
        call = (functions.createSessionJobForModelWithToken(host, model, token, deposit, price_per_token,
                                                            max_duration, proof_interval)
                if model else
                functions.createSessionJobWithToken(host, token, deposit, price_per_token, max_duration,
                                                    proof_interval))
        receipt = await market.chain.transact(depositor, call)
    created = market.marketplace.events.SessionJobCreated().process_receipt(receipt, errors=DISCARD)
    if not created:
        raise ContractError("createSession mined without a SessionJobCreated event", function="createSession")
    return int(created[0]["args"]["jobId"])


async def detect_proof_form(market: Marketplace) -> ProofForm:
    """Which ``submitProofOfWork`` the marketplace speaks (see :func:`~fabstir.chain.proofs.detect_proof_form_sync`).

    Raises:
        ChainError: there is no contract at the marketplace's address (code ``NO_CONTRACT``).
    """
    return await market.chain.run(detect_proof_form_sync, market.chain.w3, market.marketplace.address)


async def marketplace_features(market: Marketplace) -> int:
    """The ``FEATURE_*`` bits of :mod:`fabstir.chain.proofs` the marketplace has (0 for the public contracts,
    which lack ``marketplaceFeatures``: its selector is looked for in the code before it is called).

    Raises:
        ChainError: there is no contract at the marketplace's address (code ``NO_CONTRACT``).
    """
    if not await market.chain.run(has_features_getter_sync, market.chain.w3, market.marketplace.address):
        return 0
    return int(await market.chain.call(market.marketplace.functions.marketplaceFeatures()))


async def claim_rules(market: Marketplace) -> ClaimRules:
    """What the marketplace lets a checkpoint claim: :data:`~fabstir.chain.money.EXACT_RULES` on ours,
    :data:`~fabstir.chain.money.PUBLIC_RULES` (100-token minimum, minimum charge) elsewhere."""
    features = await marketplace_features(market)
    if not features & FEATURE_EXACT_BILLING:
        return PUBLIC_RULES
    return dataclasses.replace(EXACT_RULES, countersigned=bool(features & FEATURE_USAGE_COUNTERSIGN))


async def submit_checkpoint(market: Marketplace, host: LocalAccount, job_id: int, tokens: int, proof_hash: bytes,
                            proof_cid: str = "", *, form: ProofForm = ProofForm.SIGNED) -> None:
    """``submitProofOfWork`` claiming ``tokens`` more tokens, in ``form``: signed by ``host`` (the reference
    form), or the older unsigned one.

    Raises:
        ContractError: the marketplace refused (too early: "Excessive tokens claimed", deposit exceeded,
            settled job...).
    """
    functions = market.marketplace.functions
    if form is ProofForm.SIGNED:
        signature = sign_proof(host, proof_hash, tokens)
        call = functions.submitProofOfWork(job_id, tokens, proof_hash, signature, proof_cid, "")
    else:
        call = functions.submitProofOfWork(job_id, tokens, proof_hash, proof_cid, "")
    await market.chain.transact(host, call)


async def submit_countersigned_checkpoint(market: Marketplace, host: LocalAccount, ack: UsageAck,
                                          proof_hash: bytes, proof_cid: str = "") -> None:
    """``submitCountersignedProof``: claim up to ``ack.tokens`` in total with the depositor's countersignature
    (ours only; accepted at once).

    Raises:
        ContractError: refused ("Invalid usage signature", "Not above acknowledged usage", "Exceeds deposit"...).
    """
    call = market.marketplace.functions.submitCountersignedProof(ack.job_id, ack.tokens, ack.transcript_hash,
                                                                 proof_hash, ack.signature, proof_cid, "")
    await market.chain.transact(host, call)


async def dispute_usage(market: Marketplace, depositor: LocalAccount, job_id: int, tokens: int,
                        transcript_hash: bytes) -> None:
    """``disputeUsage``: the depositor answers provisional claims with its own lower count (ours only).

    Raises:
        ContractError: refused ("No claim in dispute window", "Below acknowledged usage", "Not below claimed
            usage", "Only depositor").
    """
    call = market.marketplace.functions.disputeUsage(job_id, tokens, transcript_hash)
    await market.chain.transact(depositor, call)


async def usage_record(market: Marketplace, job_id: int) -> UsageRecord:
    """The job's consented usage as the marketplace holds it (ours only)."""
    acknowledged, disputed, transcript = await market.chain.call(market.marketplace.functions.usage(job_id))
    return UsageRecord(int(acknowledged), bool(disputed), bytes(transcript))


async def is_proof_recorded(market: Marketplace, proof_hash: bytes) -> bool:
    """Whether the ProofSystem has recorded ``proof_hash`` (``verifiedProofs``)."""
    return bool(await market.chain.call(market.proof_system.functions.verifiedProofs(proof_hash)))


async def complete_session_job(market: Marketplace, account: LocalAccount, job_id: int,
                               conversation_cid: str = "") -> None:
    """``completeSessionJob``: settle now (the depositor at any time, the host after the dispute window).

    Raises:
        ContractError: the marketplace refused (e.g. ``"Must wait dispute window"``, already settled).
    """
    await market.chain.transact(account, market.marketplace.functions.completeSessionJob(job_id, conversation_cid))


async def trigger_session_timeout(market: Marketplace, account: LocalAccount, job_id: int) -> None:
    """``triggerSessionTimeout``: settle an expired or abandoned session (anyone, once it timed out).

    Raises:
        ContractError: the session has not timed out, or is settled.
    """
    await market.chain.transact(account, market.marketplace.functions.triggerSessionTimeout(job_id))


async def fee_basis_points(market: Marketplace) -> int:
    """The treasury's fee in basis points of the host's payment."""
    return int(await market.chain.call(market.marketplace.functions.feeBasisPoints()))


async def dispute_window(market: Marketplace) -> int:
    """Seconds after the last checkpoint before the host may complete a job."""
    return int(await market.chain.call(market.marketplace.functions.disputeWindow()))


async def session_events(market: Marketplace, job_id: int, from_block: int = 0) -> list[SessionEvent]:
    """Creation, checkpoints and settlement (``SessionCompleted`` or ``SessionTimedOut``) of ``job_id``, in
    chain order, with the public contracts' fields."""
    events = market.marketplace.events
    kinds = (events.SessionJobCreated, events.ProofSubmitted, events.SessionCompleted, events.SessionTimedOut)

    def fetch() -> list[tuple[int, int, SessionEvent]]:
        found: list[tuple[int, int, SessionEvent]] = []
        for kind in kinds:
            for log in kind().get_logs(from_block=from_block, argument_filters={"jobId": job_id}):
                event = SessionEvent(str(log["event"]), job_id, int(log["blockNumber"]),
                                     log["transactionHash"].hex(), dict(log["args"]))
                found.append((event.block_number, int(log["logIndex"]), event))
        return sorted(found, key=lambda item: item[:2])

    return [event for _, _, event in await market.chain.run(fetch)]


async def depositor_job_ids(market: Marketplace, depositor: str, from_block: int = 0) -> list[int]:
    """The ids of the session jobs ``depositor`` opened (``SessionJobCreated`` logs), oldest first."""
    created = market.marketplace.events.SessionJobCreated

    def fetch() -> list[int]:
        logs = created().get_logs(from_block=from_block, argument_filters={"depositor": depositor})
        return sorted({int(log["args"]["jobId"]) for log in logs})

    return await market.chain.run(fetch)
