"""Observed outcomes per host: selections, successes, failures, session durations and bans.

Pure bookkeeping: nothing reads a clock; every call that depends on time takes
``now`` (seconds, any monotonic origin) from the caller. A failure bans the host
until ``now + ban``, where ``ban`` doubles with each consecutive failure (capped);
a success clears the ban and the failure streak. :meth:`SelectionStats.reliability`
(a smoothed success rate in 0..1) is what feeds :attr:`HostCandidate.reputation`
when candidates are built (:meth:`SelectionStats.apply`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fabstir.discovery.selection import HostCandidate

__all__ = ["HostStats", "SelectionStats"]


@dataclasses.dataclass
class HostStats:
    """Counters for one host."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    banned_until: float | None = None
    session_count: int = 0
    session_seconds: float = 0.0


class SelectionStats:
    """Outcomes of selecting hosts, and the bans that follow failures.

    Args:
        base_ban_s: ban after the first consecutive failure.
        max_ban_s: cap on the doubling ban.
    """

    def __init__(self, *, base_ban_s: float = 30.0, max_ban_s: float = 600.0) -> None:
        if base_ban_s < 0 or max_ban_s < base_ban_s:
            raise ValueError("need 0 <= base_ban_s <= max_ban_s")
        self.base_ban_s = base_ban_s
        self.max_ban_s = max_ban_s
        self._hosts: dict[str, HostStats] = {}

    def _get(self, address: str) -> HostStats:
        stats = self._hosts.get(address)
        if stats is None:
            stats = self._hosts[address] = HostStats()
        return stats

    def stats(self, address: str) -> HostStats:
        """A copy of the counters for ``address`` (zeros when never seen)."""
        return dataclasses.replace(self._hosts.get(address) or HostStats())

    # -- recording ---------------------------------------------------------------------------------------------

    def record_attempt(self, address: str) -> None:
        """The host was selected (an outcome should follow)."""
        self._get(address).attempts += 1

    def record_success(self, address: str, duration_s: float | None = None) -> None:
        """The host served; clears its ban and failure streak. ``duration_s`` records a finished session."""
        stats = self._get(address)
        stats.successes += 1
        stats.consecutive_failures = 0
        stats.banned_until = None
        if duration_s is not None:
            self.record_session(address, duration_s)

    def record_session(self, address: str, duration_s: float) -> None:
        """A session on the host lasted ``duration_s`` seconds."""
        if duration_s < 0:
            raise ValueError("duration_s must be non-negative")
        stats = self._get(address)
        stats.session_count += 1
        stats.session_seconds += duration_s

    def record_failure(self, address: str, now: float) -> float:
        """The host failed at ``now``; bans it and returns the time the ban ends."""
        stats = self._get(address)
        stats.failures += 1
        stats.consecutive_failures += 1
        ban = min(self.base_ban_s * 2 ** (stats.consecutive_failures - 1), self.max_ban_s)
        stats.banned_until = now + ban
        return stats.banned_until

    # -- reading -----------------------------------------------------------------------------------------------

    def is_banned(self, address: str, now: float) -> bool:
        """Whether ``address`` is banned at ``now`` (a ban ends at exactly ``banned_until``)."""
        stats = self._hosts.get(address)
        return stats is not None and stats.banned_until is not None and now < stats.banned_until

    def next_ban_end(self, now: float) -> float | None:
        """The earliest ban end after ``now``, or ``None`` when no ban is running."""
        ends = [s.banned_until for s in self._hosts.values() if s.banned_until is not None and s.banned_until > now]
        return min(ends, default=None)

    def available(self, hosts: Iterable[HostCandidate], now: float) -> list[HostCandidate]:
        """The hosts not banned at ``now``, in input order."""
        return [host for host in hosts if not self.is_banned(host.address, now)]

    def success_rate(self, address: str) -> float | None:
        """Successes over outcomes (successes + failures); ``None`` with no outcome yet."""
        stats = self._hosts.get(address)
        if stats is None or stats.successes + stats.failures == 0:
            return None
        return stats.successes / (stats.successes + stats.failures)

    def average_session_duration(self, address: str) -> float | None:
        """Mean recorded session length in seconds; ``None`` with no session yet."""
        stats = self._hosts.get(address)
        if stats is None or stats.session_count == 0:
            return None
        return stats.session_seconds / stats.session_count

    def reliability(self, address: str) -> float:
        """Smoothed success rate ``(successes + 1) / (outcomes + 2)``: 0.5 for an unknown host, always in (0, 1)."""
        stats = self._hosts.get(address)
        if stats is None:
            return 0.5
        return (stats.successes + 1) / (stats.successes + stats.failures + 2)

    def apply(self, host: HostCandidate) -> HostCandidate:
        """``host`` with its ``reputation`` set to :meth:`reliability`."""
        return dataclasses.replace(host, reputation=self.reliability(host.address))
