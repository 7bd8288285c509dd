"""``fabstir gateway``: serve the marketplace behind the OpenAI API on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

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


async def run_gateway(args: argparse.Namespace) -> int:
    from fabstir.discovery.selection import HostCandidate
    from fabstir.discovery.sources import StaticSource
    from fabstir.gateway import Gateway, serve_gateway
    from fabstir.sdk import FabstirSDK

    keys = list(args.api_keys) or [k for k in [os.environ.get("FABSTIR_GATEWAY_API_KEY")] if k]
    if not keys and not args.insecure_no_api_key:
        raise ConfigError("the gateway needs an API key: --api-key KEY or $FABSTIR_GATEWAY_API_KEY "
                          "(or --insecure-no-api-key)", code="API_KEY_REQUIRED")
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
