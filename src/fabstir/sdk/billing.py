"""Token tracking and billing (plan 11.4). Reach it as ``sdk.billing``.

The host's tokenizer is the source of truth: every answer's ``usage`` (counted
by the node) is recorded per session, priced at the session's on-chain price
(×1000 precision), and compared with what the deposit covers. Costs are exact
integers in base units.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fabstir.chain.records import SessionJob
from fabstir.chain.units import max_tokens_for_deposit, token_cost
from fabstir.errors import SessionError
from fabstir.sdk.types import InferenceResult

__all__ = ["BillingEvent", "BillingTracker", "UsageStats", "CHARS_PER_TOKEN"]

CHARS_PER_TOKEN = 4
"""Rough characters per token for :meth:`BillingTracker.estimate_tokens` (English text, BPE tokenizers)."""

BillingCallback = Callable[["BillingEvent"], "None | Awaitable[None]"]


@dataclasses.dataclass(frozen=True)
class BillingEvent:
    """Emitted after each answer on a tracked session."""

    session_id: str
    prompt_tokens: int
    completion_tokens: int
    cost: int
    total_tokens: int
    total_cost: int
    remaining_tokens: int | None


@dataclasses.dataclass(frozen=True)
class UsageStats:
    """Totals and averages for one session."""

    prompts: int
    prompt_tokens: int
    completion_tokens: int
    average_completion_tokens: float
    cost: int
    price_per_token: int | None
    deposit: int | None
    remaining_tokens: int | None


@dataclasses.dataclass
class _Ledger:
    price_per_token: int | None = None
    deposit: int | None = None
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BillingTracker:
    """Per-session token counts and costs, and billing events."""

    def __init__(self) -> None:
        self._ledgers: dict[str, _Ledger] = {}
        self._callbacks: list[BillingCallback] = []

    def track_session(self, job: SessionJob) -> None:
        """Price a session with its job's on-chain terms (done by ``sdk.sessions.create_session``)."""
        ledger = self._ledgers.setdefault(str(job.job_id), _Ledger())
        ledger.price_per_token, ledger.deposit = job.price_per_token, job.deposit

    def on_billing(self, callback: BillingCallback) -> None:
        """Call ``callback`` with a :class:`BillingEvent` after every answer."""
        self._callbacks.append(callback)

    async def record(self, result: InferenceResult, prompt_tokens: int | None = None) -> BillingEvent:
        """Account for one answer (called by the inference manager)."""
        ledger = self._ledgers.setdefault(result.session_id, _Ledger())
        ledger.prompts += 1
        ledger.prompt_tokens += prompt_tokens if prompt_tokens is not None else (
            result.usage.prompt_tokens if result.usage else 0)
        ledger.completion_tokens += result.completion_tokens
        event = BillingEvent(
            session_id=result.session_id, prompt_tokens=result.usage.prompt_tokens if result.usage else 0,
            completion_tokens=result.completion_tokens, cost=self._cost(ledger, result.completion_tokens),
            total_tokens=ledger.completion_tokens, total_cost=self._cost(ledger, ledger.completion_tokens),
            remaining_tokens=self._remaining(ledger))
        for callback in self._callbacks:
            outcome: Any = callback(event)
            if inspect.isawaitable(outcome):
                await outcome
        return event

    def _ledger(self, session_id: str | int) -> _Ledger:
        try:
            return self._ledgers[str(session_id)]
        except KeyError:
            raise SessionError(f"no billing record for session {session_id}", code="SESSION_NOT_FOUND") from None

    @staticmethod
    def _cost(ledger: _Ledger, tokens: int) -> int:
        return 0 if ledger.price_per_token is None else token_cost(tokens, ledger.price_per_token)

    @staticmethod
    def _remaining(ledger: _Ledger) -> int | None:
        if ledger.price_per_token is None or ledger.deposit is None:
            return None
        return max(0, max_tokens_for_deposit(ledger.deposit, ledger.price_per_token) - ledger.completion_tokens)

    def get_token_usage(self, session_id: str | int) -> int:
        """Completion tokens billed to the session so far (the host's count)."""
        return self._ledger(session_id).completion_tokens

    @staticmethod
    def estimate_tokens(prompt: str) -> int:
        """A quick estimate of the tokens ``prompt`` takes (about 4 characters per token; the host's
        tokenizer is what counts)."""
        return max(1, -(-len(prompt) // CHARS_PER_TOKEN)) if prompt else 0

    def get_session_cost(self, session_id: str | int) -> int:
        """Cost so far in base units of the session's payment token."""
        ledger = self._ledger(session_id)
        return self._cost(ledger, ledger.completion_tokens)

    def get_remaining_tokens(self, session_id: str | int) -> int | None:
        """Tokens the deposit still covers (``None`` for an untracked, unpaid session)."""
        return self._remaining(self._ledger(session_id))

    def get_usage_stats(self, session_id: str | int) -> UsageStats:
        ledger = self._ledger(session_id)
        return UsageStats(
            prompts=ledger.prompts, prompt_tokens=ledger.prompt_tokens, completion_tokens=ledger.completion_tokens,
            average_completion_tokens=ledger.completion_tokens / ledger.prompts if ledger.prompts else 0.0,
            cost=self._cost(ledger, ledger.completion_tokens), price_per_token=ledger.price_per_token,
            deposit=ledger.deposit, remaining_tokens=self._remaining(ledger))
