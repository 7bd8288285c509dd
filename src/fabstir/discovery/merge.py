"""Merging what several discovery sources saw into one candidate per host.

Pure: the caller passes each source's candidates (in priority order) and the clock.

Rules, per host address (case-insensitive):

- The chain is authoritative. A host it lists keeps the chain's price, stake, API URL,
  models and keys, whatever announcements say. An announcement for that address counts
  (adds its source, capabilities and region) only when signed with the Ed25519 key the
  host registered on chain; any other key is an impostor and is rejected.
- A host no chain lists is taken from the highest-priority source; announcements for
  the same address under a different key are rejected as conflicting. With
  ``registered_only`` such hosts are dropped altogether.
- Announcements past their TTL are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fabstir.discovery.selection import HostCandidate

__all__ = ["CHAIN", "MergeResult", "merge_candidates"]

CHAIN = "chain"
"""The name of the on-chain registry source, whose price, stake, URL and keys win."""


@dataclasses.dataclass(frozen=True)
class MergeResult:
    """The merged hosts (first-seen order) and what was refused, as ``(address, source, reason)`` rows."""

    hosts: list[HostCandidate]
    rejected: list[tuple[str, str, str]]


def merge_candidates(per_source: Sequence[tuple[str, Sequence[HostCandidate]]], now_ms: int, *,
                     registered_only: bool = False) -> MergeResult:
    """One candidate per address from ``per_source`` (``(source name, candidates)`` in priority order)."""
    chain: dict[str, HostCandidate] = {}
    announced: dict[str, list[tuple[str, HostCandidate]]] = {}
    order: dict[str, None] = {}  # first-seen order of addresses, each once
    rejected: list[tuple[str, str, str]] = []
    for source, hosts in per_source:
        for host in hosts:
            key = host.address.lower()
            order.setdefault(key)
            if source == CHAIN:
                chain.setdefault(key, host)
            elif host.expires_at_ms is not None and host.expires_at_ms <= now_ms:
                rejected.append((host.address, source, "expired"))
            else:
                announced.setdefault(key, []).append((source, host))
    merged: list[HostCandidate] = []
    for key in order:
        claims = announced.get(key, [])
        base = chain.get(key)
        if base is not None:
            merged.append(_onto_chain(base, claims, rejected))
        elif claims and not registered_only:
            merged.append(_from_announcements(claims, rejected))
        elif claims:
            rejected.extend((h.address, s, "not registered on chain") for s, h in claims)
    return MergeResult(merged, rejected)


def _onto_chain(base: HostCandidate, claims: list[tuple[str, HostCandidate]],
                rejected: list[tuple[str, str, str]]) -> HostCandidate:
    sources = set(base.sources) | {CHAIN}
    capabilities = set(base.capabilities)
    region = base.region
    for source, claim in claims:
        if base.signing_key is None or claim.signing_key != base.signing_key:
            rejected.append((claim.address, source, "signed by a key the chain does not list for this host"))
            continue
        sources.add(source)
        capabilities |= claim.capabilities
        region = region or claim.region
    return dataclasses.replace(base, sources=frozenset(sources), capabilities=frozenset(capabilities), region=region)


def _from_announcements(claims: list[tuple[str, HostCandidate]],
                        rejected: list[tuple[str, str, str]]) -> HostCandidate:
    first_source, first = claims[0]
    same_key = [(s, h) for s, h in claims if h.signing_key == first.signing_key]
    for source, claim in claims:
        if claim.signing_key != first.signing_key:
            rejected.append((claim.address, source, f"conflicts with the record {first_source} holds"))
    newest = max((h for _, h in same_key), key=lambda h: h.expires_at_ms or 0)
    return dataclasses.replace(newest, sources=frozenset(s for s, _ in same_key) | newest.sources)
