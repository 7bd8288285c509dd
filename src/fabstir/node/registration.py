"""Host registration on the NodeRegistry, and the host's earnings.

Used by ``fabstir node register / unregister / withdraw-stake / earnings / withdraw`` and by the demo; the contract calls are
in :mod:`fabstir.chain.registry`.
"""

from __future__ import annotations

import dataclasses

from eth_account.signers.local import LocalAccount

from fabstir.chain import registry
from fabstir.chain.contracts import Marketplace
from fabstir.chain.registry import register_node as register_host
from fabstir.chain.registry import unregister_node as unregister_host
from fabstir.chain.registry import withdraw_unbonded_stake

__all__ = ["Earnings", "earnings", "register_host", "unregister_host", "withdraw_earnings", "withdraw_unbonded_stake"]


@dataclasses.dataclass(frozen=True)
class Earnings:
    """What the host may withdraw, per payment token (``None`` is ETH)."""

    native: int
    stable: int


async def earnings(market: Marketplace, host_address: str) -> Earnings:
    native = await registry.earnings_balance(market, host_address)
    stable = await registry.earnings_balance(market, host_address, market.stable_token.address)
    return Earnings(native=native, stable=stable)


async def withdraw_earnings(market: Marketplace, host: LocalAccount, token: str | None = None) -> int:
    """``withdrawAll`` for ETH (``token=None``) or an ERC20; returns the amount withdrawn."""
    before = await registry.earnings_balance(market, host.address, token)
    if before:
        await registry.withdraw_all_earnings(market, host, token)
    return before
