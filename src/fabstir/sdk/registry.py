"""``NodeRegistryClient``: read hosts from the on-chain NodeRegistry. Reach it as ``sdk.registry``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from web3 import Web3

from fabstir.chain.contracts import Marketplace
from fabstir.chain.metadata import HostMetadata, MetadataError, parse_host_metadata
from fabstir.chain.records import HostRecord
from fabstir.sdk.sessions import resolve_model_id

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["HostInfo", "NodeRegistryClient", "RegistryEvent"]

_EVENTS = ("NodeRegistered", "NodeUnregistered", "MetadataUpdated", "ApiUrlUpdated", "ModelsUpdated",
           "PricingUpdated", "NodeActiveChanged", "StakeAdded")


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """A registered host with its validated metadata, or the reason its metadata was rejected."""

    record: HostRecord
    metadata: HostMetadata | None
    metadata_error: str | None

    @property
    def address(self) -> str:
        return self.record.address

    @property
    def api_url(self) -> str:
        return self.record.api_url


@dataclasses.dataclass(frozen=True)
class RegistryEvent:
    name: str
    operator: str
    block_number: int
    args: dict[str, Any]


class NodeRegistryClient:
    """Hosts, their stake, pricing and metadata; registry events."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk

    @property
    def _market(self) -> Marketplace:
        return self._sdk.marketplace

    async def _view(self, name: str, *args: Any) -> Any:
        functions = self._market.node_registry.functions
        return await self._market.chain.call(getattr(functions, name)(*args))

    async def get_all_active_nodes(self) -> list[HostInfo]:
        """Every registered, active host; malformed metadata is reported per host in ``metadata_error``."""
        addresses = await self._view("getAllActiveNodes")
        return [await self.get_host(address) for address in addresses]

    async def get_nodes_for_model(self, model: bytes | str) -> list[HostInfo]:
        """Active hosts that serve ``model`` (a 32-byte id or ``"repo/file"``)."""
        addresses = await self._view("getNodesForModel", resolve_model_id(model))
        return [await self.get_host(address) for address in addresses]

    async def get_host(self, address: str) -> HostInfo:
        address = Web3.to_checksum_address(address)
        record = HostRecord.from_full_info(address, await self._view("getNodeFullInfo", address))
        try:
            return HostInfo(record, parse_host_metadata(record.metadata_json), None)
        except MetadataError as exc:
            return HostInfo(record, None, exc.message)

    async def get_node_metadata(self, address: str) -> HostMetadata:
        """The host's validated metadata.

        Raises:
            MetadataError: the host published metadata that does not match the schema.
        """
        text = await self._view("getNodeMetadata", Web3.to_checksum_address(address))
        return parse_host_metadata(text)

    async def is_node_active(self, address: str) -> bool:
        return bool(await self._view("isActiveNode", Web3.to_checksum_address(address)))

    async def get_node_stake(self, address: str) -> int:
        return int(await self._view("getNodeStake", Web3.to_checksum_address(address)))

    async def get_node_pricing(self, address: str, token: str | None = None) -> int:
        """The host's minimum price per token (×1000) for ETH (``token=None``) or an ERC20."""
        token_address = Web3.to_checksum_address(token) if token else "0x" + "00" * 20
        return int(await self._view("getNodePricing", Web3.to_checksum_address(address), token_address))

    async def get_registry_events(self, from_block: int = 0) -> list[RegistryEvent]:
        """Registrations, updates and exits since ``from_block`` (poll it to monitor the registry)."""
        registry = self._market.node_registry

        def fetch() -> list[RegistryEvent]:
            found = []
            for name in _EVENTS:
                for log in getattr(registry.events, name)().get_logs(from_block=from_block):
                    args = dict(log["args"])
                    operator = str(args.get("operator") or next(iter(args.values())))
                    found.append(RegistryEvent(name, operator, int(log["blockNumber"]), args))
            return sorted(found, key=lambda e: e.block_number)

        return await self._market.chain.run(fetch)
