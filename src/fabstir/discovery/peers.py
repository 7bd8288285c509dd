"""Peer management: reputation from observed outcomes, connection quality, a blacklist with expiry, preferred peers.

Everything here is what *this client* has seen of a host; nothing is taken from the
host's own claims. Outcomes feed the reputation, measurements feed the quality
metrics (exponentially weighted means of round-trip time, time to first token and
tokens per second), and both flow into :class:`HostCandidate` through
:meth:`PeerManager.apply`, which is what makes ``fastest`` and ``reputable`` mean
something. Pure bookkeeping: callers pass ``now`` (seconds, any monotonic origin)
wherever time matters; :meth:`save`/:meth:`load` keep it across runs as JSON.

Reputation is a smoothed success rate where a lost dispute counts as
:data:`DISPUTE_WEIGHT` failures::

    (completed + 1) / (completed + failures + DISPUTE_WEIGHT * disputes + 2)

so an unknown host starts at 0.5 and every outcome moves it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.tracking import SelectionStats

__all__ = ["DISPUTE_WEIGHT", "PeerManager", "PeerQuality"]

DISPUTE_WEIGHT = 3
"""How many failures one dispute counts as in the reputation."""


@dataclasses.dataclass
class PeerQuality:
    """What this client measured of one host: exponentially weighted means and sample counts."""

    rtt_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    samples: int = 0
    completed: int = 0
    failures: int = 0
    disputes: int = 0


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else old + alpha * (new - old)


class PeerManager:
    """Reputation, quality metrics, blacklist and preferred peers for the hosts this client talks to.

    Args:
        alpha: weight of a new measurement in the moving averages (0 < alpha <= 1).
        stats: the selection counters and failure bans to share (a new one by default).
    """

    def __init__(self, *, alpha: float = 0.3, stats: SelectionStats | None = None) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.stats = stats or SelectionStats()
        self._quality: dict[str, PeerQuality] = {}
        self._blacklist: dict[str, float | None] = {}  # address -> expiry (None: until removed)
        self._preferred: list[str] = []
        self.version = 0
        """Bumped by every change, so callers can tell whether a cached view is still current."""

    @staticmethod
    def _key(address: str) -> str:
        return address.lower()

    def _get(self, address: str) -> PeerQuality:
        key = self._key(address)
        quality = self._quality.get(key)
        if quality is None:
            quality = self._quality[key] = PeerQuality()
        return quality

    def quality(self, address: str) -> PeerQuality:
        """A copy of what was measured of ``address`` (empty when nothing was)."""
        return dataclasses.replace(self._quality.get(self._key(address)) or PeerQuality())

    # -- outcomes ----------------------------------------------------------------------------------------------

    def record_attempt(self, address: str) -> None:
        """The host was chosen for a session (an outcome should follow); counted in ``stats``."""
        self.stats.record_attempt(self._key(address))

    def record_completed(self, address: str, duration_s: float | None = None) -> None:
        """A session on the host completed (served and settled without dispute)."""
        self.version += 1
        self._get(address).completed += 1
        self.stats.record_success(self._key(address), duration_s)

    def record_failure(self, address: str, now: float) -> None:
        """The host failed (unreachable, errored, cut a stream); it is banned for a doubling period."""
        self.version += 1
        self._get(address).failures += 1
        self.stats.record_failure(self._key(address), now)

    def record_dispute(self, address: str, now: float) -> None:
        """A dispute with the host was decided against it; weighs :data:`DISPUTE_WEIGHT` failures."""
        self.version += 1
        self._get(address).disputes += 1
        self.stats.record_failure(self._key(address), now)

    def reputation(self, address: str) -> float:
        """Smoothed success rate in (0, 1); 0.5 for a host never seen."""
        q = self._quality.get(self._key(address))
        if q is None:
            return 0.5
        return (q.completed + 1) / (q.completed + q.failures + DISPUTE_WEIGHT * q.disputes + 2)

    # -- measurements ------------------------------------------------------------------------------------------

    def record_rtt(self, address: str, rtt_ms: float) -> None:
        """A measured round trip to the host (e.g. a ping of its ``/health``)."""
        self.version += 1
        self._check_measure(rtt_ms, "rtt_ms")
        q = self._get(address)
        q.rtt_ms = _ewma(q.rtt_ms, rtt_ms, self.alpha)
        q.samples += 1

    def record_stream(self, address: str, *, ttft_ms: float | None, tokens_per_s: float | None) -> None:
        """Time to first token and generation speed seen on one answer from the host."""
        self.version += 1
        q = self._get(address)
        if ttft_ms is not None:
            self._check_measure(ttft_ms, "ttft_ms")
            q.ttft_ms = _ewma(q.ttft_ms, ttft_ms, self.alpha)
        if tokens_per_s is not None and tokens_per_s > 0:
            q.tokens_per_s = _ewma(q.tokens_per_s, tokens_per_s, self.alpha)
        q.samples += 1

    @staticmethod
    def _check_measure(value: float, name: str) -> None:
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")

    # -- blacklist and preferences -----------------------------------------------------------------------------

    def blacklist(self, address: str, *, until: float | None = None) -> None:
        """Never select ``address`` (until ``until``, when given)."""
        self.version += 1
        self._blacklist[self._key(address)] = until

    def unblacklist(self, address: str) -> None:
        """Lift a blacklist entry (no error when there is none)."""
        self.version += 1
        self._blacklist.pop(self._key(address), None)

    def is_blocked(self, address: str, now: float) -> bool:
        """Whether ``address`` is blacklisted or serving a failure ban at ``now``; expired entries are dropped."""
        key = self._key(address)
        if key in self._blacklist:
            until = self._blacklist[key]
            if until is None or now < until:
                return True
            del self._blacklist[key]
        return self.stats.is_banned(key, now)

    def next_change(self, now: float) -> float | None:
        """The earliest time after ``now`` when a blacklist entry or a failure ban ends (``None``: none pending)."""
        ends = [u for u in self._blacklist.values() if u is not None and u > now]
        ban_end = self.stats.next_ban_end(now)
        if ban_end is not None:
            ends.append(ban_end)
        return min(ends, default=None)

    def set_preferred(self, addresses: Iterable[str]) -> None:
        """Hosts to try first, in this order (when they meet the requirements)."""
        self.version += 1
        self._preferred = [self._key(a) for a in addresses]

    @property
    def preferred(self) -> tuple[str, ...]:
        return tuple(self._preferred)

    def preference(self, address: str) -> int:
        """Position among the preferred peers, or ``len(preferred)`` for any other host (lower comes first)."""
        key = self._key(address)
        return self._preferred.index(key) if key in self._preferred else len(self._preferred)

    # -- candidates --------------------------------------------------------------------------------------------

    def apply(self, host: HostCandidate) -> HostCandidate:
        """``host`` with what this client observed: reputation, measured latency and tokens/s when known.

        Latency is the measured RTT (or, before any ping, the TTFT seen); unmeasured values stay ``None``.
        """
        q = self._quality.get(self._key(host.address))
        if q is None:
            return dataclasses.replace(host, reputation=0.5) if host.reputation != 0.5 else host
        latency = q.rtt_ms if q.rtt_ms is not None else q.ttft_ms
        return dataclasses.replace(
            host, reputation=self.reputation(host.address),
            latency_ms=latency if latency is not None else host.latency_ms,
            tokens_per_s=q.tokens_per_s if q.tokens_per_s is not None else host.tokens_per_s,
        )

    def usable(self, hosts: Iterable[HostCandidate], now: float) -> list[HostCandidate]:
        """``hosts`` not blocked at ``now``, preferred peers first (stable otherwise), with observations applied."""
        kept = [self.apply(h) for h in hosts if not self.is_blocked(h.address, now)]
        if self._preferred:
            kept.sort(key=lambda h: self.preference(h.address))
        return kept

    # -- persistence -------------------------------------------------------------------------------------------

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """Everything worth keeping as plain JSON types (time-limited blacklist entries need the same clock)."""
        return {
            "quality": {k: dataclasses.asdict(v) for k, v in sorted(self._quality.items())},
            "blacklist": {k: v for k, v in sorted(self._blacklist.items()) if v is None or now is None or v > now},
            "preferred": list(self._preferred),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, alpha: float = 0.3) -> PeerManager:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored."""
        peers = cls(alpha=alpha)
        fields = {f.name for f in dataclasses.fields(PeerQuality)}
        for key, row in dict(data.get("quality", {})).items():
            peers._quality[str(key).lower()] = PeerQuality(**{k: v for k, v in dict(row).items() if k in fields})
        for key, until in dict(data.get("blacklist", {})).items():
            peers._blacklist[str(key).lower()] = None if until is None else float(until)
        peers._preferred = [str(a).lower() for a in data.get("preferred", [])]
        return peers

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON (permanent blacklist entries only: the monotonic clock does not persist)."""
        data = self.to_dict()
        data["blacklist"] = {k: v for k, v in data["blacklist"].items() if v is None}
        target = Path(path)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(target)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, alpha: float = 0.3) -> PeerManager:
        """Read a file written by :meth:`save`; a missing file gives an empty manager."""
        target = Path(path)
        if not target.exists():
            return cls(alpha=alpha)
        return cls.from_dict(json.loads(target.read_text()), alpha=alpha)
