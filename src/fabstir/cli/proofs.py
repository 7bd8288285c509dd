"""``fabstir proofs JOB``: a job's checkpoint proofs (issue 14 P3), from the chain or from a host's history.

From the chain (``--network``): every proof that verified on chain, with its tokens, transaction and
commitment. With ``--history FILE`` (a node's ``proofs.db``, next to its ledger): every proof the host made,
with its outcome (verified, rejected with the contract's reason, failed) and proving time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any, Optional

import typer

__all__ = ["register", "run_proofs"]


def register(app: typer.Typer) -> None:
    app.command("proofs", help="a job's checkpoint proofs: tokens, transaction, verification result")(proofs)


def proofs(
    job: Annotated[int, typer.Argument(metavar="JOB", help="the session job id")],
    network: Annotated[Optional[str], typer.Option(metavar="FILE", help="network file: the proofs verified on "
                                                                        "chain")] = None,
    history: Annotated[Optional[str], typer.Option(metavar="FILE", help="a node's proof history (proofs.db): "
                                                                        "every proof it made, refused ones too")] = None,
    json: Annotated[bool, typer.Option("--json", help="print JSON (one line) instead of a table")] = False,
) -> int:
    return asyncio.run(run_proofs(job, network=network, history=history, as_json=json))


async def run_proofs(job: int, *, network: str | None, history: str | None, as_json: bool) -> int:
    from fabstir.cli.output import print_json, print_table, table
    from fabstir.errors import ConfigError

    if (network is None) == (history is None):
        raise ConfigError("give --network FILE (proofs verified on chain) or --history FILE (a node's history)")
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    if history is not None:
        from fabstir.zk.history import ProofHistory

        store = ProofHistory(history)
        try:
            rows = [record.to_dict() for record in store.for_job(job)]
        finally:
            store.close()
        columns = ("tokens", "status", "tx_hash", "gas_used", "prove_s", "proof_bytes", "error")
        title = f"{len(rows)} checkpoint proof(s) of job {job} in {history}"
    else:
        from fabstir.chain.backend import Chain
        from fabstir.chain.network import NetworkConfig
        from fabstir.sdk import FabstirSDK

        config = NetworkConfig.load(network or "")
        chain = Chain.connect(config.rpc_url)
        try:
            async with FabstirSDK(chain=chain, deployment=config.deployment) as sdk:
                rows = [dataclasses.asdict(entry) for entry in await sdk.proofs.history(job)]
        finally:
            chain.close()
        columns = ("tokens", "verified", "tx_hash", "block_number", "commitment")
        title = f"{len(rows)} checkpoint proof(s) of job {job} verified on chain"
    if as_json:
        print_json(rows)
        return 0
    listing = table(*columns, title=title, right=("tokens", "gas_used", "prove_s", "proof_bytes", "block_number"))
    for row in rows:
        listing.add_row(*(_cell(row[name]) for name in columns))
    print_table(listing)
    return 0


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value) if value not in ("", None) else "-"
