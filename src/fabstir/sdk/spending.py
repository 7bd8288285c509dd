"""A depositor's sessions and spending, read from the chain: ``sdk.sessions.list_sessions()`` and ``spend()``.

Every figure is an integer in the payment token's base units: a session's cost is what the marketplace
charges for the tokens it counted (``tokens_used x price / 1000``, as settlement computes it), its refund the
rest of the deposit once it is settled. Totals are kept per payment token (ETH and an ERC-20 never add up).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import defaultdict
from collections.abc import Iterable

from fabstir.chain.money import token_cost
from fabstir.chain.records import JobStatus, SessionJob

__all__ = ["SessionSummary", "Spending", "summarize_sessions"]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session job of a depositor."""

    job_id: int
    host: str
    model: str | None
    """The on-chain model id (``0x`` + hex), ``None`` for a job without one."""
    status: str
    """``active``, ``completed`` or ``timed_out``."""
    payment_token: str | None
    """ERC-20 address, ``None`` for ETH."""
    deposit: int
    price_per_token: int
    tokens_used: int
    cost: int
    refund: int | None
    """The deposit minus the cost once settled; ``None`` while active."""
    started: int
    """Unix seconds."""

    @classmethod
    def of(cls, job: SessionJob) -> SessionSummary:
        cost = token_cost(job.tokens_used, job.price_per_token)
        settled = job.status is not JobStatus.ACTIVE
        return cls(job.job_id, job.host, "0x" + job.model_id.hex() if job.model_id else None,
                   job.status.name.lower(), job.payment_token, job.deposit, job.price_per_token, job.tokens_used,
                   cost, job.deposit - cost if settled else None, job.start_time)


@dataclasses.dataclass(frozen=True, slots=True)
class Spending:
    """Totals of a depositor's sessions, per payment token (``"ETH"`` or the ERC-20 address)."""

    total: dict[str, int]
    tokens: dict[str, int]
    """Tokens billed, per payment token."""
    by_day: dict[str, dict[str, int]]
    """``YYYY-MM-DD`` (UTC, the session's start) -> payment token -> cost."""
    by_host: dict[str, dict[str, int]]
    by_model: dict[str, dict[str, int]]
    sessions: int


def summarize_sessions(sessions: Iterable[SessionSummary]) -> Spending:
    """What ``sessions`` cost, in total and per day, host and model."""
    total: dict[str, int] = defaultdict(int)
    tokens: dict[str, int] = defaultdict(int)
    by_day: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_host: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_model: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    count = 0
    for session in sessions:
        count += 1
        unit = session.payment_token or "ETH"
        day = datetime.datetime.fromtimestamp(session.started, datetime.UTC).strftime("%Y-%m-%d")
        total[unit] += session.cost
        tokens[unit] += session.tokens_used
        by_day[day][unit] += session.cost
        by_host[session.host][unit] += session.cost
        by_model[session.model or "-"][unit] += session.cost

    def plain(table: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        return {key: dict(value) for key, value in sorted(table.items())}

    return Spending(dict(total), dict(tokens), plain(by_day), plain(by_host), plain(by_model), count)
