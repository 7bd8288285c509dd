"""mDNS discovery: the TXT codec by bytes, then real zeroconf announcers and browsers on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from eth_utils.address import to_checksum_address
from nacl.signing import SigningKey
from zeroconf.asyncio import AsyncServiceInfo

from fabstir.discovery import Requirements
from fabstir.discovery.mdns import (
    CHUNK_BYTES,
    SERVICE_TYPE,
    MdnsAnnouncer,
    MdnsDiscovery,
    _txt_properties,
    check_interface,
    decode_txt,
    discover_local_nodes,
    encode_txt,
)
from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import DiscoverySource
from fabstir.errors import ConfigError
from fabstir.protocol.announcement import AnnouncementError, HostAnnouncement, sign_announcement
from fabstir.protocol.signing import SignatureError

BROWSE_S = 0.5  # loopback answers come in ~0.1 s; the browse window is the whole cost of a discover()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_record(n: int, *, issued_ms: int | None = None, ttl_s: int = 60, price: int = 1000,
                models: tuple[str, ...] = ("repo/model.gguf",), **kw: object) -> HostAnnouncement:
    """Host ``n`` (address 0x…n, key seeded by n), signed now unless ``issued_ms`` says otherwise."""
    return sign_announcement(SigningKey(bytes([n]) * 32), host=f"0x{n:040x}", api_url=f"http://127.0.0.1:{9000 + n}",
                             now_ms=now_ms() if issued_ms is None else issued_ms, ttl_s=ttl_s, models=models,
                             price_per_token=price, **kw)  # type: ignore[arg-type]


def address(n: int) -> str:
    return to_checksum_address(f"0x{n:040x}")


Announce = Callable[..., Awaitable[list[MdnsAnnouncer]]]


@pytest.fixture
async def announce() -> AsyncIterator[Announce]:
    """Start announcers concurrently (probing takes ~1 s each); all stopped at the end."""
    started: list[MdnsAnnouncer] = []

    async def start(*records: HostAnnouncement) -> list[MdnsAnnouncer]:
        announcers = [MdnsAnnouncer(r) for r in records]
        started.extend(announcers)
        await asyncio.gather(*(a.start() for a in announcers))
        return announcers

    yield start
    await asyncio.gather(*(a.stop() for a in started))


def mine(hosts: list[HostCandidate], *ns: int) -> dict[str, HostCandidate]:
    """The discovered hosts among those this test announced (anything else on loopback is ignored)."""
    wanted = {address(n) for n in ns}
    return {h.address: h for h in hosts if h.address in wanted}


# -- the TXT codec (pure) ----------------------------------------------------------------------------------------


def test_txt_round_trip_splits_into_entries_of_at_most_255_bytes() -> None:
    record = make_record(1, models=tuple(f"org-{i}/model-{i}-q4_k_m.gguf" for i in range(40)), region="eu",
                         capabilities=["e2e", "rag"])
    props = encode_txt(record)
    assert int(props["n"]) == -(-len(record.to_json()) // CHUNK_BYTES) >= 5
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in props.items())
    assert "".join(props[f"r{i}"] for i in range(int(props["n"]))) == record.to_json()
    assert (props["host"], props["price"], props["key"]) == (record.host, "1000", record.signing_key)
    assert props["api"] == record.api_url and props["models"].startswith("org-0/model-0-q4_k_m.gguf,org-1/")
    assert decode_txt(props, now_ms()) == record
    wire = AsyncServiceInfo(SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=1, properties=props).text  # zeroconf's encoder
    assert _txt_properties(wire) == props


def _with_json(props: dict[str, str], edit: Callable[[dict[str, object]], None]) -> dict[str, str]:
    obj = json.loads("".join(props[f"r{i}"] for i in range(int(props["n"]))))
    edit(obj)
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    out = {k: v for k, v in props.items() if not (k[0] == "r" and k[1:].isdigit())}
    chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    out.update({f"r{i}": c for i, c in enumerate(chunks)}, n=str(len(chunks)))
    return out


def test_decode_refuses_a_price_tampered_inside_the_signed_record() -> None:
    props = encode_txt(make_record(3, price=1000))
    forged = _with_json(props, lambda obj: obj.update(pricePerToken=1))
    forged["price"] = "1"  # readable key made consistent: only the signature can tell
    with pytest.raises(SignatureError):
        decode_txt(forged, now_ms())


@pytest.mark.parametrize("edit", [
    {"price": "1"}, {"host": f"0x{9:040x}"}, {"api": "http://evil:1"}, {"key": "ab" * 32},
    {"n": "7"}, {"n": "0"}, {"n": "x"}, {"n": "\u00b2"}, {"r1": None}, {"r0": "{"},
])
def test_decode_refuses_malformed_or_inconsistent_txt(edit: dict[str, str | None]) -> None:
    props: dict[str, str | None] = {**encode_txt(make_record(4, models=("m" * 300,))), **edit}
    with pytest.raises(AnnouncementError) as info:
        decode_txt(props, now_ms())
    assert info.value.code == "INVALID_ANNOUNCEMENT"


def test_decode_refuses_an_expired_record() -> None:
    props = encode_txt(make_record(5, issued_ms=now_ms() - 120_000, ttl_s=60))
    with pytest.raises(AnnouncementError) as info:
        decode_txt(props, now_ms())
    assert info.value.code == "ANNOUNCEMENT_EXPIRED"


# -- the interface guard -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interface", ["0.0.0.0", "192.168.1.10", "10.0.0.1", "224.0.0.251", "::1", "eth0", ""])
async def test_non_loopback_interfaces_are_refused(interface: str) -> None:
    # The order matters: each check fails before anything could bind, should a guard ever break.
    with pytest.raises(ConfigError):
        check_interface(interface)
    with pytest.raises(ConfigError):
        MdnsAnnouncer(make_record(6), interface=interface)
    with pytest.raises(ConfigError):
        MdnsDiscovery(interface=interface)
    with pytest.raises(ConfigError):
        await discover_local_nodes(0.1, interface=interface)


def test_loopback_interfaces_are_accepted() -> None:
    assert check_interface("127.0.0.1") == "127.0.0.1" and check_interface("127.0.0.2") == "127.0.0.2"
    assert MdnsDiscovery().interface == MdnsAnnouncer(make_record(6)).interface == "127.0.0.1"
    assert isinstance(MdnsDiscovery(), DiscoverySource) and MdnsDiscovery.name == "mdns"


async def test_mdns_bound_to_127_0_0_1_only(announce: Announce) -> None:
    [announcer] = await announce(make_record(7))
    async with MdnsDiscovery(timeout_s=BROWSE_S) as discovery:
        for aiozc in (announcer.zeroconf, discovery.zeroconf):
            assert aiozc is not None
            engine = aiozc.zeroconf.engine
            assert engine.senders, "no sender sockets"
            for sender in engine.senders:  # everything we send leaves from 127.0.0.1 to the loopback group
                assert sender.sock.getsockname() == ("127.0.0.1", 5353)
                multicast_if = sender.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
                assert socket.inet_ntoa(multicast_if) == "127.0.0.1"
            bound = {reader.sock.getsockname() for reader in engine.readers}
            # the shared 5353 listener is bound to the mDNS group (never the wildcard), joined on 127.0.0.1 only
            assert bound == {("127.0.0.1", 5353), ("224.0.0.251", 5353)}
            for reader in engine.readers:
                if reader.sock.getsockname()[0] == "224.0.0.251" and sys.platform.startswith("linux"):
                    assert reader.sock.getsockopt(socket.IPPROTO_IP, 49, 4) == b"\x00\x00\x00\x00"  # IP_MULTICAST_ALL
        assert address(7) in mine(await discovery.discover(), 7)


# -- announce and discover on loopback -----------------------------------------------------------------------------


async def test_three_announcers_are_discovered_with_their_signed_fields(announce: Announce) -> None:
    records = [make_record(11, price=1000), make_record(12, price=2000, region="eu", capabilities=["e2e"]),
               make_record(13, price=3000, models=tuple(f"org/model-{i}.gguf" for i in range(30)))]
    await announce(*records)
    found = mine(await discover_local_nodes(BROWSE_S), 11, 12, 13)
    assert set(found) == {address(11), address(12), address(13)}
    for record in records:
        host = found[to_checksum_address(record.host)]
        assert (host.api_url, host.models, host.price_per_token) == (record.api_url, record.models,
                                                                    record.price_per_token)
        assert (host.signing_key, host.expires_at_ms, host.sources) == (record.signing_key, record.expires_at_ms,
                                                                        frozenset({"mdns"}))
        assert (host.region, host.capabilities) == (record.region, frozenset(record.capabilities))


async def test_forged_and_expired_records_are_dropped(announce: Announce,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    forged = dataclasses.replace(make_record(22, price=1000), price_per_token=1)  # signature no longer covers it
    expired = make_record(23, issued_ms=now_ms() - 120_000, ttl_s=60)
    await announce(make_record(21), forged, expired)
    with caplog.at_level(logging.DEBUG, logger="fabstir.discovery.mdns"):
        found = mine(await discover_local_nodes(BROWSE_S), 21, 22, 23)
    assert set(found) == {address(21)}
    dropped = {r.levelname: r.getMessage() for r in caplog.records if "dropping mDNS service" in r.getMessage()}
    assert "SIGNATURE_INVALID" in dropped["WARNING"] and "ANNOUNCEMENT_EXPIRED" in dropped["DEBUG"]


async def test_requirements_filter_the_discovered_hosts(announce: Announce) -> None:
    await announce(make_record(31, price=1000, models=("a",)), make_record(32, price=2000, models=("a", "b")),
                   make_record(33, price=3000, models=("b",), capabilities=["e2e"]))
    found = mine(await discover_local_nodes(BROWSE_S, requirements=Requirements(model="b", max_price=2500)),
                 31, 32, 33)
    assert set(found) == {address(32)}


async def test_heartbeat_update_is_seen_and_stop_removes_the_host(announce: Announce) -> None:
    first = make_record(41, price=1000)
    [announcer] = await announce(first)
    async with MdnsDiscovery(timeout_s=BROWSE_S) as discovery:
        assert mine(await discovery.discover(), 41)[address(41)].price_per_token == 1000
        second = make_record(41, issued_ms=first.issued_at_ms + 5000, price=1500)
        await announcer.update(second)
        # The browser keeps running, so a discover() right after answers from what it knows: the new TXT record
        # is multicast within moments (a browse window at most).
        seen = await until(lambda found: found.get(address(41)) is not None
                           and found[address(41)].price_per_token == 1500, discovery, 41)
        assert seen[address(41)].expires_at_ms == second.expires_at_ms
        with pytest.raises(ConfigError):
            await announcer.update(make_record(42))
        await announcer.stop()  # goodbyes: gone within moments, not at the end of the 60 s TTL
        assert await until(lambda found: found == {}, discovery, 41) == {}


async def until(check, discovery: MdnsDiscovery, *ns: int, timeout: float = 3 * BROWSE_S):
    """discover() until ``check`` holds for the hosts of ``ns`` (or the timeout passes); returns them."""
    deadline = time.monotonic() + timeout
    while True:
        found = mine(await discovery.discover(), *ns)
        if check(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_the_newest_record_wins_when_two_services_claim_one_host(announce: Announce) -> None:
    old = make_record(51, issued_ms=now_ms() - 10_000, price=1000)
    [first] = await announce(old)
    [second] = await announce(make_record(51, price=2000))
    assert first.service_name != second.service_name  # zeroconf renamed the second instance on the conflict
    found = mine(await discover_local_nodes(BROWSE_S), 51)
    assert found[address(51)].price_per_token == 2000


ANNOUNCER_SCRIPT = """
import asyncio, signal, sys, time
from nacl.signing import SigningKey
from zeroconf.asyncio import AsyncServiceInfo
from fabstir.discovery.mdns import MdnsAnnouncer
from fabstir.protocol.announcement import sign_announcement

async def main(n):
    record = sign_announcement(SigningKey(bytes([n]) * 32), host=f"0x{n:040x}", api_url="http://127.0.0.1:9999",
                               now_ms=time.time_ns() // 1_000_000, models=["remote/model.gguf"], price_per_token=777)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with MdnsAnnouncer(record):
        print("ready", flush=True)
        await stop.wait()

asyncio.run(main(int(sys.argv[1])))
"""


async def test_an_announcer_in_another_process_is_discovered_and_leaves_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ANNOUNCER_SCRIPT, "61",
                                                stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        async with MdnsDiscovery(timeout_s=BROWSE_S) as discovery:
            host = mine(await discovery.discover(), 61)[address(61)]
            assert (host.api_url, host.price_per_token, host.models) == ("http://127.0.0.1:9999", 777,
                                                                        ("remote/model.gguf",))
            assert host.signing_key == SigningKey(bytes([61]) * 32).verify_key.encode().hex()
            os.kill(proc.pid, signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            assert mine(await discovery.discover(), 61) == {}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_service_type() -> None:
    assert SERVICE_TYPE == "_fabstir._tcp.local."
