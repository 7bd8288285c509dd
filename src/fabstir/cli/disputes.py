"""``fabstir dispute substitution JOB --record FILE --model PATH --network FILE``: the validator's on-chain report;
``fabstir dispute validator [ADDRESS] --network FILE``: the marketplace owner appoints (or shows) the validator.

Runs the same check as ``fabstir verify`` on the answer record; only when the host is caught does it send the
job's ``reportSubstitution`` (the job closes unpaid, the deposit goes back in full, the host's stake is slashed).
The validator's key is ``--account NAME`` of the network file or ``$FABSTIR_VALIDATOR_KEY``. Exit codes: 0 the
answer is honest (nothing sent), 3 caught and reported, 1 a coded error (a refused report among them), 2 usage.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any, Optional

import typer

from fabstir.cli.verify import CAUGHT

__all__ = ["register", "run_substitution"]


def register(app: typer.Typer) -> None:
    dispute = typer.Typer(help="disputes on chain: a validator's report of a caught model substitution",
                          no_args_is_help=True)
    dispute.command("substitution", help="verify an answer record and, when its host is caught, report the job "
                                         "on chain (refund + stake slash); exit 0 honest, 3 reported")(substitution)
    dispute.command("validator", help="show the substitution validator, or appoint ADDRESS (the marketplace "
                                      "owner's key: --account NAME or $FABSTIR_OWNER_KEY)")(validator)
    app.add_typer(dispute, name="dispute")


def validator(
    network: Annotated[str, typer.Option(metavar="FILE", help="network file (fabstir devnet up writes one)")],
    address: Annotated[Optional[str], typer.Argument(metavar="ADDRESS", help="the validator to appoint (omit to "
                                                                            "show the current one)")] = None,
    account: Annotated[Optional[str], typer.Option(metavar="NAME", help="the owner: a named account of the "
                                                                        "network file (default: "
                                                                        "$FABSTIR_OWNER_KEY)")] = None,
    json: Annotated[bool, typer.Option("--json", help="print JSON (one line)")] = False,
) -> int:
    return asyncio.run(run_validator(address, network=network, account=account, as_json=json))


async def run_validator(address: str | None, *, network: str, account: str | None, as_json: bool) -> int:
    from fabstir.chain.contracts import Marketplace
    from fabstir.chain.network import NetworkConfig
    from fabstir.chain.substitution import set_substitution_validator, substitution_validator
    from fabstir.cli.output import print_json

    config = NetworkConfig.load(network)
    owner = _signer(config.accounts, account, "FABSTIR_OWNER_KEY", "the marketplace owner") if address else None
    chain = config.connect()
    try:
        market = Marketplace(chain, config.deployment)
        tx_hash = await set_substitution_validator(market, owner, address) if owner is not None else None
        current = await substitution_validator(market)
    finally:
        chain.close()
    if as_json:
        print_json({"validator": current, "tx_hash": tx_hash})
    else:
        print(f"substitution validator: {current or 'none (reports are refused)'}"
              + (f" (appointed in tx {tx_hash})" if tx_hash else ""))
    return 0


def _signer(accounts: dict[str, str], name: str | None, variable: str, role: str) -> Any:
    from eth_account import Account

    from fabstir.errors import ConfigError

    secret = accounts.get(name) if name else os.environ.get(variable)
    if name and secret is None:
        raise ConfigError(f"no account named {name!r} in the network file")
    if not secret:
        raise ConfigError(f"give --account NAME or {role}'s key in ${variable}")
    return Account.from_key(secret)


def substitution(
    job: Annotated[int, typer.Argument(metavar="JOB", help="the session job id the answer was served under")],
    record: Annotated[str, typer.Option(metavar="FILE", help="answer record (JSON: prompt, answer, receipt)")],
    model: Annotated[str, typer.Option(metavar="PATH", help="GGUF file of the model the job names")],
    network: Annotated[str, typer.Option(metavar="FILE", help="network file (fabstir devnet up writes one)")],
    account: Annotated[Optional[str], typer.Option(metavar="NAME", help="the validator: a named account of the "
                                                                        "network file (default: "
                                                                        "$FABSTIR_VALIDATOR_KEY)")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="llama.cpp threads (default: all cores)")] = None,
    key: Annotated[Optional[str], typer.Option(metavar="HEX", help="the host's published Ed25519 key: the "
                                                                   "receipt must be signed by it")] = None,
    evidence_out: Annotated[Optional[str], typer.Option(metavar="FILE", help="write the evidence JSON here (to "
                                                                             "publish at --evidence-uri)")] = None,
    evidence_uri: Annotated[str, typer.Option(metavar="URI", help="where the evidence is published (recorded "
                                                                  "on chain)")] = "",
    json: Annotated[bool, typer.Option("--json", help="print JSON (one line)")] = False,
) -> int:
    return asyncio.run(run_substitution(job, record_path=record, model=model, network=network, account=account,
                                        threads=threads, key=key, evidence_out=evidence_out,
                                        evidence_uri=evidence_uri, as_json=json))


async def run_substitution(job: int, *, record_path: str, model: str, network: str, account: str | None,
                           threads: int | None, key: str | None, evidence_out: str | None, evidence_uri: str,
                           as_json: bool) -> int:
    from fabstir.chain.network import NetworkConfig
    from fabstir.cli.output import print_json
    from fabstir.fingerprints import Verifier
    from fabstir.sdk import FabstirSDK
    from fabstir.sdk.disputes import evidence_hash, report_substitution, save_evidence, substitution_evidence
    from fabstir.sdk.verification import load_record, verify_record

    config = NetworkConfig.load(network)
    reporter = _signer(config.accounts, account, "FABSTIR_VALIDATOR_KEY", "the validator")
    record = load_record(record_path)
    with Verifier(model, threads=threads) as verifier:
        verdict = verify_record(verifier, record, expected_key=key)
    result: dict[str, Any] = {"job_id": job, "honest": verdict.honest, "reason": verdict.reason, "model": model,
                              "reported": False}
    if not verdict.honest:
        evidence = substitution_evidence(config.deployment.chain_id, config.deployment.marketplace, job, record,
                                         verdict)
        if evidence_out is not None:
            save_evidence(evidence_out, evidence)
        chain = config.connect()
        try:
            async with FabstirSDK(chain=chain, deployment=config.deployment, account=reporter) as sdk:
                report = await report_substitution(sdk, job, record, verdict, evidence_uri=evidence_uri)
        finally:
            chain.close()
        result.update(reported=True, tx_hash=report.tx_hash, host=report.host, slashed=report.slashed,
                      refund=report.refund, evidence_hash="0x" + evidence_hash(evidence).hex(),
                      evidence_uri=report.evidence_uri)
    if as_json:
        print_json(result)
    elif verdict.honest:
        print(f"honest: the answer's fingerprint matches {model}; nothing reported")
    else:
        print(f"CAUGHT: {verdict.reason}")
        settlement = ("deposit refunded in full" if result["refund"]
                      else "the job had settled before the report: its payment stands")
        print(f"reported job {job} on chain: tx {result['tx_hash']}, host {result['host']} slashed "
              f"{result['slashed']} (stake-token base units), {settlement}")
    return 0 if verdict.honest else CAUGHT
