"""The on-chain NodeRegistry as a discovery source: the one source whose price and stake are trusted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabstir.discovery.selection import HostCandidate, Requirements
from fabstir.sdk.registry import HostInfo
from fabstir.sdk.sessions import resolve_model_id

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["ChainSource", "candidate_from_host_info", "model_aliases"]


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
        region=meta.region if meta else None, sources=frozenset({"chain"}),
        signing_key=meta.signing_key if meta else None, encryption_key=meta.public_key if meta else None,
    )


class ChainSource:
    """Active hosts of the NodeRegistry, read through ``sdk.registry``.

    Args:
        sdk: an SDK with a chain and deployment.
        payment_token: which minimum price to report: ``None`` for ETH, or the ERC20 address sessions will pay in.
    """

    name = "chain"

    def __init__(self, sdk: FabstirSDK, payment_token: str | None = None) -> None:
        self._sdk = sdk
        self.payment_token = payment_token

    async def discover(self, requirements: Requirements | None = None) -> list[HostCandidate]:
        """Every active registered host (for a model requirement, only the hosts registered for it)."""
        model = requirements.model if requirements else None
        model_key = None
        if model is not None:
            try:
                model_key = resolve_model_id(model)
            except Exception:
                model_key = None
        if model_key is not None:
            infos = await self._sdk.registry.get_nodes_for_model(model_key)
        else:
            infos = await self._sdk.registry.get_all_active_nodes()
        return [candidate_from_host_info(info, self.payment_token) for info in infos]
