"""The interface every discovery source implements, and the conversion from signed announcements.

A source answers :meth:`DiscoverySource.discover` with :class:`HostCandidate` objects whose
``sources`` is ``{source.name}``. Sources that relay signed announcements (HTTP service, mDNS,
DHT) verify each record on read and drop the ones that fail; they never invent measurements.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

from eth_utils.address import to_checksum_address

from fabstir._clock import wall_clock_ms
from fabstir.discovery.selection import HostCandidate, Requirements
from fabstir.protocol.announcement import HostAnnouncement

__all__ = ["DiscoverySource", "StaticSource", "candidate_from_announcement", "wall_clock_ms"]


@runtime_checkable
class DiscoverySource(Protocol):
    """Something that can list hosts: the chain, the HTTP discovery service, mDNS, the DHT."""

    name: str
    """Short, stable name (``"chain"``, ``"http"``, ``"mdns"``, ``"dht"``) reported in ``HostCandidate.sources``."""

    async def discover(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """The hosts this source knows now. Filtering by ``requirements`` is optional (the caller filters again)."""
        ...


def candidate_from_announcement(record: HostAnnouncement, source: str) -> HostCandidate:
    """A candidate from a verified announcement: checksum address, stake 0, nothing measured (the chain knows stake)."""
    return HostCandidate(
        address=to_checksum_address(record.host), api_url=record.api_url, models=record.models,
        price_per_token=record.price_per_token, capabilities=frozenset(record.capabilities), region=record.region,
        sources=frozenset({source}), signing_key=record.signing_key, expires_at_ms=record.expires_at_ms,
    )


class StaticSource:
    """A fixed list of hosts (from configuration, or known out of band) as a discovery source."""

    def __init__(self, hosts: list[HostCandidate], name: str = "static") -> None:
        self.name = name
        self.hosts = list(hosts)

    async def discover(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """The configured hosts, each marked as seen by this source."""
        return [h if self.name in h.sources else dataclasses.replace(h, sources=h.sources | {self.name})
                for h in self.hosts]
