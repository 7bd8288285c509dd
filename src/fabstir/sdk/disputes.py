"""A validator's dispute of a caught model substitution, on chain (issue 14 P2).

The validator checks an answer record with the named model (:mod:`fabstir.sdk.verification`); when the host is
caught, :func:`report_substitution` sends the job's ``reportSubstitution`` with the hash of the evidence: the
record (rendered prompt, answer, the host's signed receipt with its fingerprint) and the verdict, bound to this
chain, marketplace and job (:func:`substitution_evidence`). Anyone holding the named model can re-check that
evidence; the chain keeps only its hash and where it was published. See docs/proofs.md, "Disputes on chain".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from web3 import Web3

from fabstir.chain import jobs
from fabstir.chain.proofs import FEATURE_SUBSTITUTION_DISPUTES
from fabstir.chain.substitution import SubstitutionReport
from fabstir.chain.substitution import report_substitution as send_report
from fabstir.errors import ConfigError
from fabstir.fingerprints import Verdict

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["EVIDENCE_FORMAT", "evidence_hash", "report_substitution", "save_evidence", "substitution_evidence"]

EVIDENCE_FORMAT = "fabstir-substitution-evidence-v1"


def substitution_evidence(chain_id: int, marketplace: str, job_id: int, record: dict[str, Any],
                          verdict: Verdict) -> dict[str, Any]:
    """The evidence of a caught substitution as JSON: the answer record and the verdict, bound to the job."""
    return {"format": EVIDENCE_FORMAT, "chain_id": chain_id, "marketplace": Web3.to_checksum_address(marketplace),
            "job_id": job_id, "record": record, "verdict": verdict.to_json()}


def evidence_hash(evidence: dict[str, Any]) -> bytes:
    """keccak256 of the evidence's canonical JSON (sorted keys, no spaces, UTF-8): what the chain records."""
    canonical = json.dumps(evidence, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return bytes(Web3.keccak(canonical.encode("utf-8")))


def save_evidence(path: str | os.PathLike[str], evidence: dict[str, Any]) -> Path:
    """Write the evidence (UTF-8 JSON) for publication at the report's evidence URI."""
    target = Path(path)
    target.write_text(json.dumps(evidence, ensure_ascii=False, sort_keys=True, indent=1), encoding="utf-8")
    return target


async def report_substitution(sdk: FabstirSDK, job_id: int, record: dict[str, Any], verdict: Verdict, *,
                              evidence_uri: str = "") -> SubstitutionReport:
    """Report that ``job_id``'s host served another model: ``sdk.account`` must be the appointed validator.

    On success the host's stake is slashed to the depositor; an active job is also closed unpaid with its
    deposit refunded in full (a job its host already settled keeps its settlement: it can be reported for
    :func:`fabstir.chain.substitution.substitution_report_window` seconds after it settled).

    Raises:
        ConfigError: DISPUTE_NOT_CAUGHT, the verdict is honest; DISPUTE_WRONG_HOST, the receipt is not the job
            host's; DISPUTES_UNSUPPORTED, the marketplace lacks FEATURE_SUBSTITUTION_DISPUTES; CONFIG_ERROR, the
            SDK has no chain or account.
        ContractError: refused on chain ("Only validator", "Already reported", "Report window over",
            "Session not found").
    """
    if verdict.honest:
        raise ConfigError(f"job {job_id}: the answer matches the named model; nothing to report",
                          code="DISPUTE_NOT_CAUGHT")
    market = sdk.marketplace
    validator = sdk.require_account()
    if not await jobs.marketplace_features(market) & FEATURE_SUBSTITUTION_DISPUTES:
        raise ConfigError("this marketplace takes no substitution reports (no FEATURE_SUBSTITUTION_DISPUTES)",
                          code="DISPUTES_UNSUPPORTED")
    job = await jobs.get_session_job(market, job_id)
    signer = str(record.get("receipt", {}).get("host") or "")
    if signer.lower() != job.host.lower():
        raise ConfigError(f"the record's receipt names host {signer or '(none)'}, job {job_id}'s host is "
                          f"{job.host}", code="DISPUTE_WRONG_HOST")
    evidence = substitution_evidence(market.chain.chain_id, market.deployment.marketplace, job_id, record, verdict)
    return await send_report(market, validator, job_id, evidence_hash(evidence), evidence_uri)
