"""``DiscoveryManager``: every discovery source behind one call, with a cache, fallbacks and health stats.

Sources (the chain, the HTTP discovery service, mDNS, the DHT) are asked
concurrently, each bounded by ``source_timeout_s``. A source that fails or is slow
falls back to the last answer it gave (when younger than ``stale_ok_s``) and is
marked unhealthy; the others carry on. Answers are merged by
:func:`~fabstir.discovery.merge.merge_candidates` (the chain's price and stake win),
observations from the :class:`~fabstir.discovery.peers.PeerManager` are applied
(reputation, measured latency and speed, blacklist, preferred peers first) and the
result is filtered by the caller's requirements.

In ``mode="fallback"`` the sources are tried one at a time in priority order and
the first that answers with at least one host wins.

The merged answer is cached for ``cache_ttl_s``; a warm call only filters it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import httpx

from fabstir._clock import wall_clock_ms
from fabstir.discovery.http_client import measure_rtt
from fabstir.discovery.merge import CHAIN, MergeResult, merge_candidates
from fabstir.discovery.peers import PeerManager
from fabstir.discovery.selection import (
    HostCandidate,
    HostSelector,
    RankedHost,
    Requirements,
    SelectionCriteria,
    SelectionError,
    Strategy,
    Weights,
)
from fabstir.discovery.sources import DiscoverySource
from fabstir.errors import ConfigError, FabstirError

__all__ = ["DiscoveryManager", "SourceHealth"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SourceHealth:
    """How one source has behaved: calls, outcomes and time spent."""

    name: str
    enabled: bool = True
    calls: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    total_ms: float = 0.0
    hosts: int = 0
    last_error: str | None = None
    stale_answers: int = 0

    @property
    def healthy(self) -> bool:
        """True until a call fails; again true after the next success."""
        return self.last_error is None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.calls if self.calls else None

    @property
    def average_ms(self) -> float | None:
        return self.total_ms / self.calls if self.calls else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "enabled": self.enabled, "healthy": self.healthy, "calls": self.calls,
            "successes": self.successes, "failures": self.failures, "timeouts": self.timeouts,
            "success_rate": self.success_rate, "average_ms": self.average_ms, "hosts": self.hosts,
            "last_error": self.last_error, "stale_answers": self.stale_answers,
        }


@dataclasses.dataclass
class _Answer:
    hosts: list[HostCandidate]
    at: float


@dataclasses.dataclass
class _View:
    """A filtered answer, valid while the peers are unchanged, no record expires and no ban ends."""

    hosts: list[HostCandidate]
    version: int
    until_ms: int
    until: float | None


class DiscoveryManager:
    """Unified discovery over any number of :class:`DiscoverySource` objects.

    Args:
        sources: in priority order (the first wins conflicts between announcements).
        peers: observations of hosts (reputation, latency, blacklist, preferred peers); a new one by default.
        cache_ttl_s: how long a merged answer is reused.
        source_timeout_s: how long one source may take before it counts as failed.
        stale_ok_s: how old a source's last good answer may be to stand in when it fails.
        mode: ``"merge"`` (ask every source) or ``"fallback"`` (first source in priority order with hosts).
        registered_only: keep only hosts the chain lists (paid sessions need that).
    """

    def __init__(self, sources: Iterable[DiscoverySource] = (), *, peers: PeerManager | None = None,
                 cache_ttl_s: float = 30.0, source_timeout_s: float = 5.0, stale_ok_s: float = 300.0,
                 mode: Literal["merge", "fallback"] = "merge", registered_only: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = wall_clock_ms) -> None:
        if mode not in ("merge", "fallback"):
            raise ConfigError(f"mode must be 'merge' or 'fallback', got {mode!r}")
        self.peers = peers or PeerManager()
        self.selector = HostSelector()
        self.cache_ttl_s = cache_ttl_s
        self.source_timeout_s = source_timeout_s
        self.stale_ok_s = stale_ok_s
        self.mode = mode
        self.registered_only = registered_only
        self._clock = clock
        self._wall_ms = wall_ms
        self._sources: dict[str, DiscoverySource] = {}
        self._health: dict[str, SourceHealth] = {}
        self._last_good: dict[str, _Answer] = {}
        self._merged: _Answer | None = None
        self._rejected: list[tuple[str, str, str]] = []
        self._filtered: dict[tuple[Requirements, bool], _View] = {}
        self._lock = asyncio.Lock()
        self.cache_hits = 0
        self.cache_misses = 0
        self.discoveries = 0
        self.discovery_ms = 0.0
        for source in sources:
            self.add_source(source)

    # -- configuration -----------------------------------------------------------------------------------------

    @property
    def source_names(self) -> tuple[str, ...]:
        """Source names in priority order."""
        return tuple(self._sources)

    def add_source(self, source: DiscoverySource, *, enabled: bool = True) -> None:
        """Add ``source`` last in priority (replacing a source of the same name)."""
        if not isinstance(source, DiscoverySource):
            raise ConfigError(f"{source!r} is not a discovery source (needs .name and async .discover())")
        self._sources.pop(source.name, None)
        self._sources[source.name] = source
        self._health[source.name] = SourceHealth(source.name, enabled=enabled)
        self.invalidate()

    def set_discovery_priority(self, order: Sequence[str]) -> None:
        """Put the named sources first, in this order; the rest keep their relative order after them."""
        unknown = [name for name in order if name not in self._sources]
        if unknown:
            raise ConfigError(f"unknown discovery source(s) {unknown}; known: {list(self._sources)}")
        names = list(dict.fromkeys(order)) + [n for n in self._sources if n not in order]
        self._sources = {name: self._sources[name] for name in names}
        self.invalidate()

    def enable_discovery_source(self, name: str, enabled: bool = True) -> None:
        """Turn a source on or off (off: not asked, its hosts leave the merged answer)."""
        if name not in self._sources:
            raise ConfigError(f"unknown discovery source {name!r}; known: {list(self._sources)}")
        self._health[name].enabled = enabled
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the merged answer: the next call asks the sources again."""
        self._merged = None
        self._filtered.clear()

    # -- discovery ---------------------------------------------------------------------------------------------

    async def discover_all_hosts(self, requirements: Requirements | None = None, *, refresh: bool = False,
                                 registered_only: bool | None = None) -> list[HostCandidate]:
        """Every usable host meeting ``requirements``: merged, deduplicated, observations applied, preferred first.

        Blacklisted and banned hosts are left out. ``refresh`` bypasses the cache.
        """
        requirements = requirements or Requirements()
        only_registered = self.registered_only if registered_only is None else registered_only
        now = self._clock()
        if refresh or self._merged is None or now - self._merged.at >= self.cache_ttl_s:
            self.cache_misses += 1
            async with self._lock:
                if refresh or self._merged is None or self._clock() - self._merged.at >= self.cache_ttl_s:
                    await self._refresh()
        else:
            self.cache_hits += 1
        assert self._merged is not None
        key = (requirements, only_registered)
        now_ms = self._wall_ms()
        view = self._filtered.get(key)
        if view is None or view.version != self.peers.version or now_ms >= view.until_ms \
                or (view.until is not None and now >= view.until):
            hosts = self._select(self._merged.hosts, requirements, only_registered, now, now_ms)
            expiries = [h.expires_at_ms for h in self._merged.hosts if h.expires_at_ms is not None]
            view = self._filtered[key] = _View(hosts, self.peers.version, min(expiries, default=2**63),
                                               self.peers.next_change(now))
        return list(view.hosts)

    def _select(self, merged: list[HostCandidate], requirements: Requirements, only_registered: bool,
                now: float, now_ms: int) -> list[HostCandidate]:
        aliases = _model_aliases(requirements.model)
        plain = dataclasses.replace(requirements, model=None)
        kept = []
        for host in merged:
            if only_registered and CHAIN not in host.sources:
                continue
            if host.expires_at_ms is not None and host.expires_at_ms <= now_ms:
                continue
            if aliases and not any(a in host.models for a in aliases):
                continue
            kept.append(host)
        usable = self.peers.usable(kept, now)
        return [host for host in usable if plain.accepts(host)]

    async def _refresh(self) -> None:
        started = time.perf_counter()
        enabled = [name for name in self._sources if self._health[name].enabled]
        if self.mode == "fallback":
            answers = []
            for name in enabled:
                hosts = await self._ask(name)
                if hosts:
                    answers = [(name, hosts)]
                    break
        else:
            results = await asyncio.gather(*(self._ask(name) for name in enabled))
            answers = list(zip(enabled, results))
        result: MergeResult = merge_candidates(answers, self._wall_ms())
        self._rejected = result.rejected
        self._merged = _Answer(result.hosts, self._clock())
        self._filtered.clear()
        self.discoveries += 1
        self.discovery_ms += (time.perf_counter() - started) * 1000

    async def _ask(self, name: str) -> list[HostCandidate]:
        source, health = self._sources[name], self._health[name]
        started = time.perf_counter()
        health.calls += 1
        try:
            hosts = await asyncio.wait_for(source.discover(None), self.source_timeout_s)
        except Exception as exc:  # any failure of one source must not sink the others
            if isinstance(exc, TimeoutError):
                health.timeouts += 1
                health.last_error = f"timed out after {self.source_timeout_s:g} s"
            else:
                health.last_error = f"{type(exc).__name__}: {exc}"
            health.failures += 1
            health.total_ms += (time.perf_counter() - started) * 1000
            log.warning("discovery source %s failed: %s", name, health.last_error)
            last = self._last_good.get(name)
            if last is not None and self._clock() - last.at <= self.stale_ok_s:
                health.stale_answers += 1
                return last.hosts
            return []
        health.total_ms += (time.perf_counter() - started) * 1000
        health.successes += 1
        health.last_error = None
        hosts = [h if name in h.sources else dataclasses.replace(h, sources=h.sources | {name}) for h in hosts]
        health.hosts = len(hosts)
        self._last_good[name] = _Answer(hosts, self._clock())
        return hosts

    # -- selection ---------------------------------------------------------------------------------------------

    async def rank_hosts(self, requirements: Requirements | None = None, weights: Weights | None = None, *,
                         registered_only: bool | None = None) -> list[RankedHost]:
        """The usable hosts meeting ``requirements``, best composite score first, with score breakdowns."""
        hosts = await self.discover_all_hosts(requirements, registered_only=registered_only)
        return self.selector.rank_hosts(hosts, weights)

    async def select_host(self, strategy: Strategy | str = "composite", requirements: Requirements | None = None,
                          weights: Weights | None = None, *, registered_only: bool | None = None,
                          probe: bool = False) -> HostCandidate:
        """One host by ``strategy`` among the usable hosts meeting ``requirements``.

        Preferred peers that qualify are chosen first (the strategy picks among them). ``probe`` pings hosts
        with no measured latency first, so ``fastest`` and ``composite`` compare real numbers.

        Raises:
            SelectionError: no host qualifies (code ``NO_HOST_AVAILABLE``).
        """
        hosts = await self.discover_all_hosts(requirements, registered_only=registered_only)
        if not hosts:
            raise SelectionError(f"no host found by {', '.join(self._enabled()) or 'no enabled source'} "
                                 f"matches the requirements")
        if probe:
            await self.measure_latency([h for h in hosts if h.latency_ms is None])
            hosts = await self.discover_all_hosts(requirements, registered_only=registered_only)
        preferred = [h for h in hosts if self.peers.preference(h.address) < len(self.peers.preferred)]
        pool = preferred or hosts
        criteria = SelectionCriteria(weights=weights or self.selector.weights)
        return self.selector.select_optimal_host(pool, criteria, strategy)

    async def measure_latency(self, hosts: Sequence[HostCandidate], *, timeout_s: float = 2.0,
                              limit: int = 32) -> dict[str, float]:
        """Ping each host's ``/health`` (at most ``limit`` of them, concurrently) and record the round trips.

        Hosts that do not answer in ``timeout_s`` count as a failure for the peer manager. Returns
        ``{address: rtt_ms}`` for the hosts that answered.
        """
        measured: dict[str, float] = {}

        async def ping(client: httpx.AsyncClient, host: HostCandidate) -> None:
            try:
                rtt = await measure_rtt(client, host.api_url)
            except FabstirError as exc:
                log.info("host %s did not answer a ping: %s", host.address, exc)
                self.peers.record_failure(host.address, self._clock())
                return
            self.peers.record_rtt(host.address, rtt)
            measured[host.address] = rtt

        async with httpx.AsyncClient(timeout=timeout_s) as client:
            await asyncio.gather(*(ping(client, h) for h in list(hosts)[:limit]))
        return measured

    # -- monitoring --------------------------------------------------------------------------------------------

    def _enabled(self) -> list[str]:
        return [n for n in self._sources if self._health[n].enabled]

    @property
    def rejected(self) -> list[tuple[str, str, str]]:
        """What the last merge refused: ``(address, source, reason)`` rows (impostors, conflicts, expired)."""
        return list(self._rejected)

    def get_discovery_stats(self) -> dict[str, Any]:
        """Per-source health (in priority order), cache hit rate, discovery time and the last merge's refusals."""
        lookups = self.cache_hits + self.cache_misses
        return {
            "sources": [self._health[name].as_dict() for name in self._sources],
            "priority": list(self._sources),
            "mode": self.mode,
            "hosts": len(self._merged.hosts) if self._merged else 0,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_hit_rate": self.cache_hits / lookups if lookups else None,
            "discoveries": self.discoveries,
            "average_discovery_ms": self.discovery_ms / self.discoveries if self.discoveries else None,
            "rejected": len(self._rejected),
        }


def _model_aliases(model: str | None) -> tuple[str, ...]:
    if model is None:
        return ()
    from fabstir.discovery.chain_source import model_aliases  # the chain layer is only needed for a model filter

    return model_aliases(model)
