"""The marketplace's money rules in exact integers: units, prices, claims and settlement.

Pure functions, no I/O: amounts are base units (``int``), never floats. The SDK's and the node's
billing both use these, and they follow the JobMarketplace contract:

- A price is payment units per token times :data:`PRICE_PRECISION` (1000): ``cost = tokens * price // 1000``,
  rounded down.
- A deposit pays for at most ``deposit * 1000 // price`` tokens.
- What a checkpoint may claim depends on the marketplace (:class:`ClaimRules`):

  - the public contracts (:data:`PUBLIC_RULES`): at least :data:`MIN_PROVEN_TOKENS`, and the first one at least
    the session's minimum charge (its ``proofInterval``), so served is not billed: the chain charges nothing for
    nothing, else at least the minimum charge, and a tail under 100 tokens after a checkpoint is never billed;
  - ours (:data:`EXACT_RULES`, detected by ``marketplaceFeatures``): any positive claim, so billed == served,
    to the token, the session's last remainder included.

  Either way a claim never goes beyond what the deposit covers.
- Settlement: the treasury's fee (basis points) comes out of the host's payment; the rest of the deposit is
  refunded.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal, InvalidOperation

from fabstir.errors import ConfigError

__all__ = [
    "BASIS_POINTS",
    "ClaimRules",
    "ETH_DECIMALS",
    "EXACT_RULES",
    "MIN_PROVEN_TOKENS",
    "PRICE_PRECISION",
    "PUBLIC_RULES",
    "Settlement",
    "billable_tokens",
    "first_claim_minimum",
    "format_units",
    "max_tokens_for_deposit",
    "parse_units",
    "settle",
    "smallest_claim",
    "token_cost",
]

PRICE_PRECISION = 1000
"""Prices are payment units per token times this."""
BASIS_POINTS = 10_000
"""The treasury's fee is ``fee_basis_points / BASIS_POINTS`` of the host's payment."""
MIN_PROVEN_TOKENS = 100
"""The marketplace's smallest checkpoint (and smallest ``proofInterval``)."""
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
class ClaimRules:
    """What one marketplace lets a checkpoint claim, and therefore what a session is billed."""

    min_claim: int = MIN_PROVEN_TOKENS
    """The smallest claim (1 where any remainder may be claimed)."""
    minimum_charge: bool = True
    """The first claim is padded to the session's ``proofInterval`` (the public node's minimum charge)."""
    countersigned: bool = False
    """Claims countersigned by the depositor are accepted at once, others only after a challenge window in which
    the depositor may answer with a lower count (:mod:`fabstir.chain.usage`)."""

    @property
    def exact(self) -> bool:
        """Billed == served: no minimum charge, and any remainder can be claimed."""
        return self.min_claim <= 1 and not self.minimum_charge

    def session_minimum(self, proof_interval: int) -> int:
        """The session's minimum charge in tokens under these rules (0: none)."""
        return proof_interval if self.minimum_charge else 0


PUBLIC_RULES = ClaimRules()
"""The public Fabstir contracts: claims of at least 100 tokens, the first padded to ``proofInterval``."""
EXACT_RULES = ClaimRules(min_claim=1, minimum_charge=False, countersigned=True)
"""Ours: any positive claim, no minimum charge (billed == served), and depositor-countersigned claims."""


def billable_tokens(served: int, minimum_charge: int = 0, max_tokens: int | None = None) -> int:
    """Tokens the chain charges for ``served``: none for none, else at least ``minimum_charge``, at most
    ``max_tokens`` (what the deposit covers)."""
    if served <= 0:
        return 0
    billed = max(served, minimum_charge)
    return billed if max_tokens is None else min(billed, max_tokens)


def first_claim_minimum(proof_interval: int, max_tokens: int, min_claim: int = MIN_PROVEN_TOKENS) -> int:
    """The fewest tokens a session's first checkpoint claims: its ``proof_interval`` (the minimum charge), at
    least ``min_claim``, at most what the deposit covers (``max_tokens``)."""
    return min(max(proof_interval, min_claim), max_tokens)


def smallest_claim(submitted: int, first_minimum: int, min_claim: int = MIN_PROVEN_TOKENS) -> int:
    """The fewest tokens the next checkpoint may claim after ``submitted`` were claimed: ``first_minimum``
    (see :func:`first_claim_minimum`) for the first, ``min_claim`` after it."""
    return first_minimum if submitted == 0 else min_claim


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
    fee = payment * fee_basis_points // BASIS_POINTS
    return Settlement(host_earnings=payment - fee, treasury_fee=fee, refund=deposit - payment)
