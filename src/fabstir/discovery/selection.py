"""Host selection as a pure scorer over a snapshot of candidates.

A :class:`HostCandidate` is what discovery knows about one host at one moment
(price, stake, observed reputation, measured latency and throughput). The
:class:`HostSelector` filters candidates by :class:`Requirements`, scores them
with :class:`Weights` and picks one by a strategy. Nothing here does I/O or
reads a clock: the same inputs always give the same output (the ``round_robin``
cursor is the one piece of state, and it lives in the selector).

Scoring: each factor is min-max normalised to 0..1 across the candidate set, so
that 1 is the best value present (lowest price and latency; highest reputation,
throughput and stake). When every candidate has the same value, that factor is
1 for all of them. An unknown latency or throughput (``None``) scores 0 for that
factor. The score is ``sum(weight[f] * normalised[f])`` (up to float rounding), so
it lies in ``[0, sum of weights]``. Ties are broken by address, ascending.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, Literal, NamedTuple

import numpy as np

from fabstir.errors import FabstirError

__all__ = [
    "FACTORS",
    "HostCandidate",
    "HostSelector",
    "RankedHost",
    "Requirements",
    "SelectionCriteria",
    "SelectionError",
    "Strategy",
    "Weights",
]

Strategy = Literal["cheapest", "fastest", "reputable", "composite", "round_robin"]
STRATEGIES: tuple[str, ...] = ("cheapest", "fastest", "reputable", "composite", "round_robin")
FACTORS: tuple[str, ...] = ("price", "latency", "reputation", "throughput", "stake")
_NAN = math.nan
_PACK = struct.Struct("=5d").pack
"""The scored factors, in the order they are summed and reported."""


class SelectionError(FabstirError):
    """No host satisfies the requirements (or there were no hosts at all)."""

    default_code = "NO_HOST_AVAILABLE"


@dataclasses.dataclass(frozen=True, slots=True)
class HostCandidate:
    """One host as discovery saw it at one moment.

    Attributes:
        address: the host's on-chain address (also the tie-breaker).
        api_url: where the host serves the protocol.
        models: model ids the host serves.
        price_per_token: price per token, x1000 precision, in base units.
        stake: staked amount, base units.
        reputation: 0..1, from observed outcomes (see :class:`~fabstir.discovery.tracking.SelectionStats`).
        latency_ms: measured round-trip time; ``None`` when not measured (never a made-up constant).
        tokens_per_s: measured generation speed; ``None`` when not measured.
        capabilities: feature names the host advertises.
        region: the host's region, when known.
        sources: which discovery sources saw this host.
        signing_key: the host's Ed25519 public key (hex), when a source told it.
        encryption_key: the host's secp256k1 public key (hex) for end-to-end encryption, when known.
        expires_at_ms: when the announcement this came from goes stale (unix ms); ``None`` for the chain.
    """

    address: str
    api_url: str
    models: tuple[str, ...] = ()
    price_per_token: int = 0
    stake: int = 0
    reputation: float = 0.5
    latency_ms: float | None = None
    tokens_per_s: float | None = None
    capabilities: frozenset[str] = frozenset()
    region: str | None = None
    sources: frozenset[str] = frozenset()
    signing_key: str | None = None
    encryption_key: str | None = None
    expires_at_ms: int | None = None
    _row: tuple[float, float, float, float, float] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False)
    _packed: bytes = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # The scored numbers as one tuple of floats (NaN: not measured), computed once: ranking reads one attribute
        # per host and hands the rows to numpy in one call.
        row = (
            float(self.price_per_token),
            _NAN if self.latency_ms is None else float(self.latency_ms),
            float(self.reputation),
            _NAN if self.tokens_per_s is None else float(self.tokens_per_s),
            float(self.stake),
        )
        object.__setattr__(self, "_row", row)
        object.__setattr__(self, "_packed", _PACK(*row))


@dataclasses.dataclass(frozen=True, slots=True)
class Requirements:
    """What a host must satisfy to be considered; ``None`` (or empty) means no constraint.

    ``max_latency_ms`` only admits hosts with a *measured* latency at or below it.
    """

    model: str | None = None
    max_price: int | None = None
    min_reputation: float | None = None
    capabilities: frozenset[str] = frozenset()
    region: str | None = None
    max_latency_ms: float | None = None

    def accepts(self, host: HostCandidate) -> bool:
        """Whether ``host`` meets every requirement."""
        if self.model is not None and self.model not in host.models:
            return False
        if self.max_price is not None and host.price_per_token > self.max_price:
            return False
        if self.min_reputation is not None and host.reputation < self.min_reputation:
            return False
        if self.capabilities and not self.capabilities <= host.capabilities:
            return False
        if self.region is not None and host.region != self.region:
            return False
        if self.max_latency_ms is not None and (host.latency_ms is None or host.latency_ms > self.max_latency_ms):
            return False
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class Weights:
    """Relative importance of each factor in the composite score; non-negative, finite, not all zero."""

    price: float = 1.0
    latency: float = 1.0
    reputation: float = 1.0
    throughput: float = 1.0
    stake: float = 1.0

    def __post_init__(self) -> None:
        values = self.as_tuple()
        for name, value in zip(FACTORS, values):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"weight {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"weight {name} must be finite and non-negative, got {value!r}")
        if not any(values):
            raise ValueError("at least one weight must be positive")

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        """The weights in :data:`FACTORS` order."""
        return (self.price, self.latency, self.reputation, self.throughput, self.stake)

    @property
    def total(self) -> float:
        """Sum of the weights: the highest possible score."""
        return math.fsum(self.as_tuple())


@dataclasses.dataclass(frozen=True, slots=True)
class SelectionCriteria:
    """Requirements to filter by and weights for the composite strategy."""

    requirements: Requirements = Requirements()
    weights: Weights = Weights()


class _Scale:
    """Min-max normalisation of every factor over one candidate set, shared by all its ranked hosts.

    Each factor ``f`` normalises as ``base + (value - origin) * factor`` with ``factor`` negative for
    lower-is-better factors; a factor whose values are all equal has ``factor = 0`` and ``base = 1``.
    :meth:`breakdown` evaluates this exactly; :meth:`HostSelector.scores` folds it into ``const + slope * value``
    per factor, so a score equals the weighted sum of its breakdown up to float rounding.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: tuple[tuple[float, float, float], ...]) -> None:
        self.terms = terms  # (base, origin, factor) per factor, FACTORS order

    @classmethod
    def of(cls, bounds: Sequence[tuple[float, float] | None], lower_better: Sequence[bool]) -> _Scale:
        terms = []
        for bound, lower in zip(bounds, lower_better):
            if bound is None:
                terms.append((0.0, 0.0, 0.0))  # nothing known: unused, unknown values score 0
                continue
            lo, hi = bound
            span = hi - lo
            if not span or not math.isfinite(1.0 / span):  # equal values (or a span too small to invert)
                terms.append((1.0, lo, 0.0))
            elif lower:
                terms.append((0.0, hi, -1.0 / span))
            else:
                terms.append((0.0, lo, 1.0 / span))
        return cls(tuple(terms))

    def breakdown(self, host: HostCandidate) -> dict[str, float]:
        values = host._row
        out = {}
        for name, value, (base, origin, factor) in zip(FACTORS, values, self.terms):
            out[name] = 0.0 if math.isnan(value) else base + (value - origin) * factor
        return out


_LOWER_BETTER = (True, True, False, False, False)


class RankedHost(NamedTuple):
    """A host with its composite score; ``breakdown`` gives each factor's normalised 0..1 value."""

    host: HostCandidate
    score: float
    scale: _Scale

    @property
    def breakdown(self) -> dict[str, float]:
        """Each factor of :data:`FACTORS` normalised to 0..1 across the candidate set (unknown = 0)."""
        return self.scale.breakdown(self.host)

    def __repr__(self) -> str:
        return f"RankedHost(address={self.host.address!r}, score={self.score!r})"


_packed = attrgetter("_packed")
_address = attrgetter("address")


def _bounds(values: np.ndarray[Any, np.dtype[np.float64]]) -> tuple[float, float] | None:
    known = values[~np.isnan(values)]
    return (float(known.min()), float(known.max())) if known.size else None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (if it runs) while a burst of acyclic objects is built."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_new_ranked: Any = tuple.__new__  # builds RankedHost without the Python-level __new__ (hot path)


class HostSelector:
    """Filters, scores and picks hosts. Pure given its inputs; ``round_robin`` keeps a cursor here.

    Args:
        weights: default weights for :meth:`rank_hosts` and :meth:`load_balance`.
    """

    def __init__(self, weights: Weights | None = None) -> None:
        self.weights = weights or Weights()
        self._cursor = 0

    # -- filtering ---------------------------------------------------------------------------------------------

    @staticmethod
    def filter_by_requirements(hosts: Iterable[HostCandidate], requirements: Requirements) -> list[HostCandidate]:
        """The hosts that meet ``requirements``, in input order."""
        return [host for host in hosts if requirements.accepts(host)]

    # -- scoring -----------------------------------------------------------------------------------------------

    def scores(self, hosts: Sequence[HostCandidate], weights: Weights | None = None) -> tuple[list[float], _Scale]:
        """Composite score of every host (input order) and the normalisation used.

        Each term ``w * (base + (x - origin) * factor)`` is folded into ``const + slope * x`` before the loop, so
        a score equals the weighted sum of its breakdown up to float rounding (the breakdown itself is exact).
        """
        values, scale = self._score_array(hosts, weights)
        return values.tolist(), scale

    def _score_array(self, hosts: Sequence[HostCandidate],
                     weights: Weights | None = None) -> tuple[np.ndarray[Any, np.dtype[np.float64]], _Scale]:
        weight = (weights or self.weights).as_tuple()
        n = len(hosts)
        table = np.frombuffer(b"".join(map(_packed, hosts)), dtype=np.float64).reshape(n, 5)
        prices, lats, reps, tps, stakes = table.T
        scale = _Scale.of((_bounds(prices), _bounds(lats), _bounds(reps), _bounds(tps), _bounds(stakes)),
                          _LOWER_BETTER)
        (cp, kp), (cl, kl), (cr, kr), (ct, kt), (cs, ks) = (
            (w * (base - origin * factor), w * factor) for w, (base, origin, factor) in zip(weight, scale.terms))
        # Same operations in the same order as the scalar formula, element-wise: identical floats.
        scores = (cp + cr + cs) + kp * prices
        scores += kr * reps
        scores += ks * stakes
        scores += np.where(np.isnan(lats), 0.0, cl + kl * lats)
        scores += np.where(np.isnan(tps), 0.0, ct + kt * tps)
        return scores, scale

    def rank_hosts(self, hosts: Sequence[HostCandidate], weights: Weights | None = None, *,
                   top_k: int | None = None) -> list[RankedHost]:
        """Hosts by composite score, best first, ties by address ascending; ``top_k`` keeps only the first k."""
        hosts = list(hosts)
        if not hosts:
            return []
        scores, scale = self._score_array(hosts, weights)
        n = len(hosts)
        k = n if top_k is None else min(max(top_k, 0), n)
        descending = -scores
        if k < n and k * 8 < n:
            # Only the best k matter: partition first, then order the few candidates (ties at the cut included).
            cut = np.partition(descending, k - 1)[k - 1] if k else -np.inf
            candidates = np.flatnonzero(descending <= cut)
        else:
            candidates = np.arange(n)
        picked = descending[candidates]
        ordered = np.sort(picked)
        if ordered.size > 1 and bool((ordered[1:] == ordered[:-1]).any()):
            # Equal scores: address order first, then the stable score sort keeps it.
            addresses = [hosts[i].address for i in candidates.tolist()]
            by_address = np.array(sorted(range(len(addresses)), key=addresses.__getitem__), dtype=np.intp)
            order = candidates[by_address[np.argsort(picked[by_address], kind="stable")]]
        else:
            order = candidates[np.argsort(picked, kind="stable")]
        order_list = order[:k].tolist()
        rows = zip(map(hosts.__getitem__, order_list), scores[order[:k]].tolist(), repeat(scale))
        with _gc_paused():  # 10,000 new tuples would otherwise trigger collections that walk every host (~3x)
            return list(map(_new_ranked, repeat(RankedHost), rows))

    # -- picking -----------------------------------------------------------------------------------------------

    def select_optimal_host(self, hosts: Iterable[HostCandidate], criteria: SelectionCriteria | None = None,
                            strategy: Strategy | str = "composite") -> HostCandidate:
        """The best host by ``strategy`` among those meeting ``criteria``; :class:`SelectionError` when none do.

        Strategies: ``cheapest`` (lowest price), ``fastest`` (lowest measured latency; unmeasured last),
        ``reputable`` (highest reputation), ``composite`` (highest weighted score), ``round_robin`` (the
        matching hosts in address order, one after another across calls). Ties go to the lower address.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        criteria = criteria or SelectionCriteria(weights=self.weights)
        candidates = self.filter_by_requirements(hosts, criteria.requirements)
        if not candidates:
            raise SelectionError(f"no host matches the requirements ({_describe(criteria.requirements)})")
        if strategy == "cheapest":
            return min(candidates, key=lambda h: (h.price_per_token, h.address))
        if strategy == "fastest":
            return min(candidates, key=lambda h: (h.latency_ms is None, h.latency_ms or 0.0, h.address))
        if strategy == "reputable":
            return min(candidates, key=lambda h: (-h.reputation, h.address))
        if strategy == "round_robin":
            ordered = sorted(candidates, key=_address)
            chosen = ordered[self._cursor % len(ordered)]
            self._cursor += 1
            return chosen
        return self.rank_hosts(candidates, criteria.weights, top_k=1)[0].host

    def reset_cursor(self) -> None:
        """Start ``round_robin`` again from the lowest address."""
        self._cursor = 0

    def load_balance(self, hosts: Sequence[HostCandidate], n: int,
                     weights: Weights | None = None) -> list[HostCandidate]:
        """Assign ``n`` sessions to hosts in proportion to their composite score.

        Counts come from the largest-remainder method (remainder ties go to the better-ranked host); the
        returned list of length ``n`` interleaves them by smooth weighted round robin, so any prefix is spread
        too. Hosts scoring 0 get nothing unless every host scores 0, when the sessions are spread evenly.
        """
        if n < 0:
            raise ValueError("n must be non-negative")
        if n == 0:
            return []
        ranked = self.rank_hosts(hosts, weights)
        if not ranked:
            raise SelectionError("no hosts to balance over")
        counts = _largest_remainder([r.score for r in ranked], n)
        # Smooth weighted round robin (as in nginx) over the counts: exact counts, evenly interleaved.
        current = [0] * len(ranked)
        out: list[HostCandidate] = []
        for _ in range(n):
            best = -1
            for i, count in enumerate(counts):
                if count:
                    current[i] += count
                    if best < 0 or current[i] > current[best]:
                        best = i
            current[best] -= n
            out.append(ranked[best].host)
        return out


def _largest_remainder(scores: list[float], n: int) -> list[int]:
    total = math.fsum(scores)
    if total <= 0:
        scores = [1.0] * len(scores)
        total = float(len(scores))
    quotas = [n * s / total for s in scores]
    counts = [int(q) for q in quotas]
    left = n - sum(counts)
    # Largest fractional part first; ties to the earlier (better-ranked) index.
    order = sorted(range(len(scores)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def _describe(req: Requirements) -> str:
    parts = [f"{f.name}={getattr(req, f.name)!r}" for f in dataclasses.fields(req)
             if getattr(req, f.name) not in (None, frozenset())]
    return ", ".join(parts) or "none"
