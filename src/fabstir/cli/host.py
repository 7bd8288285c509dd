"""``fabstir node register | unregister | withdraw-stake | earnings | withdraw``: the host's on-chain chores."""

from __future__ import annotations

import argparse
import datetime
import os

import coincurve
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir.chain.contracts import Marketplace
from fabstir.chain.metadata import build_host_metadata
from fabstir.chain.money import format_units
from fabstir.chain.network import NetworkConfig
from fabstir.cli.output import print_json
from fabstir.errors import ConfigError
from fabstir.keys import load_signing_key
from fabstir.node.config import check_host_key
from fabstir.node.registration import (
    earnings,
    register_host,
    unregister_host,
    withdraw_earnings,
    withdraw_unbonded_stake,
)
from fabstir.sdk.sessions import resolve_model_id

__all__ = ["run_host_command"]


def _host_account(args: argparse.Namespace, network: NetworkConfig) -> LocalAccount:
    named = network.accounts.get(args.account) if args.account else None
    key = args.key or named or os.environ.get("FABSTIR_NODE_HOST_KEY")
    if not key:
        raise ConfigError("give the host key with --key, --account NAME or $FABSTIR_NODE_HOST_KEY")
    check_host_key(key)
    account: LocalAccount = Account.from_key(key)
    return account


def _report(args: argparse.Namespace, data: dict[str, object], text: str) -> None:
    """One line: ``text``, or ``data`` as JSON (amounts in base units) with ``--json``."""
    if getattr(args, "json", False):
        print_json(data)
    else:
        print(text)


async def run_host_command(args: argparse.Namespace) -> int:
    network = NetworkConfig.load(args.network)
    host = _host_account(args, network)  # checked before connecting to anything
    chain = network.connect()
    try:
        market = Marketplace(chain, network.deployment)
        if args.node_command == "register":
            public_key = args.public_key or coincurve.PrivateKey(bytes(host.key)).public_key.format(True).hex()
            signing = load_signing_key(args.signing_key_file).verify_key.encode().hex() \
                if args.signing_key_file else None
            metadata = build_host_metadata(args.name, models=args.models, publicKey=public_key,
                                           ed25519PublicKey=signing)
            stake = await register_host(market, host, metadata=metadata, api_url=args.api_url,
                                        models=[m for m in (resolve_model_id(x) for x in args.models) if m],
                                        min_price_native=args.price_native, min_price_stable=args.price_stable)
            _report(args, {"host": host.address, "api_url": args.api_url, "stake": stake},
                    f"registered {host.address} at {args.api_url} with a stake of {format_units(stake, 18, 'FAB')}")
        elif args.node_command == "unregister":
            left = await unregister_host(market, host)
            released = format_units(left.stake, 18, "FAB")
            if left.unbonding_until is None:
                text = f"unregistered {host.address}; stake returned: {released}"
            else:
                until = datetime.datetime.fromtimestamp(left.unbonding_until, datetime.timezone.utc)
                text = (f"unregistered {host.address}; stake of {released} unbonding (slashable) until "
                        f"{until:%Y-%m-%d %H:%M} UTC: then `fabstir node withdraw-stake`")
            _report(args, {"host": host.address, "stake": left.stake, "unbonding_until": left.unbonding_until,
                           "stake_returned": left.stake if left.unbonding_until is None else 0}, text)
        elif args.node_command == "withdraw-stake":
            amount = await withdraw_unbonded_stake(market, host)
            _report(args, {"host": host.address, "amount": amount},
                    f"withdrew the unbonded stake of {format_units(amount, 18, 'FAB')} to {host.address}")
        elif args.node_command == "earnings":
            owed = await earnings(market, host.address)
            _report(args, {"host": host.address, "native": owed.native, "stable": owed.stable},
                    f"{host.address} may withdraw {format_units(owed.native, 18, 'ETH')} and "
                    f"{format_units(owed.stable, 6, 'USDC')}")
        else:
            amount = await withdraw_earnings(market, host, args.token)
            decimals, symbol = (18, "ETH") if args.token is None else (6, "tokens")
            _report(args, {"host": host.address, "token": args.token, "amount": amount},
                    f"withdrew {format_units(amount, decimals, symbol)} to {host.address}")
    finally:
        chain.close()
    return 0
