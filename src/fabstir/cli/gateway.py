"""``fabstir gateway``: serve the marketplace behind the OpenAI API on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from fabstir.errors import ConfigError

__all__ = ["add_gateway_parser", "run_gateway"]


def add_gateway_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser("gateway", help="serve the marketplace behind the OpenAI API")
    gateway.add_argument("--host", action="append", dest="hosts", default=[], metavar="URL",
                         help="a host to serve from (repeatable); with --network, hosts come from the chain")
    gateway.add_argument("--network", help="network file: open a paid session per conversation on that chain "
                                           "(client key in $FABSTIR_CLIENT_KEY)")
    gateway.add_argument("--deposit", type=int, default=0, help="escrow per paid session, in base units (wei)")
    gateway.add_argument("--strategy", default="composite",
                         help="default host choice: cheapest, fastest, reputable, composite, round_robin")
    gateway.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    gateway.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    gateway.add_argument("--api-key", action="append", dest="api_keys", default=[], metavar="KEY",
                         help="accept this bearer token (repeatable; default: $FABSTIR_GATEWAY_API_KEY)")
    gateway.add_argument("--insecure-no-api-key", action="store_true",
                         help="serve without any API key (anyone who can reach the port spends your deposits)")
    gateway.add_argument("--keys-file", default=None,
                         help="API keys with spending caps (default $XDG_DATA_HOME/fabstir/gateway-keys.json; "
                              "used when it holds keys and no --api-key is given)")
    keys = gateway.add_subparsers(dest="gateway_command")
    key_commands = keys.add_parser("keys", help="create and cap the gateway's API keys").add_subparsers(
        dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="a new key (printed once) with a spending cap")
    create.add_argument("--name", required=True)
    create.add_argument("--cap", type=int, default=None, help="most base units (wei) it may spend (default: none)")
    listing = key_commands.add_parser("list", help="the keys, their caps and what they spent")
    listing.add_argument("--json", action="store_true")
    cap = key_commands.add_parser("cap", help="change a key's spending cap")
    cap.add_argument("--name", required=True)
    cap.add_argument("--cap", required=True, help="base units, or 'none'")
    for sub in (create, listing, cap):
        sub.add_argument("--keys-file", default=None, help="the keys file (default as for the gateway)")


def keys_path(given: str | None) -> Path:
    """``--keys-file``, else ``$XDG_DATA_HOME/fabstir/gateway-keys.json`` (``~/.local/share`` without it)."""
    if given:
        return Path(given)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fabstir" / "gateway-keys.json"


def run_keys(args: argparse.Namespace) -> int:
    from fabstir.gateway.keys import KeyStore

    store = KeyStore(keys_path(args.keys_file))
    if args.keys_command == "create":
        key = store.create(args.name, args.cap)
        print(key)
        print(f"[fabstir] key {args.name!r} created in {store.path}; it is shown only now", file=sys.stderr)
    elif args.keys_command == "cap":
        value = None if str(args.cap).lower() == "none" else int(args.cap)
        record = store.set_cap(args.name, value)
        print(f"{record.name}: cap {record.cap}, spent {record.spent}")
    else:
        records = store.records()
        if args.json:
            print(json.dumps([{"name": r.name, "cap": r.cap, "spent": r.spent, "left": r.left} for r in records]))
        for record in records if not args.json else []:
            cap = "none" if record.cap is None else str(record.cap)
            print(f"{record.name:20} cap {cap:>24} spent {record.spent:>24}")
    return 0


async def run_gateway(args: argparse.Namespace) -> int:
    from fabstir.discovery.selection import HostCandidate
    from fabstir.discovery.sources import StaticSource
    from fabstir.gateway import Gateway, serve_gateway
    from fabstir.gateway.keys import KeyStore
    from fabstir.sdk import FabstirSDK

    if args.gateway_command == "keys":
        return run_keys(args)
    fixed = list(args.api_keys) or [k for k in [os.environ.get("FABSTIR_GATEWAY_API_KEY")] if k]
    store = KeyStore(keys_path(args.keys_file)) if not fixed else None
    keys: list[str] | KeyStore = store if store is not None and len(store) else fixed
    if not keys and not args.insecure_no_api_key:
        raise ConfigError("the gateway needs an API key: fabstir gateway keys create, --api-key KEY or "
                          "$FABSTIR_GATEWAY_API_KEY (or --insecure-no-api-key)", code="API_KEY_REQUIRED")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    sources = [StaticSource([HostCandidate(address=url, api_url=url) for url in args.hosts])] if args.hosts else []
    settings: dict[str, object] = {}
    if args.network:
        from eth_account import Account

        from fabstir.chain.backend import Chain
        from fabstir.chain.network import NetworkConfig

        network = NetworkConfig.load(args.network)
        key = os.environ.get("FABSTIR_CLIENT_KEY")
        if not key:
            raise ConfigError("a paid gateway needs the client key in $FABSTIR_CLIENT_KEY", code="CLIENT_KEY_REQUIRED")
        if args.deposit <= 0:
            raise ConfigError("a paid gateway needs --deposit (base units per session)")
        settings = {"chain": Chain.connect(network.rpc_url), "deployment": network.deployment,
                    "account": Account.from_key(key)}
    elif not sources:
        raise ConfigError("give the hosts to serve from: --host URL (repeatable) or --network FILE")
    sdk = FabstirSDK(discovery_sources=sources, **settings)  # type: ignore[arg-type]
    async with serve_gateway(Gateway(sdk, deposit=args.deposit, strategy=args.strategy), host=args.bind,
                             port=args.port, api_keys=keys) as server:
        if not keys:
            print("[fabstir] INSECURE: the gateway accepts requests without an API key", file=sys.stderr)
        print(f"[fabstir] gateway on {server.url}: OpenAI base_url {server.base_url}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass
    return 0
