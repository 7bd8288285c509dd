"""``fabstir hosts``: ranked hosts from every discovery source, with score breakdowns and sources."""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from fabstir.cli.output import print_json, print_table, say, table
from fabstir.discovery.manager import DiscoveryManager
from fabstir.discovery.selection import FACTORS, RankedHost, Requirements, SelectionError
from fabstir.discovery.sources import DiscoverySource
from fabstir.errors import ConfigError

__all__ = ["run_hosts"]


async def run_hosts(args: argparse.Namespace) -> int:
    """Discover, rank and print; exit code 1 when no host qualifies."""
    async with contextlib.AsyncExitStack() as stack:
        sources = await _open_sources(args, stack)
        if not sources:
            raise ConfigError("name at least one source: --network, --discovery-url, --mdns or --dht-bootstrap")
        manager = DiscoveryManager(sources, source_timeout_s=args.timeout)
        requirements = Requirements(model=args.model, max_price=args.max_price,
                                    capabilities=frozenset(args.capability), region=args.region)
        say(f"asking {', '.join(manager.source_names)} (each within {args.timeout:g} s)")
        started = time.perf_counter()
        hosts = await manager.discover_all_hosts(requirements)
        say(f"{len(hosts)} host(s) in {(time.perf_counter() - started) * 1000:.0f} ms")
        unreachable: set[str] = set()
        if hosts and not args.no_ping:
            say(f"pinging {len(hosts)} host(s)")
            answered = await manager.measure_latency(hosts, limit=len(hosts))
            unreachable = {h.address for h in hosts} - set(answered)
        # Every host found is listed (an unreachable one too, marked); the choice skips the ones now banned.
        ranked = manager.selector.rank_hosts([manager.peers.apply(h) for h in hosts])
        chosen = None
        with contextlib.suppress(SelectionError):
            chosen = (await manager.select_host(args.strategy, requirements)).address
        stats = manager.get_discovery_stats()
    if args.json:
        print_json({"hosts": [_row(r, r.host.address in unreachable) for r in ranked], "strategy": args.strategy,
                    "chosen": chosen, "stats": stats, "rejected": [list(r) for r in manager.rejected]})
    else:
        _print_table(ranked, chosen, args.strategy, stats, manager.rejected, unreachable)
    return 0 if ranked else 1


async def _open_sources(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> list[DiscoverySource]:
    sources: list[DiscoverySource] = []
    if args.network:
        from fabstir.chain.network import NetworkConfig
        from fabstir.discovery.chain_source import ChainSource
        from fabstir.sdk import FabstirSDK

        network = NetworkConfig.load(args.network)
        chain = network.connect()
        stack.callback(chain.close)
        sources.append(ChainSource(FabstirSDK(chain=chain, deployment=network.deployment)))
    if args.discovery_url:
        from fabstir.discovery.http_client import HttpDiscoveryClient

        sources.append(await stack.enter_async_context(HttpDiscoveryClient(args.discovery_url)))
    if args.mdns:
        from fabstir.discovery.mdns import MdnsDiscovery

        sources.append(await stack.enter_async_context(MdnsDiscovery(timeout_s=min(args.timeout, 1.0))))
    if args.dht_bootstrap:
        from fabstir.discovery.dht import DhtNode, parse_bootstrap

        node = DhtNode(timeout=args.timeout)
        await node.start(parse_bootstrap(args.dht_bootstrap))
        stack.push_async_callback(node.stop)
        sources.append(node)
    return sources


def _row(ranked: RankedHost, unreachable: bool) -> dict[str, Any]:
    host = ranked.host
    return {"address": host.address, "reachable": not unreachable, "api_url": host.api_url, "price_per_token": host.price_per_token,
            "stake": host.stake, "reputation": host.reputation, "latency_ms": host.latency_ms,
            "tokens_per_s": host.tokens_per_s, "score": ranked.score, "breakdown": ranked.breakdown,
            "sources": sorted(host.sources), "models": list(host.models), "capabilities": sorted(host.capabilities),
            "region": host.region}


def _print_table(ranked: list[RankedHost], chosen: str | None, strategy: str, stats: dict[str, Any],
                 rejected: list[tuple[str, str, str]], unreachable: set[str]) -> None:
    if not ranked:
        print("no host matches")
    else:
        numbers = ("price", "stake", "rtt ms", "score", *(f[:5] for f in FACTORS))
        listing = table("#", "host", "url", "price", "stake", "rtt ms", "score", *(f[:5] for f in FACTORS), "sources",
                        title=f"{len(ranked)} host(s), best first (price: per 1000 tokens, base units)", right=numbers)
        for i, r in enumerate(ranked, 1):
            host, parts = r.host, r.breakdown
            rtt = "down" if host.address in unreachable else "-" if host.latency_ms is None else f"{host.latency_ms:.1f}"
            listing.add_row(f"{i}{'*' if host.address == chosen else ''}", host.address[:10] + "…", host.api_url,
                            str(host.price_per_token), str(host.stake), rtt, f"{r.score:.2f}",
                            *(f"{parts[f]:.2f}" for f in FACTORS), ",".join(sorted(host.sources)))
        print_table(listing)
        print(f"* chosen by strategy {strategy!r}" if chosen else f"no reachable host for strategy {strategy!r}")
    health = ", ".join(f"{s['name']}: {'ok' if s['healthy'] else 'FAILED (' + str(s['last_error']) + ')'} "
                       f"{s['hosts']} host(s)" for s in stats["sources"])
    print(f"sources: {health}", flush=True)
    for address, source, reason in rejected:
        print(f"refused {address} from {source}: {reason}")
