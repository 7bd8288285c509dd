"""The discovery service's registry: pure rules, clock passed in."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from nacl.signing import SigningKey

from fabstir.discovery.http_service import DiscoveryRegistry, HostQuery, RegistryError
from fabstir.protocol.announcement import HostAnnouncement, sign_announcement

T0 = 1_900_000_000_000
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(16)]


def address(i: int) -> str:
    return "0x" + f"{i:02x}" * 20


def record(i: int, now_ms: int = T0, *, key: int | None = None, ttl_s: int = 60, **fields: object) -> HostAnnouncement:
    return sign_announcement(KEYS[i if key is None else key], host=address(i), api_url=f"http://127.0.0.1:{9000 + i}",
                             now_ms=now_ms, ttl_s=ttl_s, **fields)  # type: ignore[arg-type]


def refused(code: str) -> Any:
    return pytest.raises(RegistryError, match=code)


def test_address_is_case_insensitive() -> None:
    registry = DiscoveryRegistry()
    held = registry.announce(record(10), T0)
    assert registry.get(address(10).upper().replace("0X", "0x"), T0) is held
    assert registry.get(address(11), T0) is None


def test_newer_record_from_same_key_replaces_older_and_older_is_refused() -> None:
    registry = DiscoveryRegistry()
    registry.announce(record(1, T0, price_per_token=5), T0)
    newer = record(1, T0 + 1000, price_per_token=7)
    assert registry.announce(newer, T0 + 1000).record == newer
    assert registry.announce(newer, T0 + 1000).record == newer, "the same record again is a no-op"
    with refused("ANNOUNCEMENT_OUTDATED"):
        registry.announce(record(1, T0 + 500), T0 + 1000)
    assert registry.get(address(1), T0 + 1000).record.price_per_token == 7  # type: ignore[union-attr]


def test_hijack_under_another_key_is_refused_until_the_record_expires() -> None:
    registry = DiscoveryRegistry()
    registry.announce(record(1, ttl_s=10), T0)
    with refused("HOST_KEY_MISMATCH"):
        registry.announce(record(1, T0 + 1000, key=2), T0 + 1000)
    assert registry.get(address(1), T0 + 1000).record.signing_key == KEYS[1].verify_key.encode().hex()  # type: ignore[union-attr]
    later = T0 + 10_000
    assert registry.announce(record(1, later, key=2), later).record.signing_key == KEYS[2].verify_key.encode().hex()
    assert registry.counters["refused.HOST_KEY_MISMATCH"] == 1 and registry.counters["accepted"] == 2


def test_expired_records_are_refused_and_dropped_on_read_and_sweep() -> None:
    registry = DiscoveryRegistry()
    with refused("ANNOUNCEMENT_EXPIRED"):
        registry.announce(record(1, ttl_s=1), T0 + 1000)
    registry.announce(record(1, ttl_s=1), T0)
    registry.announce(record(2, ttl_s=5), T0)
    registry.announce(record(3, ttl_s=5), T0)
    assert registry.get(address(1), T0 + 999) is not None
    assert registry.get(address(1), T0 + 1000) is None and len(registry) == 2, "dropped on read"
    assert registry.sweep(T0 + 4999) == 0
    assert registry.sweep(T0 + 5000) == 2 and len(registry) == 0


def test_registry_is_bounded_and_frees_room_as_records_expire() -> None:
    registry = DiscoveryRegistry(max_hosts=2)
    registry.announce(record(1, ttl_s=1), T0)
    registry.announce(record(2, ttl_s=60), T0)
    with refused("REGISTRY_FULL"):
        registry.announce(record(3), T0)
    registry.announce(record(2, T0 + 1), T0 + 1)  # a held address may still heartbeat when full
    registry.announce(record(3, T0 + 1000), T0 + 1000)  # host 1 expired: its slot is reused
    assert {e.record.host for e in registry.query(HostQuery(), T0 + 1000)} == {address(2), address(3)}


def test_query_filters_orders_by_price_and_limits() -> None:
    registry = DiscoveryRegistry()
    registry.announce(record(1, models=["a/x.gguf"], price_per_token=300, capabilities=["e2e"], region="eu"), T0)
    registry.announce(record(2, models=["a/x.gguf", "b/y.gguf"], price_per_token=100, region="us"), T0)
    registry.announce(record(3, models=["b/y.gguf"], price_per_token=200, capabilities=["e2e", "proofs"]), T0)

    def hosts(**filters: object) -> list[int]:
        return [int(e.record.host[2:4], 16) for e in registry.query(HostQuery(**filters), T0)]  # type: ignore[arg-type]

    assert hosts() == [2, 3, 1]
    assert hosts(model="a/x.gguf") == [2, 1]
    assert hosts(max_price=200) == [2, 3] and hosts(max_price=99) == []
    assert hosts(capabilities=frozenset({"e2e"})) == [3, 1]
    assert hosts(capabilities=frozenset({"e2e", "proofs"})) == [3]
    assert hosts(region="eu") == [1]
    assert hosts(limit=2) == [2, 3]
    assert hosts(model="b/y.gguf", max_price=150) == [2]


def test_reports_count_distinct_reporters_and_are_bounded() -> None:
    registry = DiscoveryRegistry(max_reports_per_host=3, max_issue_chars=20)
    registry.announce(record(1), T0)
    assert registry.report(address(1), "10.0.0.1", "timeouts", T0) == 1
    assert registry.report(address(1), "10.0.0.1", "still timeouts", T0 + 5) == 1, "same reporter counted once"
    assert registry.report(address(1), "10.0.0.2", "wrong answers", T0 + 6) == 2
    entry = registry.get(address(1), T0)
    assert entry is not None and [(r.reporter, r.issue, r.at_ms) for r in entry.reports.values()] == [
        ("10.0.0.1", "still timeouts", T0 + 5), ("10.0.0.2", "wrong answers", T0 + 6)]
    for n in range(3, 7):
        registry.report(address(1), f"10.0.0.{n}", "x", T0 + n)
    assert list(entry.reports) == ["10.0.0.4", "10.0.0.5", "10.0.0.6"], "oldest reporters forgotten first"
    with refused("INVALID_REPORT"):
        registry.report(address(1), "10.0.0.9", "x" * 21, T0)
    with refused("INVALID_REPORT"):
        registry.report(address(1), "10.0.0.9", "  ", T0)
    with refused("HOST_NOT_FOUND"):
        registry.report(address(2), "10.0.0.9", "who?", T0)
    assert registry.counters["reports"] == 7


def test_heartbeat_keeps_reports_and_stats_count_them() -> None:
    registry = DiscoveryRegistry()
    registry.announce(record(1), T0)
    registry.announce(record(2), T0)
    registry.report(address(1), "r", "slow", T0)
    registry.announce(record(1, T0 + 1000), T0 + 1000)
    stats = registry.stats(T0 + 1000)
    assert stats["hosts"] == 2 and stats["reportedHosts"] == 1 and stats["counters"]["accepted"] == 3


def test_tampered_record_is_kept_as_given() -> None:
    """The registry trusts what the app verified; this is how tests simulate a malicious store."""
    registry = DiscoveryRegistry()
    entry = registry.announce(record(1, price_per_token=500), T0)
    entry.record = dataclasses.replace(entry.record, price_per_token=1)
    assert registry.query(HostQuery(max_price=1), T0)[0].record.price_per_token == 1


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DiscoveryRegistry(max_hosts=0)
