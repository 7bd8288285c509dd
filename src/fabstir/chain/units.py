"""Exact money arithmetic: base units as ``int``, never floats.

Prices use the marketplace's ×1000 precision: a price is payment units per
token times 1000, so ``cost = tokens * price // 1000``.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal, InvalidOperation

from fabstir.errors import ConfigError

__all__ = [
    "ETH_DECIMALS",
    "PRICE_PRECISION",
    "Settlement",
    "format_units",
    "max_tokens_for_deposit",
    "parse_units",
    "settle",
    "token_cost",
]

PRICE_PRECISION = 1000
ETH_DECIMALS = 18


def parse_units(amount: str | int | Decimal, decimals: int) -> int:
    """``"1.5"`` with 18 decimals becomes ``1500000000000000000``; more decimals than allowed is an error.

    Raises:
        ConfigError: not a number, negative, finer than one base unit, or beyond 256 bits.
    """
    try:
        value = Decimal(str(amount).strip().replace("_", ""))
    except InvalidOperation:
        raise ConfigError(f"not an amount: {amount!r}") from None
    if not value.is_finite() or value < 0 or value.adjusted() + decimals > 78:
        raise ConfigError(f"{amount!r} is not a non-negative amount that fits in 256 bits")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ConfigError(f"{amount!r} has more than {decimals} decimals")
    result = int(scaled)
    if result >= 1 << 256:
        raise ConfigError(f"{amount!r} does not fit in 256 bits")
    return result


def format_units(amount: int, decimals: int, symbol: str = "") -> str:
    """``1500000000000000000`` with 18 decimals becomes ``"1.5"`` (plus `` symbol`` if given)."""
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**decimals)
    text = f"{sign}{whole}"
    if fraction:
        text += "." + str(fraction).rjust(decimals, "0").rstrip("0")
    return f"{text} {symbol}" if symbol else text


def token_cost(tokens: int, price_per_token: int) -> int:
    """What ``tokens`` cost at ``price_per_token`` (×1000 precision), rounded down like the contract."""
    return tokens * price_per_token // PRICE_PRECISION


def max_tokens_for_deposit(deposit: int, price_per_token: int) -> int:
    """The most tokens a deposit pays for."""
    return deposit * PRICE_PRECISION // price_per_token


@dataclasses.dataclass(frozen=True, slots=True)
class Settlement:
    """How a session's deposit is split when it ends."""

    host_earnings: int
    treasury_fee: int
    refund: int

    @property
    def host_payment(self) -> int:
        """What the tokens cost (host earnings plus the treasury's fee)."""
        return self.host_earnings + self.treasury_fee


def settle(tokens_used: int, price_per_token: int, fee_basis_points: int, deposit: int) -> Settlement:
    """The contract's settlement, in Python: the fee comes out of the host's payment."""
    payment = token_cost(tokens_used, price_per_token)
    fee = payment * fee_basis_points // 10_000
    return Settlement(host_earnings=payment - fee, treasury_fee=fee, refund=deposit - payment)
