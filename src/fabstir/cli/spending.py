"""``fabstir sessions`` and ``fabstir spend``: a depositor's session jobs and what they cost, from the chain."""

from __future__ import annotations

import argparse
import dataclasses
import os

from fabstir.cli.output import print_json, print_table, table
from fabstir.errors import ConfigError

__all__ = ["run_spending"]


def _depositor(args: argparse.Namespace, accounts: dict[str, str]) -> str:
    if args.depositor:
        return str(args.depositor)
    from eth_account import Account

    key = accounts.get(args.account) if args.account else os.environ.get("FABSTIR_CLIENT_KEY")
    if args.account and key is None:
        raise ConfigError(f"no account named {args.account!r} in the network file")
    if not key:
        raise ConfigError("give --depositor ADDRESS, --account NAME or the key in $FABSTIR_CLIENT_KEY")
    return str(Account.from_key(key).address)


async def run_spending(args: argparse.Namespace) -> int:
    from fabstir.chain.backend import Chain
    from fabstir.chain.network import NetworkConfig
    from fabstir.sdk import FabstirSDK

    network = NetworkConfig.load(args.network)
    depositor = _depositor(args, network.accounts)
    chain = Chain.connect(network.rpc_url)
    try:
        async with FabstirSDK(chain=chain, deployment=network.deployment) as sdk:
            if args.command == "sessions":
                sessions = await sdk.sessions.list_sessions(depositor)
                if args.json:
                    print_json([dataclasses.asdict(s) for s in sessions])
                    return 0
                listing = table("job", "status", "host", "model", "tokens", "cost", "refund", "token",
                                title=f"{len(sessions)} session(s) of {depositor} (cost and refund in base units)",
                                right=("job", "tokens", "cost", "refund"))
                for s in sessions:
                    listing.add_row(str(s.job_id), s.status, s.host, _short(s.model), str(s.tokens_used), str(s.cost),
                                    "-" if s.refund is None else str(s.refund), s.payment_token or "ETH")
                print_table(listing)
                return 0
            spending = await sdk.sessions.spend(depositor)
    finally:
        chain.close()
    if args.json:
        print_json(dataclasses.asdict(spending))
        return 0
    units = sorted(spending.total)
    totals = table("unit", "cost", "tokens", title=f"{spending.sessions} session(s) of {depositor}; costs in base "
                   "units of each payment token", right=("cost", "tokens"))
    for unit in units:
        totals.add_row(unit, str(spending.total[unit]), str(spending.tokens.get(unit, 0)))
    print_table(totals)
    for title, column, rows in (("per day", "day", spending.by_day), ("per host", "host", spending.by_host),
                                ("per model", "model", spending.by_model)):
        breakdown = table(column, *units, title=title, right=units)
        for key, amounts in rows.items():
            breakdown.add_row(key, *(str(amounts.get(unit, 0)) for unit in units))
        print_table(breakdown)
    return 0


def _short(model: str | None) -> str:
    """A model id as shown in a table: the 0x id shortened (the JSON keeps it whole)."""
    if model is None:
        return "-"
    return model[:10] + "…" if model.startswith("0x") and len(model) > 14 else model
