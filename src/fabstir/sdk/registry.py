"""``NodeRegistryClient``: read hosts from the on-chain NodeRegistry. Reach it as ``sdk.registry``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir.chain import registry
from fabstir.chain.contracts import Marketplace
from fabstir.chain.hosts import HostInfo, RegistryEvent, resolve_model_id
from fabstir.chain.metadata import HostMetadata, MetadataError, parse_host_metadata
from fabstir.errors import ConfigError

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["HostInfo", "NodeRegistryClient", "RegistryEvent"]


class NodeRegistryClient:
    """Hosts, their stake, pricing and metadata; registry events."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk

    @property
    def _market(self) -> Marketplace:
        return self._sdk.marketplace

    async def get_all_active_nodes(self) -> list[HostInfo]:
        """Every registered, active host; malformed metadata is reported per host in ``metadata_error``."""
        return [await self.get_host(address) for address in await registry.active_nodes(self._market)]

    async def get_nodes_for_model(self, model: bytes | str) -> list[HostInfo]:
        """Active hosts that serve ``model`` (a 32-byte id or ``"repo/file"``)."""
        addresses = await registry.nodes_for_model(self._market, _model_key(model))
        return [await self.get_host(address) for address in addresses]

    async def get_host(self, address: str) -> HostInfo:
        """The host's record (``getNodeFullInfo``) with its metadata validated."""
        record = await registry.host_record(self._market, address)
        try:
            return HostInfo(record, parse_host_metadata(record.metadata_json), None)
        except MetadataError as exc:
            return HostInfo(record, None, exc.message)

    async def get_node_metadata(self, address: str) -> HostMetadata:
        """The host's validated metadata (from ``getNodeFullInfo``, which every registry has).

        Raises:
            MetadataError: the host published metadata that does not match the schema.
        """
        return parse_host_metadata((await registry.host_record(self._market, address)).metadata_json)

    async def is_node_active(self, address: str) -> bool:
        return await registry.is_active_node(self._market, address)

    async def get_node_stake(self, address: str) -> int:
        """The host's stake in base units of the stake token (0 when unregistered)."""
        return (await registry.host_record(self._market, address)).stake

    async def get_node_pricing(self, address: str, token: str | None = None) -> int:
        """The host's default minimum price per token (×1000) for ETH (``token=None``) or an ERC20."""
        return await registry.node_pricing(self._market, address, token)

    async def get_model_pricing(self, address: str, model: bytes | str | None, token: str | None = None) -> int:
        """The host's minimum price per token (×1000) for sessions on ``model``: its per-model price where it
        set one, else its default (``model=None``: the default). Sessions for a model must be opened at or
        above this price."""
        model_key = resolve_model_id(model)
        if model_key is None:
            return await self.get_node_pricing(address, token)
        return await registry.model_pricing(self._market, address, model_key, token)

    async def get_registry_events(self, from_block: int = 0) -> list[RegistryEvent]:
        """Registrations, updates (prices, per-model prices included) and exits since ``from_block``
        (poll it to monitor the registry). Events a deployment does not emit are simply absent."""
        return await registry.registry_events(self._market, from_block)


def _model_key(model: bytes | str) -> bytes:
    """The registry id of ``model`` (given as an id or ``"repo/file"``)."""
    model_key = resolve_model_id(model)
    if model_key is None:
        raise ConfigError("a model is required")
    return model_key
