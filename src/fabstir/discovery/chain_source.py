"""The on-chain NodeRegistry as a discovery source: the one source whose price and stake are trusted.

The source reads the registry through the small interface :class:`RegistryReader` (``FabstirSDK.registry``
is one), so discovery depends on the chain layer only, never on the SDK.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from fabstir.chain import registry
from fabstir.chain.contracts import Marketplace
from fabstir.chain.hosts import HostInfo, RegistryEvent, resolve_model_id
from fabstir.discovery.merge import CHAIN
from fabstir.discovery.selection import HostCandidate, Requirements

__all__ = ["ChainSource", "RegistryReader", "RegistryView", "candidate_from_host_info", "model_aliases"]


class RegistryReader(Protocol):
    """The registry reads :class:`ChainSource` needs (``fabstir.sdk.registry.NodeRegistryClient`` has them)."""

    async def get_all_active_nodes(self) -> list[HostInfo]:
        """Every registered, active host."""
        ...

    async def get_registry_events(self, from_block: int = 0) -> Sequence[RegistryEvent]:
        """Registry events since ``from_block``, oldest first."""
        ...

    async def get_host(self, address: str) -> HostInfo:
        """One host's record and validated metadata."""
        ...


class RegistryView(Protocol):
    """A marketplace and a reader of its registry: what :class:`ChainSource` is given (a ``FabstirSDK`` is one)."""

    @property
    def marketplace(self) -> Marketplace:
        """The marketplace contracts, for the chain's block number."""
        ...

    @property
    def registry(self) -> RegistryReader:
        """Reads of the marketplace's NodeRegistry."""
        ...


def model_aliases(model: str) -> tuple[str, ...]:
    """The ways a model can appear in ``HostCandidate.models``: as given, and its ``0x`` registry id when it has one."""
    try:
        model_key = resolve_model_id(model)
    except Exception:  # not "repo/file" nor a 32-byte id: only the literal name can match
        return (model,)
    hex_id = "0x" + model_key.hex() if model_key else None
    return tuple(dict.fromkeys(a for a in (model, hex_id) if a))


def candidate_from_host_info(info: HostInfo, payment_token: str | None = None) -> HostCandidate:
    """A candidate from a registry record: chain price (for ``payment_token``; ``None`` is ETH) and stake.

    ``models`` holds each registered model's ``0x`` id and the names the metadata lists, so a requirement given
    either way matches; keys and region come from the validated metadata (none when it was rejected).
    """
    record, meta = info.record, info.metadata
    models = ["0x" + m.hex() for m in record.models]
    if meta is not None:
        models.extend(meta.models)
    return HostCandidate(
        address=record.address, api_url=record.api_url, models=tuple(dict.fromkeys(models)),
        price_per_token=record.min_price(payment_token), stake=record.stake,
        capabilities=frozenset(meta.capabilities) if meta else frozenset(),
        region=meta.region if meta else None, sources=frozenset({CHAIN}),
        signing_key=meta.signing_key if meta else None, encryption_key=meta.public_key if meta else None,
    )


class ChainSource:
    """Active hosts of the NodeRegistry, read through ``sdk.registry``.

    The first call reads every active host; later calls read only the hosts named by registry events since the
    last call (registrations, exits, metadata, URL, models, pricing, stake, slashes, active flag), so a refresh
    costs what changed, not the size of the registry. For a model requirement each host's price is its price
    for that model (``getModelPricing``: a per-model price where the host set one, else its default), read once
    per host and model and again after that host's next event.

    Args:
        sdk: an SDK with a chain and deployment (any :class:`RegistryView`).
        payment_token: which minimum price to report: ``None`` for ETH, or the ERC20 address sessions will pay in.
        incremental: follow events after the first full read (``False``: read everything every time).
    """

    name = CHAIN

    def __init__(self, sdk: RegistryView, payment_token: str | None = None, *, incremental: bool = True) -> None:
        self._sdk = sdk
        self.payment_token = payment_token
        self.incremental = incremental
        self._hosts: dict[str, HostCandidate] | None = None
        self._model_prices: dict[tuple[str, bytes], int] = {}
        self._next_block = 0
        self.full_reads = 0
        self.hosts_read = 0

    async def discover(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """Every active registered host (for a model requirement, only the hosts registered for it)."""
        chain = self._sdk.marketplace.chain
        block = int(await chain.run(lambda: chain.w3.eth.block_number))
        if self._hosts is None or not self.incremental:
            infos = await self._sdk.registry.get_all_active_nodes()
            self._hosts = {info.address: candidate_from_host_info(info, self.payment_token) for info in infos}
            self._model_prices.clear()
            self.full_reads += 1
            self.hosts_read += len(infos)
        elif block >= self._next_block:
            events = await self._sdk.registry.get_registry_events(from_block=self._next_block)
            changed = {e.operator for e in events if e.block_number <= block}
            self._model_prices = {k: v for k, v in self._model_prices.items() if k[0] not in changed}
            for address in sorted(changed):
                info = await self._sdk.registry.get_host(address)
                self.hosts_read += 1
                if info.record.active:
                    self._hosts[info.address] = candidate_from_host_info(info, self.payment_token)
                else:
                    self._hosts.pop(info.address, None)
        self._next_block = block + 1
        hosts = list(self._hosts.values())
        aliases = model_aliases(requirements.model) if requirements and requirements.model else ()
        if aliases:
            hosts = [h for h in hosts if any(a in h.models for a in aliases)]
            model_key = _registry_id(aliases)
            if model_key is not None:
                hosts = [await self._priced_for(host, model_key) for host in hosts]
        return hosts

    async def _priced_for(self, host: HostCandidate, model_key: bytes) -> HostCandidate:
        """``host`` with its minimum price for the model ``model_key`` (remembered until its next event)."""
        key = (host.address, model_key)
        price = self._model_prices.get(key)
        if price is None:
            price = self._model_prices[key] = await registry.model_pricing(
                self._sdk.marketplace, host.address, model_key, self.payment_token)
        return host if price == host.price_per_token else dataclasses.replace(host, price_per_token=price)


def _registry_id(aliases: tuple[str, ...]) -> bytes | None:
    """The 32-byte registry id among a model's aliases (the ``0x`` one :func:`model_aliases` adds), if any."""
    for alias in aliases:
        if alias.startswith("0x") and len(alias) == 66:
            return bytes.fromhex(alias[2:])
    return None
