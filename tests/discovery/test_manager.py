"""Unified discovery: merging, trust, fallbacks, caching, peer observations and stats.

Sources here are :class:`StaticSource` lists (a real source type: hosts known from configuration) and, for the
failure modes, small sources that raise or hang: the real sources (chain, HTTP service, mDNS, DHT) are exercised
together in ``test_unified_discovery.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from nacl.signing import SigningKey

from fabstir.discovery import (
    DiscoveryManager,
    HostCandidate,
    PeerManager,
    Requirements,
    SelectionError,
    StaticSource,
    candidate_from_announcement,
    merge_candidates,
)
from fabstir.errors import ConfigError
from fabstir.protocol.announcement import sign_announcement

NOW_MS = 1_700_000_000_000


def addr(n: int) -> str:
    return "0x" + f"{n:040x}"


def announced(key: SigningKey, n: int, *, price: int = 100, ttl: int = 60, source: str = "http",
              issued: int = NOW_MS, caps: tuple[str, ...] = (), models: tuple[str, ...] = ("m/a"),
              region: str | None = None) -> HostCandidate:
    record = sign_announcement(key, host=addr(n), api_url=f"http://127.0.0.1:{9000 + n}", now_ms=issued, ttl_s=ttl,
                               price_per_token=price, capabilities=caps, models=models, region=region)
    return candidate_from_announcement(record, source)


def on_chain(key: SigningKey | None, n: int, *, price: int = 500, stake: int = 10**18) -> HostCandidate:
    return HostCandidate(address=candidate_from_announcement(
        sign_announcement(SigningKey.generate(), host=addr(n), api_url="http://x", now_ms=NOW_MS), "x").address,
        api_url=f"http://127.0.0.1:{8000 + n}", models=("m/a",), price_per_token=price, stake=stake,
        sources=frozenset({"chain"}), signing_key=key.verify_key.encode().hex() if key else None)


# -- merge ---------------------------------------------------------------------------------------------------


def test_chain_price_and_stake_win_over_a_lower_announced_price() -> None:
    key = SigningKey.generate()
    chain_host = on_chain(key, 1, price=500)
    cheap_claim = announced(key, 1, price=1, caps=("e2e-v1",), region="eu")
    result = merge_candidates([("http", [cheap_claim]), ("chain", [chain_host])], NOW_MS)
    (host,) = result.hosts
    assert host.price_per_token == 500 and host.stake == 10**18
    assert host.api_url == chain_host.api_url
    assert host.sources == {"chain", "http"}
    assert host.capabilities == {"e2e-v1"} and host.region == "eu"
    assert result.rejected == []


def test_announcement_under_another_key_than_the_chain_lists_is_an_impostor() -> None:
    real, impostor = SigningKey.generate(), SigningKey.generate()
    result = merge_candidates([("chain", [on_chain(real, 1)]), ("dht", [announced(impostor, 1, caps=("x",))])],
                              NOW_MS)
    (host,) = result.hosts
    assert host.sources == {"chain"} and host.capabilities == frozenset()
    assert [(s, "key" in reason) for _, s, reason in result.rejected] == [("dht", True)]


def test_dedupe_by_address_case_insensitively_and_conflicting_keys() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    first = announced(key, 7, source="mdns")
    lower = dataclasses.replace(announced(key, 7, source="http", issued=NOW_MS + 5),
                                address=first.address.lower())
    conflicting = announced(other, 7, source="dht")
    result = merge_candidates([("mdns", [first]), ("http", [lower]), ("dht", [conflicting])], NOW_MS)
    (host,) = result.hosts
    assert host.sources == {"mdns", "http"}
    assert host.expires_at_ms == lower.expires_at_ms  # the newest record of the same key
    assert [s for _, s, _ in result.rejected] == ["dht"]


def test_expired_announcements_and_registered_only() -> None:
    key = SigningKey.generate()
    stale = announced(key, 2, ttl=1, issued=NOW_MS - 5_000)
    fresh = announced(SigningKey.generate(), 3)
    result = merge_candidates([("http", [stale, fresh])], NOW_MS)
    assert [h.address for h in result.hosts] == [fresh.address]
    # an address first seen in a lapsed record and then in a live one is still listed once
    live = announced(key, 2, source="mdns")
    once = merge_candidates([("http", [stale]), ("mdns", [live]), ("dht", [stale])], NOW_MS)
    assert [(h.address, h.sources) for h in once.hosts] == [(live.address, {"mdns"})]
    assert ("http", "expired") in [(s, r) for _, s, r in result.rejected]
    registered = merge_candidates([("http", [fresh]), ("chain", [on_chain(key, 9)])], NOW_MS, registered_only=True)
    assert [h.sources for h in registered.hosts] == [{"chain"}]


# -- peers ---------------------------------------------------------------------------------------------------


def test_peer_reputation_quality_blacklist_and_preferences(tmp_path) -> None:
    peers = PeerManager(alpha=0.5)
    assert peers.reputation(addr(1)) == 0.5
    peers.record_completed(addr(1))
    peers.record_completed(addr(1))
    assert peers.reputation(addr(1)) == 3 / 4
    peers.record_dispute(addr(2), now=0.0)  # one dispute weighs three failures
    assert peers.reputation(addr(2)) == 1 / 5
    peers.record_rtt(addr(1), 10.0)
    peers.record_rtt(addr(1), 20.0)
    assert peers.quality(addr(1)).rtt_ms == 15.0
    peers.record_stream(addr(1), ttft_ms=4.0, tokens_per_s=100.0)
    host = peers.apply(HostCandidate(address=addr(1).upper().replace("0X", "0x"), api_url="http://h"))
    assert (host.reputation, host.latency_ms, host.tokens_per_s) == (0.75, 15.0, 100.0)
    with pytest.raises(ValueError):
        peers.record_rtt(addr(1), float("nan"))

    peers.blacklist(addr(3), until=100.0)
    assert peers.is_blocked(addr(3), 99.0) and not peers.is_blocked(addr(3), 100.0)
    assert peers.is_blocked(addr(2), 1.0)  # the dispute's failure ban
    assert peers.next_change(1.0) is not None

    peers.set_preferred([addr(5)])
    hosts = [HostCandidate(address=addr(n), api_url="http://h") for n in (4, 5, 6)]
    assert [h.address for h in peers.usable(hosts, 1000.0)][0] == addr(5)

    peers.blacklist(addr(8))
    path = tmp_path / "peers.json"
    peers.save(path)
    again = PeerManager.load(path)
    assert again.reputation(addr(1)) == 0.75 and again.is_blocked(addr(8), 1e9)
    assert not again.is_blocked(addr(3), 0.0)  # time-limited entries do not survive a restart
    assert again.preferred == (addr(5),)
    assert PeerManager.load(tmp_path / "missing.json").preferred == ()


# -- manager -------------------------------------------------------------------------------------------------


class FailingSource:
    """A source that raises, like an unreachable service."""

    def __init__(self, name: str = "broken") -> None:
        self.name = name
        self.calls = 0

    async def discover(self, requirements=None):
        self.calls += 1
        raise ConnectionError("service unreachable")


class HangingSource:
    """A source that never answers, like a service that accepts connections and then stalls."""

    name = "slow"

    async def discover(self, requirements=None):
        await asyncio.sleep(3600)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_manager(*sources, **kw) -> tuple[DiscoveryManager, Clock]:
    clock = Clock()
    return DiscoveryManager(sources, clock=clock, wall_ms=lambda: NOW_MS, **kw), clock


async def test_failing_and_hanging_sources_do_not_sink_discovery() -> None:
    good = StaticSource([announced(SigningKey.generate(), n) for n in range(3)], name="static")
    manager, _ = make_manager(FailingSource(), HangingSource(), good, source_timeout_s=0.2)
    hosts = await manager.discover_all_hosts()
    assert len(hosts) == 3 and all("static" in h.sources for h in hosts)
    stats = {s["name"]: s for s in manager.get_discovery_stats()["sources"]}
    assert stats["broken"]["failures"] == 1 and not stats["broken"]["healthy"]
    assert "unreachable" in stats["broken"]["last_error"]
    assert stats["slow"]["timeouts"] == 1 and "timed out" in stats["slow"]["last_error"]
    assert stats["static"]["healthy"] and stats["static"]["success_rate"] == 1.0


async def test_a_failing_source_falls_back_to_its_last_good_answer() -> None:
    hosts = [announced(SigningKey.generate(), 1, ttl=3600)]

    class Flaky:
        name = "flaky"
        fail = False

        async def discover(self, requirements=None):
            if self.fail:
                raise OSError("down")
            return hosts

    flaky = Flaky()
    manager, clock = make_manager(flaky, cache_ttl_s=1.0, stale_ok_s=60.0)
    assert len(await manager.discover_all_hosts()) == 1
    flaky.fail = True
    clock.t += 2
    assert len(await manager.discover_all_hosts()) == 1  # stale but within stale_ok_s
    assert manager.get_discovery_stats()["sources"][0]["stale_answers"] == 1
    clock.t += 120
    assert await manager.discover_all_hosts() == []


async def test_fallback_mode_uses_the_first_source_with_hosts_in_priority_order() -> None:
    first = StaticSource([announced(SigningKey.generate(), 1)], name="a")
    second = StaticSource([announced(SigningKey.generate(), 2)], name="b")
    broken = FailingSource("c")
    manager, _ = make_manager(broken, first, second, mode="fallback")
    assert [h.address for h in await manager.discover_all_hosts()] == [addr(1)]
    manager.set_discovery_priority(["b"])
    assert manager.source_names == ("b", "c", "a")
    assert [h.address for h in await manager.discover_all_hosts()] == [addr(2)]
    manager.enable_discovery_source("b", False)
    assert [h.address for h in await manager.discover_all_hosts()] == [addr(1)]
    assert broken.calls == 2
    with pytest.raises(ConfigError):
        manager.set_discovery_priority(["nope"])
    with pytest.raises(ConfigError):
        manager.enable_discovery_source("nope")
    with pytest.raises(ConfigError):
        manager.add_source(object())  # type: ignore[arg-type]


async def test_cache_hits_filters_and_invalidation() -> None:
    key = SigningKey.generate()
    source = StaticSource([announced(key, 1, price=10, caps=("e2e-v1",), models=("m/a",)),
                           announced(SigningKey.generate(), 2, price=90, region="eu", models=("m/b",))])
    manager, clock = make_manager(source)
    assert len(await manager.discover_all_hosts()) == 2
    assert [h.address for h in await manager.discover_all_hosts(Requirements(max_price=50))] == [addr(1)]
    assert [h.address for h in await manager.discover_all_hosts(Requirements(model="m/b"))] == [addr(2)]
    assert [h.address for h in await manager.discover_all_hosts(Requirements(region="eu"))] == [addr(2)]
    assert [h.address for h in await manager.discover_all_hosts(
        Requirements(capabilities=frozenset({"e2e-v1"})))] == [addr(1)]
    stats = manager.get_discovery_stats()
    assert stats["cache_misses"] == 1 and stats["cache_hits"] == 4 and stats["cache_hit_rate"] == 0.8
    source.hosts.append(announced(SigningKey.generate(), 3))
    assert len(await manager.discover_all_hosts()) == 2  # still cached
    manager.invalidate()
    assert len(await manager.discover_all_hosts()) == 3
    clock.t += 31
    await manager.discover_all_hosts()
    assert manager.get_discovery_stats()["cache_misses"] == 3


async def test_records_expire_out_of_a_warm_cache() -> None:
    now = [NOW_MS]
    source = StaticSource([announced(SigningKey.generate(), 1, ttl=2), announced(SigningKey.generate(), 2, ttl=60)])
    manager = DiscoveryManager([source], wall_ms=lambda: now[0], cache_ttl_s=3600)
    assert len(await manager.discover_all_hosts()) == 2
    now[0] += 2_000
    assert [h.address for h in await manager.discover_all_hosts()] == [addr(2)]
    assert manager.get_discovery_stats()["cache_misses"] == 1


async def test_blacklist_bans_and_preferred_peers_in_selection() -> None:
    hosts = [announced(SigningKey.generate(), n, price=p) for n, p in ((1, 10), (2, 20), (3, 30))]
    manager, clock = make_manager(StaticSource(hosts))
    assert (await manager.select_host("cheapest")).address == addr(1)
    manager.peers.blacklist(addr(1), until=clock.t + 10)
    assert (await manager.select_host("cheapest")).address == addr(2)
    manager.peers.record_failure(addr(2), clock.t)  # banned for 30 s
    assert (await manager.select_host("cheapest")).address == addr(3)
    clock.t += 11  # the blacklist entry ended; the ban has not
    assert (await manager.select_host("cheapest")).address == addr(1)
    manager.peers.set_preferred([addr(3)])
    assert (await manager.select_host("cheapest")).address == addr(3)
    assert (await manager.select_host("cheapest", Requirements(max_price=15))).address == addr(1)
    with pytest.raises(SelectionError) as info:
        await manager.select_host(requirements=Requirements(max_price=1))
    assert info.value.code == "NO_HOST_AVAILABLE"


async def test_reputation_from_outcomes_changes_the_reputable_choice() -> None:
    hosts = [announced(SigningKey.generate(), n) for n in (1, 2)]
    manager, clock = make_manager(StaticSource(hosts))
    manager.peers.record_completed(addr(2))
    assert (await manager.select_host("reputable")).address == addr(2)
    ranked = await manager.rank_hosts()
    assert ranked[0].host.address == addr(2) and ranked[0].breakdown["reputation"] == 1.0
