"""Host registration on the NodeRegistry, and the host's earnings.

Used by ``fabstir node register / unregister / earnings / withdraw`` and by the demo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD

from fabstir.chain.contracts import Marketplace
from fabstir.chain.records import ZERO_ADDRESS

__all__ = ["Earnings", "earnings", "register_host", "unregister_host", "withdraw_earnings"]


async def register_host(
    market: Marketplace,
    host: LocalAccount,
    *,
    metadata: str,
    api_url: str,
    models: Sequence[bytes],
    min_price_native: int,
    min_price_stable: int,
) -> int:
    """Approve and stake the registry's minimum stake, then ``registerNode``; returns the stake.

    Raises:
        ContractError: e.g. already registered, unapproved model, price out of range, too little FAB.
    """
    chain, registry = market.chain, market.node_registry
    stake = int(await chain.call(registry.functions.MIN_STAKE()))
    allowance = int(await chain.call(market.stake_token.functions.allowance(host.address, registry.address)))
    if allowance < stake:
        await chain.transact(host, market.stake_token.functions.approve(registry.address, stake))
    await chain.transact(host, registry.functions.registerNode(metadata, api_url, list(models), min_price_native,
                                                               min_price_stable))
    return stake


async def unregister_host(market: Marketplace, host: LocalAccount) -> int:
    """``unregisterNode``; returns the stake given back."""
    receipt = await market.chain.transact(host, market.node_registry.functions.unregisterNode())
    events = market.node_registry.events.NodeUnregistered().process_receipt(receipt, errors=DISCARD)
    return int(events[0]["args"]["returnedAmount"]) if events else 0


@dataclasses.dataclass(frozen=True)
class Earnings:
    """What the host may withdraw, per payment token (``None`` is ETH)."""

    native: int
    stable: int


async def earnings(market: Marketplace, host_address: str) -> Earnings:
    contract, chain = market.host_earnings.functions, market.chain
    native = int(await chain.call(contract.getBalance(host_address, ZERO_ADDRESS)))
    stable = int(await chain.call(contract.getBalance(host_address, market.stable_token.address)))
    return Earnings(native=native, stable=stable)


async def withdraw_earnings(market: Marketplace, host: LocalAccount, token: str | None = None) -> int:
    """``withdrawAll`` for ETH (``token=None``) or an ERC20; returns the amount withdrawn."""
    before = await market.chain.call(market.host_earnings.functions.getBalance(host.address, token or ZERO_ADDRESS))
    if before:
        await market.chain.transact(host, market.host_earnings.functions.withdrawAll(token or ZERO_ADDRESS))
    return int(before)
