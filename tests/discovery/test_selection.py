"""Host selection: strategies on hand-made snapshots, exact breakdowns, determinism, stats and bans."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir.discovery import (
    FACTORS,
    HostCandidate,
    HostSelector,
    Requirements,
    SelectionCriteria,
    SelectionError,
    SelectionStats,
    Weights,
)
from fabstir.errors import FabstirError


def host(address: str, **kw: object) -> HostCandidate:
    kw.setdefault("models", ("m",))
    return HostCandidate(address=address, api_url=f"http://{address}", **kw)  # type: ignore[arg-type]


# price, latency, reputation, throughput, stake chosen so each strategy picks someone else.
A = host("0xa", price_per_token=1000, latency_ms=300.0, reputation=0.25, tokens_per_s=10.0, stake=100)
B = host("0xb", price_per_token=3000, latency_ms=100.0, reputation=0.5, tokens_per_s=50.0, stake=300)
C = host("0xc", price_per_token=2000, latency_ms=None, reputation=0.75, tokens_per_s=None, stake=200,
         capabilities=frozenset({"rag"}), region="eu")
SNAPSHOT = [A, B, C]


def test_strategies_pick_expected_hosts() -> None:
    sel = HostSelector()
    assert sel.select_optimal_host(SNAPSHOT, strategy="cheapest").address == "0xa"
    assert sel.select_optimal_host(SNAPSHOT, strategy="fastest").address == "0xb"
    assert sel.select_optimal_host(SNAPSHOT, strategy="reputable").address == "0xc"
    # composite, equal weights: A = 1+0+0+0+0 = 1; B = 0+1+0.5+1+1 = 3.5; C = 0.5+0+1+0+0.5 = 2
    assert sel.select_optimal_host(SNAPSHOT, strategy="composite").address == "0xb"
    price_only = SelectionCriteria(weights=Weights(price=1, latency=0, reputation=0, throughput=0, stake=0))
    assert sel.select_optimal_host(SNAPSHOT, price_only).address == "0xa"


def test_fastest_puts_unmeasured_last() -> None:
    sel = HostSelector()
    assert sel.select_optimal_host([C, A], strategy="fastest").address == "0xa"
    assert sel.select_optimal_host([C], strategy="fastest").address == "0xc"


def test_breakdown_exact_and_score_is_weighted_sum() -> None:
    ranked = HostSelector().rank_hosts(SNAPSHOT)
    assert [r.host.address for r in ranked] == ["0xb", "0xc", "0xa"]
    by = {r.host.address: r for r in ranked}
    assert by["0xa"].breakdown == {"price": 1.0, "latency": 0.0, "reputation": 0.0, "throughput": 0.0, "stake": 0.0}
    assert by["0xb"].breakdown == {"price": 0.0, "latency": 1.0, "reputation": 0.5, "throughput": 1.0, "stake": 1.0}
    assert by["0xc"].breakdown == {"price": 0.5, "latency": 0.0, "reputation": 1.0, "throughput": 0.0, "stake": 0.5}
    assert [r.score for r in ranked] == [3.5, 2.0, 1.0]
    assert tuple(by["0xa"].breakdown) == FACTORS


def test_unknown_latency_scores_zero_and_equal_values_score_one() -> None:
    ranked = HostSelector().rank_hosts([host("0x1", latency_ms=None), host("0x2", latency_ms=40.0)])
    by = {r.host.address: r.breakdown for r in ranked}
    assert by["0x1"]["latency"] == 0.0 and by["0x2"]["latency"] == 1.0
    assert by["0x1"]["price"] == by["0x2"]["price"] == 1.0  # all equal: everyone is best


def test_ties_broken_by_address_and_input_order_irrelevant() -> None:
    twins = [host(f"0x{i:02x}", price_per_token=5) for i in range(20)]
    for seed in range(5):
        shuffled = twins[:]
        random.Random(seed).shuffle(shuffled)
        assert [r.host.address for r in HostSelector().rank_hosts(shuffled)] == [h.address for h in twins]


def test_determinism_on_random_snapshot() -> None:
    hosts = random_hosts(500, seed=7)
    first = HostSelector().rank_hosts(hosts)
    shuffled = hosts[:]
    random.Random(1).shuffle(shuffled)
    again = HostSelector().rank_hosts(shuffled)
    assert [(r.host.address, r.score) for r in first] == [(r.host.address, r.score) for r in again]
    top = HostSelector().rank_hosts(shuffled, top_k=10)
    assert [r.host for r in top] == [r.host for r in first[:10]]


def test_score_is_weighted_sum_of_breakdown() -> None:
    weights = Weights(price=2, latency=0.5, reputation=3, throughput=1, stake=0.25)
    for r in HostSelector().rank_hosts(random_hosts(200, seed=3), weights):
        expected = sum(w * r.breakdown[f] for w, f in zip(weights.as_tuple(), FACTORS))
        assert r.score == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_top_k_with_ties_uses_address_order() -> None:
    twins = [host(f"0x{i:02x}") for i in range(10)]
    top = HostSelector().rank_hosts(list(reversed(twins)), top_k=3)
    assert [r.host.address for r in top] == ["0x00", "0x01", "0x02"]
    assert HostSelector().select_optimal_host(list(reversed(twins))).address == "0x00"


def test_filters() -> None:
    sel = HostSelector()
    f = sel.filter_by_requirements
    assert f(SNAPSHOT, Requirements(max_price=2000)) == [A, C]
    assert f(SNAPSHOT, Requirements(min_reputation=0.5)) == [B, C]
    assert f(SNAPSHOT, Requirements(capabilities=frozenset({"rag"}))) == [C]
    assert f(SNAPSHOT, Requirements(region="eu")) == [C]
    assert f(SNAPSHOT, Requirements(max_latency_ms=200)) == [B]  # unmeasured never passes a latency bound
    assert f(SNAPSHOT, Requirements(model="other")) == []
    assert f(SNAPSHOT, Requirements()) == SNAPSHOT


def test_error_when_nothing_matches() -> None:
    with pytest.raises(SelectionError) as info:
        HostSelector().select_optimal_host(SNAPSHOT, SelectionCriteria(Requirements(model="llama")))
    assert isinstance(info.value, FabstirError)
    assert info.value.code == "NO_HOST_AVAILABLE"
    assert "llama" in str(info.value)
    with pytest.raises(SelectionError):
        HostSelector().select_optimal_host([], strategy="cheapest")
    with pytest.raises(ValueError):
        HostSelector().select_optimal_host(SNAPSHOT, strategy="random")


def test_round_robin_cycles_in_address_order() -> None:
    sel = HostSelector()
    picks = [sel.select_optimal_host([C, A, B], strategy="round_robin").address for _ in range(7)]
    assert picks == ["0xa", "0xb", "0xc", "0xa", "0xb", "0xc", "0xa"]
    sel.reset_cursor()
    assert sel.select_optimal_host(SNAPSHOT, strategy="round_robin").address == "0xa"


def test_load_balance_proportions() -> None:
    sel = HostSelector()
    plan = sel.load_balance(SNAPSHOT, 13)  # scores 3.5 : 2 : 1 of 6.5 -> 7 : 4 : 2
    assert Counter(h.address for h in plan) == {"0xb": 7, "0xc": 4, "0xa": 2}
    assert plan == sel.load_balance(list(reversed(SNAPSHOT)), 13)
    assert [h.address for h in plan[:3]] == ["0xb", "0xc", "0xb"]  # interleaved, not blocks
    assert Counter(h.address for h in sel.load_balance(SNAPSHOT, 1)) == {"0xb": 1}
    assert sel.load_balance(SNAPSHOT, 0) == []
    # all scores zero (only latency weighted, none measured): spread evenly
    flat = sel.load_balance([host("0x1"), host("0x2")], 4,
                            Weights(price=0, latency=1, reputation=0, throughput=0, stake=0))
    assert Counter(h.address for h in flat) == {"0x1": 2, "0x2": 2}


def test_weights_validated() -> None:
    with pytest.raises(ValueError):
        Weights(price=-1)
    with pytest.raises(ValueError):
        Weights(0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        Weights(price=math.nan)
    assert Weights().total == 5.0


def test_stats_ban_expiry_and_clear_on_success() -> None:
    stats = SelectionStats(base_ban_s=10, max_ban_s=25)
    now = 1000.0
    stats.record_attempt("0xa")
    assert stats.record_failure("0xa", now) == 1010.0
    assert stats.is_banned("0xa", now + 9.9) and not stats.is_banned("0xa", now + 10)
    assert stats.available(SNAPSHOT, now + 5) == [B, C]
    assert stats.record_failure("0xa", now + 20) == now + 40  # doubled
    assert stats.record_failure("0xa", now + 50) == now + 75  # capped at 25
    stats.record_attempt("0xa")
    stats.record_success("0xa", duration_s=30.0)
    assert not stats.is_banned("0xa", now + 51)
    assert stats.record_failure("0xa", now + 60) == now + 70  # streak cleared by the success
    stats.record_session("0xa", 10.0)
    assert stats.success_rate("0xa") == 0.2
    assert stats.average_session_duration("0xa") == 20.0
    assert stats.reliability("0xa") == 2 / 7
    assert stats.reliability("0xnew") == 0.5 and stats.success_rate("0xnew") is None
    assert stats.average_session_duration("0xnew") is None
    assert stats.apply(A).reputation == 2 / 7
    assert stats.stats("0xa").attempts == 2


def random_hosts(n: int, seed: int) -> list[HostCandidate]:
    rng = random.Random(seed)
    return [
        host(f"0x{rng.getrandbits(64):016x}", price_per_token=rng.randint(1, 5000), stake=rng.randint(0, 10**20),
             reputation=rng.random(), latency_ms=None if rng.random() < 0.2 else rng.uniform(1, 500),
             tokens_per_s=None if rng.random() < 0.2 else rng.uniform(1, 200))
        for _ in range(n)
    ]


host_strategy = st.builds(
    HostCandidate,
    address=st.text("0123456789abcdef", min_size=1, max_size=4).map(lambda s: "0x" + s),
    api_url=st.just("http://h"),
    models=st.lists(st.sampled_from(["m1", "m2"]), max_size=2).map(tuple),
    price_per_token=st.integers(0, 10**6),
    stake=st.integers(0, 10**21),
    reputation=st.floats(0, 1),
    latency_ms=st.none() | st.floats(0, 1e4),
    tokens_per_s=st.none() | st.floats(0, 1e4),
    capabilities=st.frozensets(st.sampled_from(["rag", "vision"])),
    region=st.none() | st.sampled_from(["eu", "us"]),
)
weights_strategy = st.tuples(*[st.floats(0, 10)] * 5).filter(any).map(lambda t: Weights(*t))
requirements_strategy = st.builds(
    Requirements,
    model=st.none() | st.sampled_from(["m1", "m2"]),
    max_price=st.none() | st.integers(0, 10**6),
    min_reputation=st.none() | st.floats(0, 1),
    capabilities=st.frozensets(st.sampled_from(["rag", "vision"])),
    region=st.none() | st.sampled_from(["eu", "us"]),
    max_latency_ms=st.none() | st.floats(0, 1e4),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(host_strategy, max_size=30), weights_strategy, requirements_strategy)
def test_properties(hosts: list[HostCandidate], weights: Weights, req: Requirements) -> None:
    sel = HostSelector()
    ranked = sel.rank_hosts(hosts, weights)
    assert len(ranked) == len(hosts)
    bound = weights.total * (1 + 1e-9)
    for r in ranked:
        assert -1e-12 <= r.score <= bound
        assert all(0.0 <= v <= 1.0 for v in r.breakdown.values())
    keys = [(-r.score, r.host.address) for r in ranked]
    assert keys == sorted(keys)
    for k in (0, 1, 3, len(hosts)):  # the partial (partition) path agrees with the full sort, ties included
        assert [(r.host, r.score) for r in sel.rank_hosts(hosts, weights, top_k=k)] == \
            [(r.host, r.score) for r in ranked[:k]]
    for h in sel.filter_by_requirements(hosts, req):
        assert req.model is None or req.model in h.models
        assert req.max_price is None or h.price_per_token <= req.max_price
        assert req.min_reputation is None or h.reputation >= req.min_reputation
        assert req.capabilities <= h.capabilities
        assert req.region is None or h.region == req.region
        assert req.max_latency_ms is None or (h.latency_ms is not None and h.latency_ms <= req.max_latency_ms)


def test_tiny_spans_do_not_produce_nan() -> None:
    """Found by hypothesis: latencies 0 and 2.2e-313 made the min-max scale overflow to inf * 0."""
    hosts = [HostCandidate(address=f"0x{i}", api_url="http://h", models=(), price_per_token=0, stake=0,
                           reputation=0.0, latency_ms=latency, tokens_per_s=None, capabilities=frozenset(),
                           region=None, sources=frozenset())
             for i, latency in enumerate((0.0, 2.2250738585e-313))]
    ranked = HostSelector().rank_hosts(hosts, Weights(0.0, 1.0, 0.0, 0.0, 1.0))
    assert all(r.score == r.score and 0.0 <= r.score <= 2.0 for r in ranked)
