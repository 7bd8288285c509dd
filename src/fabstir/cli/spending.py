"""``fabstir sessions`` and ``fabstir spend``: a depositor's session jobs and what they cost, from the chain."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from fabstir.errors import ConfigError

__all__ = ["add_spending_parsers", "run_spending"]


def add_spending_parsers(commands: Any) -> None:
    for name, text in (("sessions", "a depositor's session jobs: status, host, tokens, cost, refund"),
                       ("spend", "what a depositor's sessions cost, per day, host and model")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--network", required=True, help="network file (fabstir devnet up writes one)")
        sub.add_argument("--depositor", help="address to look up (default: the client key's)")
        sub.add_argument("--account", help="a named account of the network file (development networks)")
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
                    print(json.dumps([dataclasses.asdict(s) for s in sessions]))
                    return 0
                print(f"{len(sessions)} session(s) of {depositor}")
                print(f"{'job':>6} {'status':10} {'host':42} {'tokens':>8} {'cost':>22} {'refund':>22} token")
                for s in sessions:
                    refund = "-" if s.refund is None else str(s.refund)
                    print(f"{s.job_id:>6} {s.status:10} {s.host:42} {s.tokens_used:>8} {s.cost:>22} {refund:>22} "
                          f"{s.payment_token or 'ETH'}")
                return 0
            spending = await sdk.sessions.spend(depositor)
    finally:
        chain.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(spending)))
        return 0
    print(f"{spending.sessions} session(s) of {depositor}; costs in base units of each payment token")
    for unit, amount in spending.total.items():
        print(f"  total {unit}: {amount} for {spending.tokens.get(unit, 0)} tokens")
    for title, table in (("per day", spending.by_day), ("per host", spending.by_host),
                         ("per model", spending.by_model)):
        print(f"{title}:")
        for key, amounts in table.items():
            print(f"  {key:66} " + ", ".join(f"{amount} {unit}" for unit, amount in amounts.items()))
    return 0
