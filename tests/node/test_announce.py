"""The node announcing itself: signed records at a real discovery service and in a real DHT on loopback, and
targets that are down (the node keeps serving, the failures are counted)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from nacl.signing import SigningKey

from fabstir.discovery.dht import DhtNode
from fabstir.discovery.http_client import HttpDiscoveryClient
from fabstir.discovery.http_service import serve_discovery
from fabstir.errors import ConfigError
from fabstir.node.announce import address_for_signing_key, parse_bootstrap
from fabstir.node.config import NodeConfig
from tests.helpers import free_port


def test_parse_bootstrap_and_free_node_address() -> None:
    assert parse_bootstrap(" 127.0.0.1:4000, 127.0.0.2:4001,") == [("127.0.0.1", 4000), ("127.0.0.2", 4001)]
    assert parse_bootstrap(None) == []
    for bad in ("127.0.0.1", "127.0.0.1:x", ":4000", "127.0.0.1:70000"):
        with pytest.raises(ConfigError):
            parse_bootstrap(bad)
    key = SigningKey(b"\x01" * 32).verify_key.encode().hex()
    address = address_for_signing_key(key)
    assert address == address_for_signing_key(key) and address.startswith("0x") and len(address) == 42
    assert address != address_for_signing_key(SigningKey(b"\x02" * 32).verify_key.encode().hex())
    with pytest.raises(ConfigError):
        NodeConfig(announce_ttl=0)
    with pytest.raises(ConfigError):
        NodeConfig(dht_port=70000)


async def test_node_posts_verified_heartbeats_to_the_discovery_service(node_factory) -> None:
    async with serve_discovery() as service:
        node = await node_factory(discovery_url=service.url, announce_ttl=3, announce_price=1234,
                                  announce_region="eu-west", public_url="http://127.0.0.1:1/proxy")
        announcer = node.announcer
        assert announcer is not None and announcer.status["http"].beats == 1
        async with HttpDiscoveryClient(service.url, cache_ttl_s=0) as client:
            record = await client.get_host_details(announcer.host_address)
        runtime = node.runtime
        assert record.host == address_for_signing_key(runtime.signing_public_key)
        assert record.signing_key == runtime.signing_public_key
        assert record.api_url == "http://127.0.0.1:1/proxy"  # public_url wins over the bound address
        assert record.models == (runtime.inference.model_id,) and record.price_per_token == 1234
        assert set(record.capabilities) == set(runtime.features) and record.region == "eu-west"
        first = record.issued_at_ms
        await asyncio.sleep(1.3)  # a beat every ttl/3 = 1 s
        async with HttpDiscoveryClient(service.url, cache_ttl_s=0) as client:
            assert (await client.get_host_details(announcer.host_address)).issued_at_ms > first
        assert announcer.status["http"].beats >= 2 and announcer.status["http"].failures == 0


async def test_targets_that_are_down_do_not_stop_the_node(node_factory) -> None:
    dead_http = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    dead_dht = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    started = time.monotonic()
    node = await node_factory(discovery_url=dead_http, dht_bootstrap=dead_dht, announce_ttl=60)
    assert time.monotonic() - started < 30
    status = node.announcer.status
    assert status["http"].failures == 1 and "CONNECT_FAILED" in (status["http"].last_error or "")
    assert status["dht"].failures == 1 and "DHT_BOOTSTRAP_FAILED" in (status["dht"].last_error or "")
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{node.url}/health")).status_code == 200


async def test_a_dht_seed_node_and_a_node_joining_through_it(node_factory) -> None:
    seed_port = free_port(socket.SOCK_DGRAM)
    seed = await node_factory(dht_port=seed_port, announce_ttl=60)
    assert seed.announcer.dht_address == ("127.0.0.1", seed_port)
    joiner = await node_factory(dht_bootstrap=f"127.0.0.1:{seed_port}", announce_ttl=60)
    assert joiner.announcer.status["dht"].failures == 0
    async with DhtNode() as reader:
        await reader.bootstrap([("127.0.0.1", seed_port)])
        found = {h.address: h for h in await reader.discover_global_nodes()}
    host = found[joiner.announcer.host_address]
    assert host.api_url == joiner.url and host.signing_key == joiner.runtime.signing_public_key
    assert host.sources == {"dht"}
