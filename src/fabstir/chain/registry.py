"""Hosts on the NodeRegistry (register, update, unregister, read, events) and their HostEarnings.

Typed wrappers that the SDK, the node and the CLI all use, so every registry call is written once, here.
Each awaits :class:`~fabstir.chain.backend.Chain`'s worker thread and turns a revert into
:class:`~fabstir.errors.ContractError`. A payment token of ``None`` means ETH.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from fabstir.chain.contracts import Marketplace
from fabstir.chain.hosts import RegistryEvent
from fabstir.chain.records import ZERO_ADDRESS, HostRecord
from fabstir.chain.tokens import ensure_allowance

__all__ = [
    "UnbondingStake",
    "Unregistered",
    "active_nodes",
    "earnings_balance",
    "host_record",
    "is_active_node",
    "min_stake",
    "model_pricing",
    "node_pricing",
    "nodes_for_model",
    "register_node",
    "registry_events",
    "set_model_pricing",
    "set_stake_unbonding_period",
    "unbonding_stake",
    "unregister_node",
    "update_node",
    "withdraw_all_earnings",
    "withdraw_unbonded_stake",
]


def _token_address(token: str | None) -> str:
    """The checksummed address of ``token``; ETH (``None``) is the zero address."""
    return Web3.to_checksum_address(token) if token else ZERO_ADDRESS


# --- writes ------------------------------------------------------------------------------------------------


async def min_stake(market: Marketplace) -> int:
    """The registry's stake (``MIN_STAKE``), in base units of the stake token."""
    return int(await market.chain.call(market.node_registry.functions.MIN_STAKE()))


async def register_node(market: Marketplace, host: LocalAccount, *, metadata: str, api_url: str,
                        models: Sequence[bytes], min_price_native: int, min_price_stable: int) -> int:
    """Approve and stake the registry's minimum stake, then ``registerNode``; returns the stake.

    Raises:
        ContractError: e.g. already registered, unapproved model, price out of range, too little FAB.
    """
    chain, registry = market.chain, market.node_registry
    stake = await min_stake(market)
    await ensure_allowance(chain, host, market.stake_token, registry.address, stake)
    await chain.transact(host, registry.functions.registerNode(metadata, api_url, list(models), min_price_native,
                                                               min_price_stable))
    return stake


async def update_node(market: Marketplace, host: LocalAccount, *, metadata: str | None = None,
                      api_url: str | None = None, models: Sequence[bytes] | None = None,
                      min_price_native: int | None = None, min_price_stable: int | None = None) -> None:
    """Change what a registered host publishes: one transaction for each argument given.

    Raises:
        ContractError: not registered, unapproved model, price out of range...
    """
    functions, chain = market.node_registry.functions, market.chain
    if metadata is not None:
        await chain.transact(host, functions.updateMetadata(metadata))
    if api_url is not None:
        await chain.transact(host, functions.updateApiUrl(api_url))
    if models is not None:
        await chain.transact(host, functions.updateSupportedModels(list(models)))
    if min_price_native is not None:
        await chain.transact(host, functions.updatePricingNative(min_price_native))
    if min_price_stable is not None:
        await chain.transact(host, functions.updatePricingStable(min_price_stable))


async def set_model_pricing(market: Marketplace, host: LocalAccount, model: bytes, native_price: int,
                            stable_price: int) -> None:
    """The host's own minimum prices (×1000) for sessions on ``model`` (0 keeps its default for that token).

    Raises:
        ContractError: not registered, a model it does not serve, price out of range.
    """
    await market.chain.transact(host, market.node_registry.functions.setModelPricing(model, native_price,
                                                                                     stable_price))


@dataclasses.dataclass(frozen=True)
class Unregistered:
    """What ``unregisterNode`` did with the host's stake."""

    stake: int
    """The whole stake released (stake-token base units)."""
    unbonding_until: int | None
    """Chain time (seconds) from which :func:`withdraw_unbonded_stake` pays it out, while it stays slashable
    (our registry with a non-zero ``stakeUnbondingPeriod``); ``None``: it was paid back at once (the public
    registry, or a period of zero)."""


@dataclasses.dataclass(frozen=True)
class UnbondingStake:
    """Stake an unregistered host has not withdrawn yet (our registry only)."""

    amount: int
    release_time: int
    """Chain time (seconds) from which it may be withdrawn."""


async def unregister_node(market: Marketplace, host: LocalAccount) -> Unregistered:
    """``unregisterNode``: leave every list; the stake is paid back at once or starts unbonding.

    Raises:
        ContractError: not registered.
    """
    receipt = await market.chain.transact(host, market.node_registry.functions.unregisterNode())
    events = market.node_registry.events
    released = events.NodeUnregistered().process_receipt(receipt, errors=DISCARD)
    unbonding = events.StakeUnbonding().process_receipt(receipt, errors=DISCARD)
    return Unregistered(int(released[0]["args"]["returnedAmount"]) if released else 0,
                        int(unbonding[0]["args"]["releaseTime"]) if unbonding else None)


async def unbonding_stake(market: Marketplace, address: str) -> UnbondingStake:
    """The stake ``address`` unregistered and has not withdrawn (amount 0: none)."""
    call = market.node_registry.functions.unbondingStake(Web3.to_checksum_address(address))
    amount, release_time = await market.chain.call(call)
    return UnbondingStake(int(amount), int(release_time))


async def withdraw_unbonded_stake(market: Marketplace, host: LocalAccount) -> int:
    """``withdrawUnbondedStake``: pay out the host's stake once its unbonding period is over; returns the amount.

    Raises:
        ContractError: "Nothing unbonding", "Stake still unbonding".
    """
    receipt = await market.chain.transact(host, market.node_registry.functions.withdrawUnbondedStake())
    events = market.node_registry.events.UnbondedStakeWithdrawn().process_receipt(receipt, errors=DISCARD)
    return int(events[0]["args"]["amount"]) if events else 0


async def set_stake_unbonding_period(market: Marketplace, owner: LocalAccount, seconds: int) -> None:
    """How long an unregistered host's stake stays slashable (0: paid back at once). ``owner`` owns the registry.

    Raises:
        ContractError: "Only owner".
    """
    await market.chain.transact(owner, market.node_registry.functions.setStakeUnbondingPeriod(seconds))


# --- reads -------------------------------------------------------------------------------------------------


async def active_nodes(market: Marketplace) -> list[str]:
    """Addresses of every registered, active host."""
    return [str(a) for a in await market.chain.call(market.node_registry.functions.getAllActiveNodes())]


async def nodes_for_model(market: Marketplace, model: bytes) -> list[str]:
    """Addresses of the active hosts that serve ``model`` (a 32-byte registry id)."""
    call = market.node_registry.functions.getNodesForModel(model)
    return [str(a) for a in await market.chain.call(call)]


async def host_record(market: Marketplace, address: str) -> HostRecord:
    """The host's record (``getNodeFullInfo``); an unregistered address has ``stake == 0``."""
    address = Web3.to_checksum_address(address)
    return HostRecord.from_full_info(
        address, await market.chain.call(market.node_registry.functions.getNodeFullInfo(address)))


async def is_active_node(market: Marketplace, address: str) -> bool:
    return bool(await market.chain.call(market.node_registry.functions.isActiveNode(
        Web3.to_checksum_address(address))))


async def node_pricing(market: Marketplace, address: str, token: str | None = None) -> int:
    """The host's default minimum price per token (×1000) for payments in ``token``."""
    call = market.node_registry.functions.getNodePricing(Web3.to_checksum_address(address), _token_address(token))
    return int(await market.chain.call(call))


async def model_pricing(market: Marketplace, address: str, model: bytes, token: str | None = None) -> int:
    """The host's minimum price per token (×1000) for sessions on ``model``: its per-model price where it set
    one, else its default."""
    call = market.node_registry.functions.getModelPricing(Web3.to_checksum_address(address), model,
                                                          _token_address(token))
    return int(await market.chain.call(call))


async def registry_events(market: Marketplace, from_block: int = 0) -> list[RegistryEvent]:
    """Registrations, updates (prices, per-model prices, stake and slashes included) and exits since
    ``from_block``, in block order. Events a deployment does not emit are simply absent."""
    events = market.node_registry.events
    kinds = (events.NodeRegistered, events.NodeUnregistered, events.MetadataUpdated, events.ApiUrlUpdated,
             events.ModelsUpdated, events.PricingUpdated, events.ModelPricingUpdated, events.NodeActiveChanged,
             events.StakeAdded, events.StakeSlashed)

    def fetch() -> list[RegistryEvent]:
        found = []
        for kind in kinds:
            for log in kind().get_logs(from_block=from_block):
                args = dict(log["args"])
                found.append(RegistryEvent(str(log["event"]), str(args["operator"]), int(log["blockNumber"]), args))
        return sorted(found, key=lambda e: e.block_number)

    return await market.chain.run(fetch)


# --- earnings ----------------------------------------------------------------------------------------------


async def earnings_balance(market: Marketplace, host_address: str, token: str | None = None) -> int:
    """What ``host_address`` may withdraw from HostEarnings in ``token``."""
    call = market.host_earnings.functions.getBalance(host_address, token or ZERO_ADDRESS)
    return int(await market.chain.call(call))


async def withdraw_all_earnings(market: Marketplace, host: LocalAccount, token: str | None = None) -> None:
    """``withdrawAll`` of the host's earnings in ``token``.

    Raises:
        ContractError: nothing to withdraw.
    """
    await market.chain.transact(host, market.host_earnings.functions.withdrawAll(token or ZERO_ADDRESS))
