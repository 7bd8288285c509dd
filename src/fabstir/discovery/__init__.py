"""Host discovery: sources (chain, HTTP service, mDNS, DHT), unified discovery, peer observations and selection."""

from __future__ import annotations

import importlib
from typing import Any

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

_LAZY = {
    # Sources with heavier dependencies (zeroconf, kademlia) load on first use.
    "ChainSource": "fabstir.discovery.chain_source",
    "DhtNode": "fabstir.discovery.dht",
    "HttpAnnouncer": "fabstir.discovery.http_client",
    "HttpDiscoveryClient": "fabstir.discovery.http_client",
    "MdnsAnnouncer": "fabstir.discovery.mdns",
    "MdnsDiscovery": "fabstir.discovery.mdns",
    "discover_local_nodes": "fabstir.discovery.mdns",
    "serve_discovery": "fabstir.discovery.http_service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ChainSource",
    "DhtNode",
    "DiscoveryManager",
    "DiscoverySource",
    "FACTORS",
    "HostCandidate",
    "HostSelector",
    "HostStats",
    "HttpAnnouncer",
    "HttpDiscoveryClient",
    "MdnsAnnouncer",
    "MdnsDiscovery",
    "MergeResult",
    "PeerManager",
    "PeerQuality",
    "RankedHost",
    "Requirements",
    "SelectionCriteria",
    "SelectionError",
    "SelectionStats",
    "SourceHealth",
    "StaticSource",
    "Strategy",
    "Weights",
    "candidate_from_announcement",
    "discover_local_nodes",
    "merge_candidates",
    "serve_discovery",
]
