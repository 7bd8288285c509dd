"""Host discovery: sources (chain, HTTP service, mDNS, DHT), unified discovery, peer observations and selection."""

from __future__ import annotations

from fabstir.discovery.manager import DiscoveryManager, SourceHealth
from fabstir.discovery.merge import MergeResult, merge_candidates
from fabstir.discovery.peers import PeerManager, PeerQuality
from fabstir.discovery.selection import (
    FACTORS,
    HostCandidate,
    HostSelector,
    RankedHost,
    Requirements,
    SelectionCriteria,
    SelectionError,
    Strategy,
    Weights,
)
from fabstir.discovery.sources import DiscoverySource, StaticSource, candidate_from_announcement
from fabstir.discovery.tracking import HostStats, SelectionStats

__all__ = [
    "DiscoveryManager",
    "DiscoverySource",
    "FACTORS",
    "MergeResult",
    "PeerManager",
    "PeerQuality",
    "SourceHealth",
    "StaticSource",
    "candidate_from_announcement",
    "merge_candidates",
    "HostCandidate",
    "HostSelector",
    "HostStats",
    "RankedHost",
    "Requirements",
    "SelectionCriteria",
    "SelectionError",
    "SelectionStats",
    "Strategy",
    "Weights",
]
