"""Typed views of on-chain records: session jobs and registered hosts."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

from fabstir.chain.money import Settlement, max_tokens_for_deposit, settle, token_cost

__all__ = ["HostRecord", "JobStatus", "SessionJob", "ZERO_ADDRESS"]

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


class JobStatus(enum.IntEnum):
    ACTIVE = 0
    COMPLETED = 1
    TIMED_OUT = 2


@dataclasses.dataclass(frozen=True)
class SessionJob:
    """One session job as the marketplace stores it (amounts in base units)."""

    job_id: int
    depositor: str
    host: str
    payment_token: str | None
    """ERC20 address, or ``None`` for ETH."""
    deposit: int
    price_per_token: int
    """×1000 precision: ``cost = tokens * price // 1000``."""
    tokens_used: int
    max_duration: int
    start_time: int
    last_proof_time: int
    proof_interval: int
    status: JobStatus
    model_id: bytes | None
    last_proof_hash: bytes

    @classmethod
    def from_getter(cls, row: Sequence[Any], model: bytes) -> SessionJob:
        """Build from ``sessionJobs(id)`` (field order as on the public contract) and ``sessionModel(id)``."""
        token = str(row[3])
        return cls(
            job_id=int(row[0]), depositor=str(row[1]), host=str(row[2]),
            payment_token=None if int(token, 16) == 0 else token,
            deposit=int(row[4]), price_per_token=int(row[5]), tokens_used=int(row[6]), max_duration=int(row[7]),
            start_time=int(row[8]), last_proof_time=int(row[9]), proof_interval=int(row[10]),
            status=JobStatus(int(row[11])), model_id=None if not any(model) else bytes(model),
            last_proof_hash=bytes(row[15]),
        )

    @property
    def exists(self) -> bool:
        return int(self.depositor, 16) != 0

    @property
    def max_tokens(self) -> int:
        """The most tokens the deposit pays for."""
        return max_tokens_for_deposit(self.deposit, self.price_per_token)

    @property
    def remaining_tokens(self) -> int:
        return self.max_tokens - self.tokens_used

    @property
    def cost_so_far(self) -> int:
        return token_cost(self.tokens_used, self.price_per_token)

    def settlement(self, fee_basis_points: int) -> Settlement:
        """What completing now would pay out (see :func:`fabstir.chain.money.settle`)."""
        return settle(self.tokens_used, self.price_per_token, fee_basis_points, self.deposit)


@dataclasses.dataclass(frozen=True)
class HostRecord:
    """A registered host, from ``getNodeFullInfo``; ``metadata`` is validated separately."""

    address: str
    stake: int
    active: bool
    metadata_json: str
    api_url: str
    models: tuple[bytes, ...]
    min_price_native: int
    min_price_stable: int

    @classmethod
    def from_full_info(cls, address: str, row: Sequence[Any]) -> HostRecord:
        return cls(address=address, stake=int(row[1]), active=bool(row[2]), metadata_json=str(row[3]),
                   api_url=str(row[4]), models=tuple(bytes(m) for m in row[5]),
                   min_price_native=int(row[6]), min_price_stable=int(row[7]))

    def min_price(self, token: str | None) -> int:
        """The host's minimum price for payments in ``token`` (``None``: ETH)."""
        return self.min_price_native if token is None else self.min_price_stable
