"""Unified discovery end to end: real nodes announce themselves through the HTTP discovery service, mDNS on
127.0.0.1 and a DHT on loopback; two of them are also registered on the embedded chain. Nothing is faked."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from fabstir.discovery import DiscoveryManager, Requirements
from fabstir.discovery.chain_source import ChainSource
from fabstir.discovery.dht import DhtNode
from fabstir.discovery.http_client import HttpDiscoveryClient
from fabstir.discovery.http_service import serve_discovery
from fabstir.discovery.mdns import MdnsDiscovery
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.sdk import FabstirSDK
from tests.helpers import closed_port_url
from tests.paid.conftest import PaidWorld, add_host
from tests.paid.conftest import world as world  # noqa: F401 (the fixture)

CHAIN_PRICE = {"host": 4_000_000, "stranger": 3_000_000}
ANNOUNCED_PRICE = 5  # far below either host's on-chain minimum


async def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy or a generous deadline passes (a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


@pytest.fixture
async def bootstrap_dht():
    async with DhtNode() as node:
        yield node


async def start_announcing_node(node_factory, service_url: str, dht: DhtNode, **extra):
    host, port = dht.address
    return await node_factory(discovery_url=service_url, announce_mdns=True, dht_bootstrap=f"{host}:{port}",
                              announce_price=ANNOUNCED_PRICE, announce_region="eu", **extra)


async def test_nodes_announced_through_every_source_merge_with_the_chain(world: PaidWorld, node_factory, tmp_path: Path,
                                                                          bootstrap_dht: DhtNode) -> None:
    async with serve_discovery() as service:
        paid = {}
        for name in ("host", "stranger"):
            account = getattr(world, name)
            billing = BillingService(HostChain(world.market, account, world.model), tmp_path / f"{name}.db")
            node = await start_announcing_node(node_factory, service.url, bootstrap_dht, billing=billing)
            await add_host(world, account, node.url, CHAIN_PRICE[name], signing_key=node.runtime.signing_public_key,
                           encryption_key=node.runtime.e2e_public_key)
            paid[account.address] = node
        free = await start_announcing_node(node_factory, service.url, bootstrap_dht, announce_ttl=4)
        free_address = free.announcer.host_address
        assert free_address not in paid
        for node in (*paid.values(), free):
            assert {s.name: s.failures for s in node.announcer.status.values()} == {"http": 0, "dht": 0, "mdns": 0}

        async with DhtNode() as reader_dht, HttpDiscoveryClient(service.url) as http, \
                MdnsDiscovery(timeout_s=0.6) as mdns, HttpDiscoveryClient(closed_port_url(), retries=0) as dead:
            await reader_dht.bootstrap([bootstrap_dht.address])
            dead.name = "backup-http"  # a second HTTP service, down: a source that fails
            sdk = FabstirSDK(chain=world.chain, deployment=world.market.deployment)
            manager = DiscoveryManager([ChainSource(sdk), http, mdns, reader_dht, dead], cache_ttl_s=0.0,
                                       source_timeout_s=5.0)

            expected_sources = {**{address: {"chain", "http", "mdns", "dht"} for address in paid},
                                free_address: {"http", "mdns", "dht"}}

            async def every_source_seen():  # the very condition asserted below, not a weaker one
                hosts = await manager.discover_all_hosts()
                return hosts if {h.address: h.sources for h in hosts} == expected_sources else None

            hosts = await wait_for(every_source_seen)
            assert hosts, f"not every host was seen by every source: {await manager.discover_all_hosts()}"
            by_address = {h.address: h for h in hosts}
            for address, node in paid.items():
                host = by_address[address]
                assert host.sources == {"chain", "http", "mdns", "dht"}
                name = "host" if address == world.host.address else "stranger"
                assert host.price_per_token == CHAIN_PRICE[name]  # the chain wins over the announced price
                assert host.stake > 0 and host.api_url == node.url
                assert "e2e-v1" in host.capabilities and host.region == "eu"
            unregistered = by_address[free_address]
            assert unregistered.sources == {"http", "mdns", "dht"} and unregistered.price_per_token == ANNOUNCED_PRICE

            registered = await manager.discover_all_hosts(registered_only=True)
            assert {h.address for h in registered} == set(paid)
            cheapest = await manager.select_host("cheapest", Requirements(model=f"local/{world.model_file}"),
                                                 registered_only=True)
            assert cheapest.address == world.stranger.address

            stats = {s["name"]: s for s in manager.get_discovery_stats()["sources"]}
            assert [name for name, s in stats.items() if not s["healthy"]] == ["backup-http"]
            assert stats["backup-http"]["failures"] == stats["backup-http"]["calls"] > 0
            assert "ConnectError" in stats["backup-http"]["last_error"]

            # The CLI sees the same hosts, ranks them and names the cheapest (it has no chain here: announced prices).
            dht_host, dht_port = bootstrap_dht.address

            cli_errors: list[str] = []

            async def cli_listing():  # a browse window or a DHT bootstrap may miss on a loaded machine: run it again
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", "from fabstir.cli.main import run; run()", "hosts", "--discovery-url",
                    service.url, "--mdns", "--dht-bootstrap", f"{dht_host}:{dht_port}", "--strategy", "cheapest",
                    "--timeout", "20", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(process.communicate(), 120)
                if process.returncode != 0:
                    cli_errors.append(err.decode()[-2000:])
                    return None
                found = json.loads(out.decode().strip().splitlines()[-1])
                complete = {h["address"]: set(h["sources"]) for h in found["hosts"]} == {
                    address: {"http", "mdns", "dht"} for address in (*paid, free_address)}
                return found if complete else None

            listing = await wait_for(cli_listing, timeout=180.0)
            assert listing, f"the CLI did not list every host from every source; its errors: {cli_errors}"
            assert {h["address"] for h in listing["hosts"]} == {*paid, free_address}
            assert all(set(h["sources"]) == {"http", "mdns", "dht"} for h in listing["hosts"]), listing["hosts"]
            assert all(h["latency_ms"] is not None and h["latency_ms"] > 0 for h in listing["hosts"])  # pinged
            assert set(listing["hosts"][0]["breakdown"]) == {"price", "latency", "reputation", "throughput", "stake"}
            assert listing["chosen"] in {h["address"] for h in listing["hosts"]}
            assert listing["strategy"] == "cheapest"

            # The free node stops: its records lapse at their 4 s TTL and mDNS withdraws it at once.
            await free.announcer.aclose()

            async def gone():
                hosts = await manager.discover_all_hosts()
                return free_address not in {h.address for h in hosts}

            assert await wait_for(gone)
            assert {h.address for h in await manager.discover_all_hosts()} == set(paid)
