"""``fabstir gateway``: serve the marketplace behind the OpenAI API on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fabstir.cli.output import print_json, print_table, table
from fabstir.errors import ConfigError

__all__ = ["keys_path", "register", "run_gateway", "run_keys"]


def register(app: typer.Typer) -> None:
    """Add ``fabstir gateway`` (and ``fabstir gateway keys ...``) to the root app."""
    gateway = typer.Typer(help="serve the marketplace behind the OpenAI API (until Ctrl-C); 'gateway keys' "
                               "manages its API keys", invoke_without_command=True)
    gateway.callback()(serve)
    keys = typer.Typer(help="create and cap the gateway's API keys", no_args_is_help=True)
    keys.command("create", help="a new key (printed once) with a spending cap")(keys_create)
    keys.command("list", help="the keys, their caps and what they spent")(keys_list)
    keys.command("cap", help="change a key's spending cap")(keys_cap)
    gateway.add_typer(keys, name="keys")
    app.add_typer(gateway, name="gateway")


KeysFileOption = Annotated[Optional[str], typer.Option(metavar="FILE", help="the keys file (default: as for the gateway, "
                                                            "$XDG_DATA_HOME/fabstir/gateway-keys.json)")]


def serve(
    ctx: typer.Context,
    hosts: Annotated[Optional[list[str]], typer.Option("--host", metavar="URL", help="a host to serve from "
                                                       "(repeatable); with --network, hosts come from the "
                                                       "chain")] = None,
    network: Annotated[Optional[str], typer.Option(metavar="FILE", help="network file: open a paid session per conversation on "
                                                        "that chain (client key in $FABSTIR_CLIENT_KEY)")] = None,
    deposit: Annotated[int, typer.Option(help="escrow per paid session, in base units (wei)")] = 0,
    strategy: Annotated[str, typer.Option(metavar="NAME", help="default host choice: cheapest, fastest, reputable, composite, "
                                               "round_robin")] = "composite",
    bind: Annotated[str, typer.Option(metavar="ADDRESS", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0 picks a free one)")] = 8000,
    api_keys: Annotated[Optional[list[str]], typer.Option("--api-key", metavar="KEY", help="accept this bearer "
                                                          "token (repeatable; default: "
                                                          "$FABSTIR_GATEWAY_API_KEY)")] = None,
    insecure_no_api_key: Annotated[bool, typer.Option("--insecure-no-api-key", help="serve without any API key "
                                                      "(anyone who can reach the port spends your "
                                                      "deposits)")] = False,
    keys_file: Annotated[Optional[str], typer.Option(metavar="FILE", help="API keys with spending caps (default "
                                                          "$XDG_DATA_HOME/fabstir/gateway-keys.json; used when it "
                                                          "holds keys and no --api-key is given)")] = None,
    json: Annotated[bool, typer.Option("--json", help="when serving, print {\"url\": ..., \"base_url\": ...} as "
                                                      "one JSON line on stdout")] = False,
) -> int:
    if ctx.invoked_subcommand is not None:
        return 0
    values = {k: v for k, v in locals().items() if k != "ctx"}
    values.update(hosts=list(hosts or []), api_keys=list(api_keys or []))
    return asyncio.run(run_gateway(argparse.Namespace(**values)))


def keys_create(name: Annotated[str, typer.Option(help="the key's name (unique)")],
                cap: Annotated[Optional[int], typer.Option(help="most base units (wei) it may spend (default: "
                                                                "none)")] = None,
                keys_file: KeysFileOption = None) -> int:
    return run_keys(argparse.Namespace(keys_command="create", **locals()))


def keys_list(json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
              keys_file: KeysFileOption = None) -> int:
    return run_keys(argparse.Namespace(keys_command="list", **locals()))


def keys_cap(name: Annotated[str, typer.Option(help="the key's name")],
             cap: Annotated[str, typer.Option(help="base units, or 'none'")],
             keys_file: KeysFileOption = None) -> int:
    return run_keys(argparse.Namespace(keys_command="cap", **locals()))


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
            print_json([{"name": r.name, "cap": r.cap, "spent": r.spent, "left": r.left} for r in records])
            return 0
        listing = table("name", "cap", "spent", "left", title=f"{len(records)} key(s) in {store.path} (base units)",
                        right=("cap", "spent", "left"))
        for record in records:
            listing.add_row(record.name, "none" if record.cap is None else str(record.cap), str(record.spent),
                            "-" if record.left is None else str(record.left))
        print_table(listing)
    return 0


async def run_gateway(args: argparse.Namespace) -> int:
    from fabstir.discovery.selection import HostCandidate
    from fabstir.discovery.sources import StaticSource
    from fabstir.gateway import Gateway, serve_gateway
    from fabstir.gateway.keys import KeyStore
    from fabstir.sdk import FabstirSDK

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
        if args.json:
            print_json({"url": server.url, "base_url": server.base_url})
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass
    return 0
