"""Substitution disputes on chain (issue 14 P2): the validator's report slashes a host caught serving another model.

Our marketplace (feature bit :data:`~fabstir.chain.proofs.FEATURE_SUBSTITUTION_DISPUTES`) acts on reports from
one validator its owner appoints (``setSubstitutionValidator``). ``reportSubstitution(jobId, evidenceHash,
evidenceUri)`` on an active job closes it with the host paid nothing and pushes the whole deposit back to the
depositor; on a job that settled at most ``substitutionReportWindow`` seconds ago (the host completed it before
the report came) the payment stays where it went. Either way ``SUBSTITUTION_SLASH_BPS`` of the NodeRegistry's
``MIN_STAKE`` (at most what the host has) moves from the host's stake to the depositor, also from stake still
unbonding after the host unregistered (``stakeUnbondingPeriod``), so leaving does not save a caught host's
stake. A job is reported once. Each report leaves a ``SubstitutionReported`` event, the public record of the
evidence (its hash and where it lies). The chain cannot check the evidence: the validator is trusted
(docs/proofs.md, "Disputes on chain").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from fabstir.chain.contracts import Marketplace

__all__ = [
    "SubstitutionReport",
    "report_substitution",
    "set_substitution_report_window",
    "set_substitution_validator",
    "slash_amount",
    "substitution_evidence",
    "substitution_report_window",
    "substitution_reports",
    "substitution_validator",
]


@dataclasses.dataclass(frozen=True)
class SubstitutionReport:
    """One ``SubstitutionReported`` event: an upheld report on ``job_id``."""

    job_id: int
    host: str
    validator: str
    evidence_hash: bytes
    evidence_uri: str
    slashed: int
    """Stake moved from the host to the depositor (stake-token base units)."""
    tx_hash: str
    block_number: int
    refund: int | None = dataclasses.field(default=None, compare=False)
    """The deposit the report pushed back (it closed an active job); 0 when the job had settled before (its
    payment stands); ``None`` when read from logs (:func:`substitution_reports`)."""


async def set_substitution_validator(market: Marketplace, owner: LocalAccount, validator: str | None) -> str:
    """Appoint ``validator`` (``None``: nobody; reports are refused). ``owner`` owns the marketplace; returns the
    transaction hash.

    Raises:
        ContractError: "Only owner".
    """
    address = Web3.to_checksum_address(validator) if validator else "0x" + "00" * 20
    receipt = await market.chain.transact(owner, market.marketplace.functions.setSubstitutionValidator(address))
    return _hex(receipt["transactionHash"])


async def substitution_validator(market: Marketplace) -> str | None:
    """The appointed validator (``None``: none)."""
    address = str(await market.chain.call(market.marketplace.functions.substitutionValidator()))
    return None if int(address, 16) == 0 else address


async def substitution_report_window(market: Marketplace) -> int:
    """Seconds after settlement during which a job may still be reported (its host is then only slashed)."""
    return int(await market.chain.call(market.marketplace.functions.substitutionReportWindow()))


async def set_substitution_report_window(market: Marketplace, owner: LocalAccount, seconds: int) -> None:
    """Set :func:`substitution_report_window`; ``owner`` owns the marketplace.

    Raises:
        ContractError: "Only owner".
    """
    await market.chain.transact(owner, market.marketplace.functions.setSubstitutionReportWindow(seconds))


async def slash_amount(market: Marketplace) -> int:
    """What an upheld report slashes from a host with enough stake: ``MIN_STAKE x SUBSTITUTION_SLASH_BPS / 10000``."""
    min_stake = int(await market.chain.call(market.node_registry.functions.MIN_STAKE()))
    share = int(await market.chain.call(market.marketplace.functions.SUBSTITUTION_SLASH_BPS()))
    return min_stake * share // 10_000


async def report_substitution(market: Marketplace, validator: LocalAccount, job_id: int, evidence_hash: bytes,
                              evidence_uri: str = "") -> SubstitutionReport:
    """``reportSubstitution``: slash ``job_id``'s host; an active job also closes unpaid, its deposit refunded.

    Raises:
        ContractError: "Only validator", "Already reported", "Report window over" (settled longer ago than
            :func:`substitution_report_window`), "Session not found", "No evidence" (a zero hash).
    """
    call = market.marketplace.functions.reportSubstitution(job_id, evidence_hash, evidence_uri)
    receipt = await market.chain.transact(validator, call)
    events = market.marketplace.events
    logs = events.SubstitutionReported().process_receipt(receipt, errors=DISCARD)
    closed = events.SessionCompleted().process_receipt(receipt, errors=DISCARD)
    refund = int(closed[0]["args"]["userRefund"]) if closed else 0
    return dataclasses.replace(_report(logs[0]), refund=refund)


async def substitution_evidence(market: Marketplace, job_id: int) -> bytes | None:
    """The evidence hash of the report that closed ``job_id`` (``None``: it was not reported)."""
    value = bytes(await market.chain.call(market.marketplace.functions.substitutionEvidence(job_id)))
    return None if not any(value) else value


async def substitution_reports(market: Marketplace, job_id: int | None = None,
                               from_block: int = 0) -> list[SubstitutionReport]:
    """Upheld reports (``SubstitutionReported`` logs), of ``job_id`` or of every job, in chain order."""
    event = market.marketplace.events.SubstitutionReported

    def fetch() -> list[SubstitutionReport]:
        filters = {} if job_id is None else {"jobId": job_id}
        logs = event().get_logs(from_block=from_block, argument_filters=filters)
        return [_report(log) for log in sorted(logs, key=lambda log: (int(log["blockNumber"]), int(log["logIndex"])))]

    return await market.chain.run(fetch)


def _report(log: Any) -> SubstitutionReport:
    args = log["args"]
    return SubstitutionReport(int(args["jobId"]), str(args["host"]), str(args["validator"]),
                              bytes(args["evidenceHash"]), str(args["evidenceUri"]), int(args["slashed"]),
                              _hex(log["transactionHash"]), int(log["blockNumber"]))


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()
