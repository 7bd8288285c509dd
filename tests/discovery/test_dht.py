"""Kademlia DHT discovery on a real 6-node network on 127.0.0.1 (UDP, port 0), with a raw kademlia attacker."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import pytest
from kademlia.network import Server
from kademlia.utils import digest
from nacl.signing import SigningKey

from fabstir.discovery.dht import HOSTS_KEY, MAX_INDEX_ENTRIES, DhtNode, capability_key, host_key, model_key
from fabstir.discovery.selection import Requirements
from fabstir.discovery.sources import DiscoverySource
from fabstir.errors import ConfigError, ConnectError, RequestTimeoutError, SessionError
from fabstir.protocol.announcement import AnnouncementError, HostAnnouncement, sign_announcement

NODES = 6
RPC_TIMEOUT = 0.5
KEY_A, KEY_B, KEY_C = SigningKey(b"\x0a" * 32), SigningKey(b"\x0b" * 32), SigningKey(b"\x0c" * 32)
HOST_A, HOST_B, HOST_C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def record(key: SigningKey, host: str, *, price: int = 1000, issued: int | None = None, ttl_s: int = 60,
           models: tuple[str, ...] = ("llama-3",), capabilities: tuple[str, ...] = ("e2e",)) -> HostAnnouncement:
    return sign_announcement(key, host=host, api_url=f"http://127.0.0.1:9/{host[-4:]}", now_ms=issued or now_ms(),
                             ttl_s=ttl_s, models=models, price_per_token=price, capabilities=capabilities)


@pytest.fixture
async def network() -> AsyncIterator[list[DhtNode]]:
    """Six nodes in a star around node 0; all stopped at the end."""
    nodes: list[DhtNode] = []
    try:
        for i in range(NODES):
            node = DhtNode(rpc_timeout=RPC_TIMEOUT, timeout=5.0)
            await node.start([nodes[0].address] if i else ())
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


@pytest.fixture
async def attacker(network: list[DhtNode]) -> AsyncIterator[Server]:
    """A plain kademlia node on the same network: stores whatever it likes under any key, reads raw values."""
    server = Server()
    await server.listen(0, "127.0.0.1")
    try:
        await server.bootstrap([network[0].address])
        yield server
    finally:
        await asyncio.sleep(0.05)  # let its last store answers arrive before the socket closes
        server.stop()


async def plant(attacker: Server, nodes: list[DhtNode], key: str, value: object) -> None:
    """Write ``value`` under ``key`` straight into the storage of ``nodes`` and the attacker's own."""
    dkey = digest(key)
    answers = await asyncio.gather(*(attacker.protocol.store(node.address, attacker.node.id, dkey, value)
                                     for node in nodes))
    assert all(answered for answered, _ in answers)
    attacker.storage[dkey] = value


async def test_hosts_announced_on_some_nodes_are_found_from_others(network: list[DhtNode]) -> None:
    a = record(KEY_A, HOST_A, price=1000, models=("llama-3",), capabilities=("e2e",))
    b = record(KEY_B, HOST_B, price=3000, models=("mistral",), capabilities=("e2e", "gpu"))
    await network[1].announce_capabilities(a)
    await network[2].announce_capabilities(b)
    client = network[5]

    assert [c.address.lower() for c in await client.search_by_capability("e2e")] == [HOST_A, HOST_B]
    assert [c.address.lower() for c in await client.search_by_capability("gpu")] == [HOST_B]
    assert await client.search_by_capability("tee") == []
    assert [c.address.lower() for c in await network[4].search_by_model("llama-3")] == [HOST_A]
    assert [c.address.lower() for c in await network[3].discover_global_nodes()] == [HOST_A, HOST_B]
    assert [c.address.lower() for c in await client.discover_global_nodes(Requirements(max_price=2000))] == [HOST_A]
    assert [c.address.lower() for c in await client.discover(Requirements(model="mistral"))] == [HOST_B]
    assert [c.address.lower() for c in await client.discover(Requirements(capabilities=frozenset({"gpu"})))] \
        == [HOST_B]

    (found,) = await client.search_by_model("mistral")
    assert found.sources == frozenset({"dht"})
    assert (found.api_url, found.price_per_token, found.models) == (b.api_url, 3000, ("mistral",))
    assert found.capabilities == frozenset({"e2e", "gpu"})
    assert found.signing_key == KEY_B.verify_key.encode().hex()
    assert found.expires_at_ms == b.expires_at_ms
    assert await network[0].get_record(HOST_A.upper().replace("0X", "0x")) == a
    assert isinstance(client, DiscoverySource)


async def test_heartbeat_replaces_the_record(network: list[DhtNode]) -> None:
    first = record(KEY_A, HOST_A, price=1000, issued=now_ms() - 1000)
    await network[1].announce_capabilities(first)
    second = record(KEY_A, HOST_A, price=500, models=("mistral",))
    await network[1].announce_capabilities(second)
    assert await network[4].get_record(HOST_A) == second
    # the stale llama-3 index entry still names A, but A's record no longer lists llama-3
    assert await network[4].search_by_model("llama-3") == []
    assert [c.price_per_token for c in await network[4].search_by_model("mistral")] == [500]


def forge(genuine: HostAnnouncement, forgery: str) -> str:
    wire = genuine.to_wire()
    if forgery == "price":
        wire["pricePerToken"] = 1
    elif forgery == "signature":
        wire["sig"] = KEY_C.sign(b"something else").signature.hex()
    else:  # claims another key but keeps A's signature
        wire["signingKey"] = KEY_C.verify_key.encode().hex()
    return json.dumps(wire)


@pytest.mark.parametrize("forgery", ["price", "signature", "signing_key"])
async def test_forged_record_is_dropped(network: list[DhtNode], attacker: Server, forgery: str) -> None:
    genuine = record(KEY_A, HOST_A, price=1000)  # A never announces it: only the forgery is on the DHT
    await network[2].announce_capabilities(record(KEY_B, HOST_B))
    await plant(attacker, network, host_key(HOST_A), forge(genuine, forgery))
    await plant(attacker, network, HOSTS_KEY, json.dumps({HOST_A: genuine.expires_at_ms, HOST_B: genuine.expires_at_ms}))

    assert await network[5].get_record(HOST_A) is None
    assert [c.address.lower() for c in await network[5].discover_global_nodes()] == [HOST_B]
    await network[1].announce_capabilities(genuine)  # announcing overwrites the forgery
    assert await network[5].get_record(HOST_A) == genuine
    assert [c.price_per_token for c in await network[4].discover_global_nodes()] == [1000, 1000]


async def test_lookup_goes_past_forged_copies_to_a_genuine_one(network: list[DhtNode], attacker: Server) -> None:
    genuine = record(KEY_A, HOST_A, price=1000)
    await network[1].announce_capabilities(genuine)
    await plant(attacker, network[:4], host_key(HOST_A), forge(genuine, "price"))  # nodes 4 and 5 keep the real one
    assert await network[0].get_record(HOST_A) == genuine
    assert [c.price_per_token for c in await network[2].search_by_capability("e2e")] == [1000]


async def test_record_under_another_hosts_key_is_dropped(network: list[DhtNode], attacker: Server) -> None:
    b = record(KEY_B, HOST_B)
    await network[2].announce_capabilities(b)
    await plant(attacker, network, host_key(HOST_A), b.to_json())  # validly signed, but it is B's record
    await plant(attacker, network, HOSTS_KEY, json.dumps({HOST_A: b.expires_at_ms, HOST_B: b.expires_at_ms}))

    assert await network[4].get_record(HOST_A) is None
    assert [c.address.lower() for c in await network[4].discover_global_nodes()] == [HOST_B]


async def test_index_of_bogus_hosts_does_not_break_search(network: list[DhtNode], attacker: Server) -> None:
    a = record(KEY_A, HOST_A)
    await network[1].announce_capabilities(a)
    far = now_ms() + 30_000
    bogus = {HOST_A: far, HOST_C: far, "0x" + "dd" * 20: far, "not-an-address": far, "0x" + "ee" * 20: "soon"}
    await plant(attacker, network, capability_key("e2e"), json.dumps(bogus))
    assert [c.address.lower() for c in await network[3].search_by_capability("e2e")] == [HOST_A]

    for garbage in ["not json", "[1, 2]", json.dumps({HOST_A: True}), "{" * 5000]:
        await plant(attacker, network, capability_key("e2e"), garbage)
        assert await network[3].search_by_capability("e2e") == []
    await attacker.set(model_key("llama-3"), 12345)  # our nodes refuse to store anything but strings
    assert [c.address.lower() for c in await network[3].search_by_model("llama-3")] == [HOST_A]

    await network[1].announce_capabilities(a)  # the heartbeat rewrites the index it can read
    assert [c.address.lower() for c in await network[3].search_by_capability("e2e")] == [HOST_A]


async def test_expired_record_is_dropped(network: list[DhtNode], attacker: Server) -> None:
    expired = record(KEY_C, HOST_C, issued=now_ms() - 120_000, ttl_s=60)
    with pytest.raises(AnnouncementError) as info:
        await network[1].announce_capabilities(expired)
    assert info.value.code == "ANNOUNCEMENT_EXPIRED"
    await network[1].announce_capabilities(record(KEY_A, HOST_A))
    await plant(attacker, network, host_key(HOST_C), expired.to_json())
    live = now_ms() + 30_000  # the index claims C is live; the record says otherwise
    await plant(attacker, network, HOSTS_KEY, json.dumps({HOST_A: live, HOST_C: live}))

    assert await network[5].get_record(HOST_C) is None
    assert [c.address.lower() for c in await network[5].discover_global_nodes()] == [HOST_A]


async def test_expired_hosts_are_pruned_from_indexes_on_announce(network: list[DhtNode], attacker: Server) -> None:
    clock = [now_ms()]
    node = DhtNode(rpc_timeout=RPC_TIMEOUT, clock=lambda: clock[0])
    async with node:
        await node.bootstrap([network[0].address])
        await node.announce_capabilities(record(KEY_A, HOST_A, issued=clock[0], ttl_s=5))
        assert set(json.loads(await attacker.get(HOSTS_KEY))) == {HOST_A}
        clock[0] += 10_000
        await node.announce_capabilities(record(KEY_B, HOST_B, issued=clock[0], ttl_s=60))
        assert set(json.loads(await attacker.get(HOSTS_KEY))) == {HOST_B}
        assert set(json.loads(await attacker.get(capability_key("e2e")))) == {HOST_B}


async def test_index_is_bounded(network: list[DhtNode], attacker: Server) -> None:
    far = now_ms() + 60_000
    crowd = {f"0x{i:040x}": far + i for i in range(1, 121)}  # more than an index keeps, less than a datagram
    await plant(attacker, network, HOSTS_KEY, json.dumps(crowd))
    await network[1].announce_capabilities(record(KEY_A, HOST_A))
    stored = json.loads(await attacker.get(HOSTS_KEY))
    assert len(stored) == MAX_INDEX_ENTRIES
    assert HOST_A in stored
    assert f"0x{120:040x}" in stored and f"0x{1:040x}" not in stored  # the latest-expiring are kept


def dead_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dead_bootstrap_node_fails_fast_with_a_code() -> None:
    node = DhtNode(rpc_timeout=0.3)
    started = time.perf_counter()
    with pytest.raises(ConnectError) as info:
        await node.start([("127.0.0.1", dead_udp_port())])
    assert info.value.code == "DHT_BOOTSTRAP_FAILED"
    assert time.perf_counter() - started < 2.0
    with pytest.raises(SessionError):
        node.address  # noqa: B018  (stopped after the failed start)


async def test_silent_bootstrap_node_hits_the_operation_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # receives, never answers
        silent.bind(("127.0.0.1", 0))
        node = DhtNode(rpc_timeout=30.0, timeout=0.3)
        started = time.perf_counter()
        with pytest.raises(RequestTimeoutError) as info:
            await node.start([silent.getsockname()])
        assert info.value.code == "TIMEOUT"
        assert time.perf_counter() - started < 2.0
        with pytest.raises(SessionError):
            node.address  # noqa: B018


async def test_lone_node_answers_empty_and_refuses_to_announce_into_nothing() -> None:
    async with DhtNode(rpc_timeout=0.3) as node:
        started = time.perf_counter()
        assert await node.discover_global_nodes() == []
        assert await node.get_record(HOST_A) is None
        with pytest.raises(ConnectError) as info:
            await node.announce_capabilities(record(KEY_A, HOST_A))
        assert info.value.code == "DHT_STORE_FAILED"
        assert time.perf_counter() - started < 2.0


async def test_lookups_stay_bounded_when_peers_die(network: list[DhtNode]) -> None:
    await network[1].announce_capabilities(record(KEY_A, HOST_A))
    for node in network[:5]:
        await node.stop()
    started = time.perf_counter()
    assert await network[5].get_record(HOST_C) is None
    assert await network[5].search_by_capability("absent") == []
    assert time.perf_counter() - started < 4 * RPC_TIMEOUT


async def test_interface_guard_and_lifecycle() -> None:
    for interface in ("0.0.0.0", "192.0.2.1", "::"):
        with pytest.raises(ConfigError):
            DhtNode(interface=interface)
    with pytest.raises(ConfigError):
        DhtNode(interface="localhost")  # kademlia needs IP literals
    DhtNode(interface="0.0.0.0", allow_non_loopback=True)  # allowed when asked (not started here)
    with pytest.raises(ConfigError):
        DhtNode(rpc_timeout=0)
    node = DhtNode()
    with pytest.raises(SessionError) as info:
        await node.get_record(HOST_A)
    assert info.value.code == "DHT_NOT_STARTED"
    async with node:
        assert node.address[0] == "127.0.0.1" and node.address[1] > 0
        with pytest.raises(SessionError):
            await node.start()
        with pytest.raises(ConfigError):
            await node.bootstrap([("localhost", 1)])
    await node.stop()  # idempotent
