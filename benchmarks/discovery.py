"""``discovery``: unified discovery over N hosts registered on the embedded chain plus the other sources.

Setup (not timed): an in-process EVM with our contracts; N hosts (default 1,000),
each with its own account, staked and registered with metadata that publishes its
Ed25519 key; the same N hosts announce signed records to a real HTTP discovery
service on 127.0.0.1; the first few announce over mDNS on 127.0.0.1 and into a DHT
of 20 nodes on loopback (which also gives the DHT lookup latency, see ``dht.py``).

Timed: ``DiscoveryManager.discover_all_hosts()`` over all four sources, cold (every
source asked, answers verified and merged; the chain's price and stake win) and
warm (the cached answer, filtered again), and warm with a model filter; then the
chain source again, which after its first full read only reads the hosts named by
registry events since, and a whole refresh (the cache expired: every source asked
again; the mDNS browser keeps running between calls). The cold time is dominated by the slowest source: mDNS
browses for a fixed window and the chain is read one host at a time through py-evm.
"""

from __future__ import annotations

import contextlib
import time

from eth_account import Account
from eth_utils.crypto import keccak
from nacl.signing import SigningKey

from common import log, percentile, rounded
from dht import measure_dht_lookups
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.deploy import deploy_marketplace
from fabstir.chain.metadata import build_host_metadata
from fabstir.discovery import DiscoveryManager, Requirements
from fabstir.discovery.chain_source import ChainSource
from fabstir.discovery.dht import DhtNode
from fabstir.discovery.http_client import HttpDiscoveryClient
from fabstir.discovery.http_service import serve_discovery
from fabstir.discovery.mdns import MdnsAnnouncer, MdnsDiscovery
from fabstir.node.registration import register_host
from fabstir.protocol.announcement import HostAnnouncement, sign_announcement
from fabstir.sdk import FabstirSDK

MODEL_REPO, MODEL_FILE = "local", "bench.gguf"
MDNS_HOSTS = 5
DHT_NODES = 20
DHT_HOSTS = 20
WARM_REPEATS = 500


def _host_keys(i: int) -> tuple[Account, SigningKey]:
    seed = keccak(f"fabstir-bench-host-{i}".encode())
    return Account.from_key(seed), SigningKey(keccak(seed))


async def _register_hosts(chain: Chain, market: Marketplace, owner: object, n: int) -> list[tuple[object, SigningKey]]:
    model = model_id(MODEL_REPO, MODEL_FILE)
    hosts = []
    started = time.perf_counter()
    for i in range(n):
        account, key = _host_keys(i)
        await chain.send_eth(owner, account.address, 10**17)
        await chain.transact(owner, market.stake_token.functions.mint(account.address, 10_000 * 10**18))
        metadata = build_host_metadata(f"bench host {i}", models=[f"{MODEL_REPO}/{MODEL_FILE}"],
                                       ed25519PublicKey=key.verify_key.encode().hex(), region=("eu", "us")[i % 2])
        await register_host(market, account, metadata=metadata, api_url=f"http://127.0.0.1:{20000 + i}",
                            models=[model], min_price_native=1_000_000 + 1000 * i, min_price_stable=10_000 + i)
        hosts.append((account, key))
        if (i + 1) % 100 == 0 or i + 1 == n:
            log(f"registered {i + 1}/{n} hosts on the embedded chain ({time.perf_counter() - started:.0f} s)")
    return hosts


def _record(account: object, key: SigningKey, i: int, now_ms: int) -> HostAnnouncement:
    return sign_announcement(key, host=account.address, api_url=f"http://127.0.0.1:{20000 + i}", now_ms=now_ms,
                             ttl_s=3600, models=[f"{MODEL_REPO}/{MODEL_FILE}"], price_per_token=1,
                             capabilities=["e2e-v1", "signed-receipts"])


async def run_discovery(hosts: int = 1000) -> dict[str, object]:
    """Register ``hosts`` hosts, announce them through every source, time cold and warm unified discovery."""
    chain = Chain.embedded(funded_accounts=1)
    owner = dev_account(0)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(chain.close)
        deployment = await deploy_marketplace(chain, owner, models=[(MODEL_REPO, MODEL_FILE, b"\x11" * 32)])
        market = Marketplace(chain, deployment)
        registered = await _register_hosts(chain, market, owner, hosts)
        now_ms = time.time_ns() // 1_000_000
        records = [_record(a, k, i, now_ms) for i, (a, k) in enumerate(registered)]

        service = await stack.enter_async_context(serve_discovery(max_hosts=hosts + 10))
        announcer = await stack.enter_async_context(HttpDiscoveryClient(service.url, retries=0))
        for record in records:
            await announcer.announce(record)
        log(f"announced {hosts} signed records to the HTTP discovery service at {service.url}")
        for record in records[:MDNS_HOSTS]:
            await stack.enter_async_context(MdnsAnnouncer(record))
        dht_nodes = []
        for _ in range(DHT_NODES):
            node = DhtNode()
            await node.start([dht_nodes[0].address] if dht_nodes else [])
            stack.push_async_callback(node.stop)
            dht_nodes.append(node)
        for i, record in enumerate(records[:DHT_HOSTS]):
            await dht_nodes[i % DHT_NODES].announce_capabilities(record)
        log(f"{MDNS_HOSTS} hosts on mDNS, {DHT_HOSTS} in a DHT of {DHT_NODES} nodes")

        sdk = FabstirSDK(chain=chain, deployment=deployment)
        http = await stack.enter_async_context(HttpDiscoveryClient(service.url))
        mdns = await stack.enter_async_context(MdnsDiscovery())
        chain_source = ChainSource(sdk)
        manager = DiscoveryManager([chain_source, http, mdns, dht_nodes[-1]], source_timeout_s=600,
                                   cache_ttl_s=3600)
        started = time.perf_counter()
        found = await manager.discover_all_hosts()
        cold_ms = (time.perf_counter() - started) * 1000
        stats = manager.get_discovery_stats()
        per_source = {s["name"]: rounded(s["average_ms"], 1) for s in stats["sources"]}
        per_source_hosts = {s["name"]: s["hosts"] for s in stats["sources"]}
        log(f"cold: {len(found)} hosts in {cold_ms:.0f} ms; per source {per_source}; "
            f"hosts per source {[(s['name'], s['hosts']) for s in stats['sources']]}; refused {manager.rejected[:3]}")
        assert len(found) == hosts, f"expected {hosts} merged hosts, got {len(found)}"
        assert all(h.price_per_token >= 1_000_000 for h in found), "an announced price beat the chain's"
        seen_by_all = sum(1 for h in found if h.sources == {"chain", "http", "mdns", "dht"})

        started = time.perf_counter()
        assert len(await chain_source.discover()) == hosts
        chain_refresh_ms = (time.perf_counter() - started) * 1000
        log(f"chain refresh (registry events since the cold read, none): {chain_refresh_ms:.1f} ms")

        manager.invalidate()
        started = time.perf_counter()
        assert len(await manager.discover_all_hosts()) == hosts
        refresh_ms = (time.perf_counter() - started) * 1000
        refreshed = await manager.discover_all_hosts()
        seen_by_all_after_refresh = sum(1 for h in refreshed if h.sources == {"chain", "http", "mdns", "dht"})
        log(f"refresh after the cache expired (every source asked again): {refresh_ms:.0f} ms")

        warm = []
        for _ in range(WARM_REPEATS):
            started = time.perf_counter()
            await manager.discover_all_hosts()
            warm.append((time.perf_counter() - started) * 1000)
        model_filter = Requirements(model=f"{MODEL_REPO}/{MODEL_FILE}", region="eu")
        filtered = []
        for _ in range(WARM_REPEATS):
            started = time.perf_counter()
            await manager.discover_all_hosts(model_filter)
            filtered.append((time.perf_counter() - started) * 1000)
    dht = await measure_dht_lookups(nodes=DHT_NODES)
    return {
        "hosts": hosts, "cold_ms": rounded(cold_ms, 1), "warm_ms": rounded(percentile(warm, 50), 4),
        "warm_p99_ms": rounded(percentile(warm, 99), 4),
        "warm_filtered_ms": rounded(percentile(filtered, 50), 4),
        "cold_source_ms": per_source, "cold_source_hosts": per_source_hosts,
        "hosts_seen_by_all_sources_after_refresh": seen_by_all_after_refresh, "chain_refresh_ms": rounded(chain_refresh_ms, 1),
        "refresh_ms": rounded(refresh_ms, 1), "hosts_seen_by_all_sources": seen_by_all,
        "cache_hit_rate": rounded(manager.get_discovery_stats()["cache_hit_rate"], 4),
        "dht_p50_ms": dht["dht_p50_ms"], "dht_p80_ms": dht["dht_p80_ms"], "dht_p99_ms": dht.get("dht_p99_ms"),
        "dht_nodes": DHT_NODES,
    }
