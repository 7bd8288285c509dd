"""``NodeRegistryClient``: read hosts from the on-chain NodeRegistry. Reach it as ``sdk.registry``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from web3 import Web3

from fabstir.chain.contracts import Marketplace
from fabstir.chain.hosts import HostInfo, RegistryEvent, resolve_model_id
from fabstir.chain.metadata import HostMetadata, MetadataError, parse_host_metadata
from fabstir.chain.records import ZERO_ADDRESS, HostRecord

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

    async def _call(self, call: Any) -> Any:
        return await self._market.chain.call(call)

    async def get_all_active_nodes(self) -> list[HostInfo]:
        """Every registered, active host; malformed metadata is reported per host in ``metadata_error``."""
        addresses = await self._call(self._market.node_registry.functions.getAllActiveNodes())
        return [await self.get_host(address) for address in addresses]

    async def get_nodes_for_model(self, model: bytes | str) -> list[HostInfo]:
        """Active hosts that serve ``model`` (a 32-byte id or ``"repo/file"``)."""
        call = self._market.node_registry.functions.getNodesForModel(resolve_model_id(model))
        return [await self.get_host(address) for address in await self._call(call)]

    async def get_host(self, address: str) -> HostInfo:
        """The host's record (``getNodeFullInfo``) with its metadata validated."""
        record = await self._record(address)
        try:
            return HostInfo(record, parse_host_metadata(record.metadata_json), None)
        except MetadataError as exc:
            return HostInfo(record, None, exc.message)

    async def _record(self, address: str) -> HostRecord:
        address = Web3.to_checksum_address(address)
        return HostRecord.from_full_info(
            address, await self._call(self._market.node_registry.functions.getNodeFullInfo(address)))

    async def get_node_metadata(self, address: str) -> HostMetadata:
        """The host's validated metadata (from ``getNodeFullInfo``, which every registry has).

        Raises:
            MetadataError: the host published metadata that does not match the schema.
        """
        return parse_host_metadata((await self._record(address)).metadata_json)

    async def is_node_active(self, address: str) -> bool:
        return bool(await self._call(self._market.node_registry.functions.isActiveNode(
            Web3.to_checksum_address(address))))

    async def get_node_stake(self, address: str) -> int:
        """The host's stake in base units of the stake token (0 when unregistered)."""
        return (await self._record(address)).stake

    async def get_node_pricing(self, address: str, token: str | None = None) -> int:
        """The host's default minimum price per token (×1000) for ETH (``token=None``) or an ERC20."""
        call = self._market.node_registry.functions.getNodePricing(Web3.to_checksum_address(address),
                                                                   _token_address(token))
        return int(await self._call(call))

    async def get_model_pricing(self, address: str, model: bytes | str | None, token: str | None = None) -> int:
        """The host's minimum price per token (×1000) for sessions on ``model``: its per-model price where it
        set one, else its default (``model=None``: the default). Sessions for a model must be opened at or
        above this price."""
        model_key = resolve_model_id(model)
        if model_key is None:
            return await self.get_node_pricing(address, token)
        call = self._market.node_registry.functions.getModelPricing(Web3.to_checksum_address(address), model_key,
                                                                    _token_address(token))
        return int(await self._call(call))

    async def get_registry_events(self, from_block: int = 0) -> list[RegistryEvent]:
        """Registrations, updates (prices, per-model prices included) and exits since ``from_block``
        (poll it to monitor the registry). Events a deployment does not emit are simply absent."""
        events = self._market.node_registry.events
        kinds = (events.NodeRegistered, events.NodeUnregistered, events.MetadataUpdated, events.ApiUrlUpdated,
                 events.ModelsUpdated, events.PricingUpdated, events.ModelPricingUpdated, events.NodeActiveChanged,
                 events.StakeAdded)

        def fetch() -> list[RegistryEvent]:
            found = []
            for kind in kinds:
                for log in kind().get_logs(from_block=from_block):
                    args = dict(log["args"])
                    found.append(RegistryEvent(str(log["event"]), str(args["operator"]), int(log["blockNumber"]),
                                               args))
            return sorted(found, key=lambda e: e.block_number)

        return await self._market.chain.run(fetch)


def _token_address(token: str | None) -> str:
    return Web3.to_checksum_address(token) if token else ZERO_ADDRESS
