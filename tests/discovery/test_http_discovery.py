"""The HTTP discovery service and its client, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from fabstir.cli.main import main
from fabstir.discovery.http_client import DiscoveryServiceError, HttpAnnouncer, HttpDiscoveryClient, backoff_delays
from fabstir.discovery.http_service import DiscoveryRegistry, DiscoveryServer, HostQuery, serve_discovery
from fabstir.discovery.selection import HostCandidate, Requirements
from fabstir.errors import ConnectError, RemoteProtocolError
from fabstir.node.server import NodeServer
from fabstir.protocol.announcement import AnnouncementError, HostAnnouncement, sign_announcement
from fabstir.protocol.signing import SignatureError
from tests.helpers import free_port

T0 = 1_900_000_000_000
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(16)]


class Clock:
    """A settable unix-ms clock shared by a service and its clients."""

    def __init__(self, now_ms: int = T0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


def address(i: int) -> str:
    return "0x" + f"{i:02x}" * 20


def record(i: int, now_ms: int = T0, *, key: int | None = None, ttl_s: int = 60, **fields: Any) -> HostAnnouncement:
    return sign_announcement(KEYS[i if key is None else key], host=address(i), api_url=f"http://127.0.0.1:{9000 + i}",
                             now_ms=now_ms, ttl_s=ttl_s, **fields)


def numbers(hosts: list[HostCandidate]) -> list[int]:
    return [int(h.address[2:4], 16) for h in hosts]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as raw:
        yield raw


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(clock: Clock) -> AsyncIterator[DiscoveryServer]:
    async with serve_discovery(clock=clock) as server:
        yield server


ClientFactory = Callable[..., HttpDiscoveryClient]


@pytest.fixture
async def make_client(service: DiscoveryServer, clock: Clock) -> AsyncIterator[ClientFactory]:
    clients: list[HttpDiscoveryClient] = []

    def make(url: str | None = None, **options: Any) -> HttpDiscoveryClient:
        options.setdefault("clock", clock)
        options.setdefault("backoff_s", 0.01)
        client = HttpDiscoveryClient(url or service.url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def client(make_client: ClientFactory) -> HttpDiscoveryClient:
    return make_client(cache_ttl_s=0)


async def announce_fleet(client: HttpDiscoveryClient, now_ms: int = T0) -> None:
    await client.announce(record(1, now_ms, models=["a/x.gguf"], price_per_token=300, capabilities=["e2e"],
                                 region="eu"))
    await client.announce(record(2, now_ms, models=["a/x.gguf", "b/y.gguf"], price_per_token=100, region="us"))
    await client.announce(record(3, now_ms, models=["b/y.gguf"], price_per_token=200,
                                 capabilities=["e2e", "proofs"]))


# -- announce and query --------------------------------------------------------------------------------------


async def test_hosts_announce_and_clients_filter(client: HttpDiscoveryClient) -> None:
    assert await client.announce(record(1, T0 - 1000, ttl_s=30)) == T0 + 29_000  # replaced by the fleet's
    await announce_fleet(client)
    hosts = await client.discover_hosts()
    assert numbers(hosts) == [2, 3, 1], "cheapest first"
    assert all(h.sources == {"http"} and h.expires_at_ms == T0 + 60_000 for h in hosts)
    assert hosts[0].api_url == "http://127.0.0.1:9002" and hosts[0].price_per_token == 100
    assert hosts[0].signing_key == KEYS[2].verify_key.encode().hex() and hosts[0].region == "us"
    assert numbers(await client.discover_hosts(Requirements(model="a/x.gguf"))) == [2, 1]
    assert numbers(await client.discover_hosts(Requirements(max_price=200))) == [2, 3]
    assert numbers(await client.discover_hosts(Requirements(capabilities=frozenset({"e2e"})))) == [3, 1]
    assert numbers(await client.discover_hosts(Requirements(capabilities=frozenset({"e2e", "proofs"})))) == [3]
    assert numbers(await client.discover_hosts(Requirements(region="eu"))) == [1]
    assert numbers(await client.discover_hosts(Requirements(model="b/y.gguf", max_price=150))) == [2]
    assert numbers(await client.discover_hosts(limit=1)) == [2]
    assert numbers(await client.discover(Requirements(model="nope"))) == []


async def test_get_host_details(client: HttpDiscoveryClient) -> None:
    await announce_fleet(client)
    details = await client.get_host_details(address(3).upper().replace("0X", "0x"))
    assert details == record(3, models=["b/y.gguf"], price_per_token=200, capabilities=["e2e", "proofs"])
    with pytest.raises(DiscoveryServiceError) as caught:
        await client.get_host_details(address(9))
    assert caught.value.code == "HOST_NOT_FOUND" and caught.value.status_code == 404


async def test_stale_host_disappears_after_its_ttl(http: httpx.AsyncClient, client: HttpDiscoveryClient, service: DiscoveryServer,
                                                   clock: Clock) -> None:
    await client.announce(record(1, ttl_s=2))
    await client.announce(record(2, ttl_s=60))
    clock.advance(1.999)
    assert numbers(await client.discover_hosts()) == [1, 2]
    clock.advance(0.001)
    assert numbers(await client.discover_hosts()) == [2]
    assert (await http.get(f"{service.url}/health")).json() == {"status": "healthy", "hosts": 1}
    with pytest.raises(DiscoveryServiceError, match="HOST_NOT_FOUND"):
        await client.get_host_details(address(1))


async def test_heartbeat_keeps_a_host_listed(client: HttpDiscoveryClient, clock: Clock) -> None:
    announcer = HttpAnnouncer(client, lambda now: record(1, now, ttl_s=2), interval_s=1.0, clock=clock)
    assert await announcer.announce_once()
    for _ in range(5):
        clock.advance(1.5)  # past the first record's TTL: only the re-signed ones keep it listed
        assert await announcer.announce_once()
        assert numbers(await client.discover_hosts()) == [1]
    assert announcer.beats == 6 and announcer.expires_at_ms == clock.now_ms + 2000
    clock.advance(2.0)  # no beat
    assert await client.discover_hosts() == []


async def test_announcer_beats_in_the_background() -> None:
    key = SigningKey.generate()

    def make(now_ms: int) -> HostAnnouncement:
        return sign_announcement(key, host=address(7), api_url="http://127.0.0.1:9007", now_ms=now_ms, ttl_s=2)

    async with serve_discovery() as service, HttpDiscoveryClient(service.url, cache_ttl_s=0) as client:
        async with HttpAnnouncer(service.url, make, interval_s=0.02) as announcer:
            await _until(lambda: announcer.beats >= 3)
            assert numbers(await client.discover_hosts()) == [7]
            assert (await client.get_host_details(address(7))).signing_key == key.verify_key.encode().hex()
        assert announcer.failures == 0
        beats = announcer.beats
        await asyncio.sleep(0.1)
        assert announcer.beats == beats, "stopped"


async def test_announcer_survives_the_service_being_down() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    announcer = HttpAnnouncer(url, lambda now: record(4, now), interval_s=0.05)
    assert not await announcer.announce_once()
    assert announcer.failures == 1 and isinstance(announcer.last_error, ConnectError)
    announcer.start()
    await asyncio.sleep(0.08)
    async with serve_discovery(port=port) as server:
        await _until(lambda: announcer.beats >= 1)
        assert len(server.registry) == 1
    await announcer.stop()
    assert announcer.failures >= 2


# -- what the service refuses --------------------------------------------------------------------------------


async def test_forged_records_are_refused(http: httpx.AsyncClient, client: HttpDiscoveryClient, service: DiscoveryServer) -> None:
    wire = record(1, price_per_token=500).to_wire()
    for forged in ({**wire, "pricePerToken": 1}, {**wire, "sig": "00" * 64},
                   {**wire, "signingKey": KEYS[5].verify_key.encode().hex()}):
        response = await http.post(f"{service.url}/v1/announce", json=forged)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "SIGNATURE_INVALID"
    bad = dataclasses.replace(record(2), price_per_token=1)
    with pytest.raises(DiscoveryServiceError) as caught:
        await client.announce(bad)
    assert caught.value.code == "SIGNATURE_INVALID" and client.stats.requests == 1, "4xx is not retried"
    assert await client.discover_hosts() == []
    stats = (await http.get(f"{service.url}/v1/stats")).json()
    assert stats["hosts"] == 0 and stats["counters"]["refused.SIGNATURE_INVALID"] == 4


async def test_hijack_under_another_key_is_refused(client: HttpDiscoveryClient) -> None:
    await client.announce(record(1, price_per_token=500))
    with pytest.raises(DiscoveryServiceError) as caught:
        await client.announce(record(1, T0 + 1000, key=9, price_per_token=1))
    assert caught.value.code == "HOST_KEY_MISMATCH" and caught.value.status_code == 409
    [host] = await client.discover_hosts()
    assert host.price_per_token == 500 and host.signing_key == KEYS[1].verify_key.encode().hex()
    with pytest.raises(DiscoveryServiceError, match="ANNOUNCEMENT_OUTDATED"):
        await client.announce(record(1, T0 - 1000))


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "INVALID_ANNOUNCEMENT"),
    (b"[1, 2]", 400, "INVALID_ANNOUNCEMENT"),
    (b"\xff\xfe", 400, "INVALID_ANNOUNCEMENT"),
    (b"[" * 5000 + b"]" * 5000, 413, "PAYLOAD_TOO_LARGE"),
    (b'{"v": 1, "sig": "00"}', 400, "INVALID_ANNOUNCEMENT"),
    (b" " * 9000, 413, "PAYLOAD_TOO_LARGE"),
])
async def test_bad_announce_bodies_get_coded_errors(http: httpx.AsyncClient, service: DiscoveryServer, body: bytes, status: int, code: str) -> None:
    response = await http.post(f"{service.url}/v1/announce", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


async def test_oversize_body_without_content_length_is_refused(http: httpx.AsyncClient, service: DiscoveryServer) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 1024

    response = await http.post(f"{service.url}/v1/announce", content=chunks())
    assert response.status_code == 413 and response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_expired_and_future_records_are_refused(http: httpx.AsyncClient, service: DiscoveryServer) -> None:
    for rec, code in ((record(1, T0 - 61_000), "ANNOUNCEMENT_EXPIRED"), (record(1, T0 + 120_000), "STALE_TIMESTAMP")):
        response = await http.post(f"{service.url}/v1/announce", content=rec.to_json())
        assert (response.status_code, response.json()["error"]["code"]) == (400, code)


async def test_full_registry_is_refused_without_retries(clock: Clock, make_client: ClientFactory) -> None:
    async with serve_discovery(max_hosts=1, clock=clock) as small:
        client = make_client(small.url, retries=3)
        await client.announce(record(1))
        with pytest.raises(DiscoveryServiceError) as caught:
            await client.announce(record(2))
        assert (caught.value.code, caught.value.status_code) == ("REGISTRY_FULL", 507)
        assert client.stats.retries == 0


@pytest.mark.parametrize("query", ["max_price=abc", "max_price=-1", "limit=0", "limit=5000"])
async def test_bad_queries_get_coded_errors(http: httpx.AsyncClient, service: DiscoveryServer, query: str) -> None:
    response = await http.get(f"{service.url}/v1/hosts?{query}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "INVALID_QUERY"


# -- an untrusted service ------------------------------------------------------------------------------------


class LyingRegistry(DiscoveryRegistry):
    """Ignores every filter and lists each host twice."""

    def query_page(self, query: HostQuery, now_ms: int) -> tuple[list[Any], int]:
        found, _ = super().query_page(HostQuery(), now_ms)
        return found + found, 2 * len(found)


async def test_client_drops_records_a_malicious_service_tampered_with(http: httpx.AsyncClient, clock: Clock,
                                                                      make_client: ClientFactory) -> None:
    registry = LyingRegistry()
    for rec in (record(1, price_per_token=500, models=["m"]), record(2, price_per_token=400, models=["m"]),
                record(3, price_per_token=300, models=["other"])):
        registry.announce(rec, T0)
    held = registry.get(address(1), T0)
    assert held is not None
    held.record = dataclasses.replace(held.record, price_per_token=1)  # the service lies about host 1's price
    async with serve_discovery(registry=registry, clock=clock) as evil:
        listed = (await http.get(f"{evil.url}/v1/hosts?model=m")).json()["hosts"]
        assert {h["record"]["pricePerToken"] for h in listed} == {1, 400, 300}
        client = make_client(evil.url, cache_ttl_s=0)
        assert numbers(await client.discover_hosts(Requirements(model="m"))) == [2]
        assert client.stats.dropped == 5, "tampered x2, other model x2, duplicate x1"
        with pytest.raises(SignatureError):
            await client.get_host_details(address(1))
        assert (await client.get_host_details(address(2))).price_per_token == 400


async def test_client_checks_ttl_with_its_own_clock(service: DiscoveryServer, clock: Clock,
                                                    make_client: ClientFactory) -> None:
    await make_client().announce(record(1, ttl_s=10))
    ahead = make_client(clock=lambda: T0 + 10_000, cache_ttl_s=0)
    assert await ahead.discover_hosts() == [] and ahead.stats.dropped == 1
    with pytest.raises(AnnouncementError, match="ANNOUNCEMENT_EXPIRED"):
        await ahead.get_host_details(address(1))


# -- reports -------------------------------------------------------------------------------------------------


async def test_reports_count_distinct_reporters(http: httpx.AsyncClient, client: HttpDiscoveryClient, make_client: ClientFactory,
                                                service: DiscoveryServer) -> None:
    await announce_fleet(client)
    assert await client.report_host(address(1), "timed out twice") == 1
    assert await client.report_host(address(1), "timed out again") == 1, "one reporter counts once"
    other = make_client(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"), cache_ttl_s=0)
    assert await other.report_host(address(1), "wrong answers") == 2
    listed = {h.record.host: h.reports for h in await client.list_hosts()}
    assert listed == {address(1): 2, address(2): 0, address(3): 0}
    details = (await http.get(f"{service.url}/v1/hosts/{address(1)}")).json()
    assert [r["issue"] for r in details["recentReports"]] == ["wrong answers", "timed out again"]
    with pytest.raises(DiscoveryServiceError, match="HOST_NOT_FOUND"):
        await client.report_host(address(9), "who?")
    with pytest.raises(DiscoveryServiceError, match="INVALID_REPORT"):
        await client.report_host(address(1), "x" * 1000)
    response = await http.post(f"{service.url}/v1/hosts/{address(1)}/report", content=b"{oops")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "INVALID_REPORT")


# -- retries -------------------------------------------------------------------------------------------------


async def test_unreachable_service_fails_with_a_coded_error_after_retries(make_client: ClientFactory) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}", retries=2)
    with pytest.raises(ConnectError) as caught:
        await client.discover_hosts()
    assert caught.value.code == "CONNECT_FAILED" and "after 3 attempts" in str(caught.value)
    assert client.stats.requests == 3 and client.stats.retries == 2


async def test_service_down_then_up(make_client: ClientFactory, clock: Clock) -> None:
    port = free_port()
    client = make_client(f"http://127.0.0.1:{port}", retries=20, backoff_s=0.05, backoff_max_s=0.05)
    pending = asyncio.create_task(client.discover_hosts())
    await _until(lambda: client.stats.retries >= 1)
    async with serve_discovery(port=port, clock=clock) as late:
        late.registry.announce(record(1), T0)
        assert numbers(await pending) == [1]
    assert client.stats.retries >= 1


async def test_5xx_is_retried_and_other_errors_are_not() -> None:
    answers = [503, 502, 200]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        status = answers.pop(0)
        body = {"hosts": [], "count": 0} if status == 200 else {"error": {"code": "BUSY", "message": "busy"}}
        return httpx.Response(status, json=body)

    async with HttpDiscoveryClient("http://discovery.test", backoff_s=0.001, retries=2,
                                   transport=httpx.MockTransport(handler)) as client:
        assert await client.discover_hosts() == [] and client.stats.retries == 2
        answers.extend([503, 503, 503])
        client.invalidate()
        with pytest.raises(DiscoveryServiceError) as caught:
            await client.discover_hosts()
        assert (caught.value.code, caught.value.status_code) == ("BUSY", 503)
    assert len(seen) == 6


def test_backoff_doubles_up_to_a_cap() -> None:
    delays = backoff_delays(0.1, 2.0, 0.5)
    assert [next(delays) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


# -- cache ---------------------------------------------------------------------------------------------------


async def test_cache_hits_misses_and_invalidation(make_client: ClientFactory, clock: Clock,
                                                  service: DiscoveryServer) -> None:
    client = make_client(cache_ttl_s=10)
    await client.announce(record(1, models=["m"]))
    assert numbers(await client.discover_hosts()) == [1]
    service.registry.announce(record(2, models=["m"]), T0)  # behind the client's back
    assert numbers(await client.discover_hosts()) == [1], "served from the cache"
    assert (client.stats.hits, client.stats.misses) == (1, 1)
    assert numbers(await client.discover_hosts(Requirements(model="m"))) == [1, 2], "another query, another key"
    assert (client.stats.hits, client.stats.misses) == (1, 2)
    client.invalidate(None)
    assert numbers(await client.discover_hosts()) == [1, 2]
    assert numbers(await client.discover_hosts(Requirements(model="m"))) == [1, 2]
    assert (client.stats.hits, client.stats.misses) == (2, 3), "only the unfiltered query was forgotten"
    clock.advance(10)
    await client.discover_hosts()
    assert client.stats.misses == 4, "past cache_ttl_s"
    await client.announce(record(3))
    await client.discover_hosts()
    assert client.stats.misses == 5, "announce forgets the cache"


async def test_cached_hosts_that_expire_are_not_served(make_client: ClientFactory, clock: Clock) -> None:
    client = make_client(cache_ttl_s=60)
    await client.announce(record(1, ttl_s=5))
    await client.announce(record(2, ttl_s=60))
    assert numbers(await client.discover_hosts()) == [1, 2]
    clock.advance(4)
    assert numbers(await client.discover_hosts()) == [1, 2] and client.stats.hits == 1
    await make_client().announce(record(1, T0 + 4_000, ttl_s=5))  # a heartbeat the first client's cache has not seen
    clock.advance(1)  # the cached record of host 1 lapses: the answer is fetched again, with the fresh record
    assert numbers(await client.discover_hosts()) == [1, 2] and (client.stats.hits, client.stats.misses) == (1, 2)


async def test_background_refresh(make_client: ClientFactory, service: DiscoveryServer) -> None:
    client = make_client(cache_ttl_s=3600)
    await client.announce(record(1))
    assert numbers(await client.discover_hosts()) == [1]
    service.registry.announce(record(2), T0)
    client.start_background_refresh(0.02)
    await _until(lambda: client.stats.refreshes >= 1)
    assert numbers(await client.discover_hosts()) == [1, 2]
    assert client.stats.misses == 1 and client.stats.hits == 1
    await client.stop_background_refresh()
    refreshes = client.stats.refreshes
    await asyncio.sleep(0.06)
    assert client.stats.refreshes == refreshes


# -- ping ----------------------------------------------------------------------------------------------------


async def test_ping_host_measures_a_real_node(node: NodeServer, make_client: ClientFactory) -> None:
    client = make_client()
    rtts = [await client.ping_host(node.url), await client.ping_host(node.ws_url), await client.ping_host(node.url + "/")]
    assert all(0 < rtt < 10_000 for rtt in rtts)
    with pytest.raises(ConnectError):
        await client.ping_host(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DiscoveryServiceError, match="HOST_UNHEALTHY"):
        await client.ping_host(node.url + "/v1/nothing-here")


# -- CLI -----------------------------------------------------------------------------------------------------

FABSTIR = [sys.executable, "-m", "fabstir.cli"]


async def test_cli_discovery_serve(http: httpx.AsyncClient) -> None:
    process = subprocess.Popen([*FABSTIR, "discovery", "serve", "--port", "0", "--max-hosts", "5"],
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stderr.readline), 60)
        found = re.search(r"discovery service on (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        now = time.time_ns() // 1_000_000
        async with HttpDiscoveryClient(found.group(1)) as client:
            await client.announce(record(1, now, models=["m"]))
            assert numbers(await client.discover_hosts(Requirements(model="m"))) == [1]
            assert (await http.get(f"{found.group(1)}/v1/stats")).json()["maxHosts"] == 5
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) in (0, 130)


def test_cli_discovery_serve_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        for args, code in ((["--port", str(busy.getsockname()[1])], "PORT_IN_USE"),
                           (["--max-hosts", "0"], "CONFIG_ERROR")):
            assert main(["discovery", "serve", *args]) == 1
            errors = capsys.readouterr().err.splitlines()
            assert len(errors) == 1 and errors[0].startswith(f"error: {code}: "), errors


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_listings_are_paged_and_the_client_follows_the_pages(http: httpx.AsyncClient, service: DiscoveryServer,
                                                                   make_client: ClientFactory) -> None:
    client = make_client(cache_ttl_s=0)
    for i in range(1, 6):
        await client.announce(record(i, price_per_token=100 * i))
    page = (await http.get(f"{service.url}/v1/hosts?limit=2&offset=2")).json()
    assert ([int(h["record"]["host"][2:4], 16) for h in page["hosts"]], page["total"], page["next"]) == ([3, 4], 5, 4)
    assert (await http.get(f"{service.url}/v1/hosts?limit=2&offset=4")).json()["next"] is None
    assert (await http.get(f"{service.url}/v1/hosts?offset=-1")).status_code == 400
    paged = make_client(cache_ttl_s=0, page_size=2)
    before = paged.stats.requests
    assert numbers(await paged.discover_hosts()) == [1, 2, 3, 4, 5]
    assert paged.stats.requests - before == 3
    assert numbers(await paged.discover_hosts(limit=2)) == [1, 2]  # a query with a limit is one page
    capped = make_client(cache_ttl_s=0, page_size=2, max_hosts=3)
    assert numbers(await capped.discover_hosts()) == [1, 2, 3]


async def test_paging_that_does_not_advance_is_a_coded_error(make_client: ClientFactory) -> None:
    """A service stuck on one page (faked with httpx.MockTransport: a real one would need a test-only hook)."""

    def stuck(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"hosts": [], "count": 0, "total": 10, "next": 0})

    client = HttpDiscoveryClient("http://discovery.invalid", transport=httpx.MockTransport(stuck), retries=0)
    with pytest.raises(RemoteProtocolError) as info:
        await client.discover_hosts()
    assert info.value.code == "INVALID_RESPONSE" and "does not advance" in str(info.value)
    await client.aclose()
