"""Host discovery data structures and selection: network-free, pure policy over snapshots."""

from __future__ import annotations

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
from fabstir.discovery.tracking import HostStats, SelectionStats

__all__ = [
    "FACTORS",
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
