"""Token tracking and billing (plan 11.4). Reach it as ``sdk.billing``.

The host's tokenizer is the source of truth: every answer's ``usage`` (counted
by the node) is recorded per session, priced at the session's on-chain price
(×1000 precision), and compared with what the deposit covers. Costs are exact
integers in base units.

On our contracts billed == served, to the token (at most what the deposit covers).
On the public contracts served is not billed: the marketplace charges at least the
session's minimum (its ``proof_interval``: the first checkpoint claims that many) and
at most what the deposit covers, and a host may bill less, never more (a tail under
the 100-token smallest claim that follows an earlier checkpoint cannot be claimed).
:func:`billable_tokens` (from :mod:`fabstir.chain.money`, whose rules the node's
billing follows too) applies the session's rules, and ``get_session_cost`` is what
the chain will charge for the tokens served so far.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fabstir.chain.money import PUBLIC_RULES, ClaimRules, billable_tokens, max_tokens_for_deposit, token_cost
from fabstir.chain.records import SessionJob
from fabstir.chain.usage import UsageTranscript, sign_usage
from fabstir.errors import SessionError
from fabstir.protocol import UsageAcknowledgement
from fabstir.sdk.types import InferenceResult

__all__ = ["BillingEvent", "BillingTracker", "CHARS_PER_TOKEN", "SessionCost", "UsageStats", "billable_tokens",
           "usage_acknowledgement"]

CHARS_PER_TOKEN = 4
"""Rough characters per token for :meth:`BillingTracker.estimate_tokens` (English text, BPE tokenizers)."""

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

BillingCallback = Callable[["BillingEvent"], "None | Awaitable[None]"]


@dataclasses.dataclass(frozen=True)
class SessionCost:
    """Tokens served and what the chain charges for them, with the reason when they differ."""

    served_tokens: int
    billed_tokens: int
    served_cost: int
    cost: int
    """What the chain charges (base units)."""
    minimum_charge: int
    """The session's smallest charge in tokens (its ``proof_interval`` on the public contracts; 0 on ours,
    which bill exactly what was served, and when unknown)."""

    @property
    def explanation(self) -> str | None:
        """Why billed differs from served (``None`` when they match)."""
        if self.billed_tokens > self.served_tokens:
            return f"minimum charge of {self.minimum_charge} tokens per session"
        if self.billed_tokens < self.served_tokens:
            return "the deposit covers no more"
        return None


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
    billed_tokens: int = 0
    """What the chain charges for the completion tokens (see :func:`billable_tokens`)."""
    billed_cost: int = 0


@dataclasses.dataclass
class _Ledger:
    price_per_token: int | None = None
    deposit: int | None = None
    minimum_charge: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BillingTracker:
    """Per-session token counts and costs, and billing events."""

    def __init__(self) -> None:
        self._ledgers: dict[str, _Ledger] = {}
        self._callbacks: list[BillingCallback] = []

    def track_session(self, job: SessionJob, rules: ClaimRules = PUBLIC_RULES) -> None:
        """Price a session with its job's on-chain terms and its marketplace's claim rules (done by
        ``sdk.sessions.create_session``, which detects the rules)."""
        ledger = self._ledgers.setdefault(str(job.job_id), _Ledger())
        ledger.price_per_token, ledger.deposit = job.price_per_token, job.deposit
        ledger.minimum_charge = rules.session_minimum(job.proof_interval)

    def on_billing(self, callback: BillingCallback) -> None:
        """Call ``callback`` with a :class:`BillingEvent` after every answer."""
        self._callbacks.append(callback)

    async def record(self, result: InferenceResult, prompt_tokens: int | None = None) -> BillingEvent:
        """Account for one answer (called by the inference manager)."""
        ledger = self._ledgers.setdefault(result.session_id, _Ledger())
        ledger.prompts += 1
        ledger.prompt_tokens += prompt_tokens if prompt_tokens is not None else (
            result.usage.prompt_tokens if result.usage else 0)
        streamed = result.tokens_used  # what the host streamed and bills (a stop sequence it never showed is not)
        ledger.completion_tokens += streamed
        event = BillingEvent(
            session_id=result.session_id, prompt_tokens=result.usage.prompt_tokens if result.usage else 0,
            completion_tokens=streamed, cost=self._cost(ledger, streamed),
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
    def _max_tokens(ledger: _Ledger) -> int | None:
        if ledger.price_per_token is None or ledger.deposit is None:
            return None
        return max_tokens_for_deposit(ledger.deposit, ledger.price_per_token)

    def _remaining(self, ledger: _Ledger) -> int | None:
        covered = self._max_tokens(ledger)
        return None if covered is None else max(0, covered - ledger.completion_tokens)

    def _billed(self, ledger: _Ledger) -> int:
        return billable_tokens(ledger.completion_tokens, ledger.minimum_charge, self._max_tokens(ledger))

    def get_token_usage(self, session_id: str | int) -> int:
        """Completion tokens served on the session so far (the host's count)."""
        return self._ledger(session_id).completion_tokens

    def get_billed_tokens(self, session_id: str | int) -> int:
        """Tokens the chain charges for what was served so far (minimum charge and deposit applied)."""
        return self._billed(self._ledger(session_id))

    @staticmethod
    def estimate_tokens(prompt: str) -> int:
        """A quick estimate of the tokens ``prompt`` takes (about 4 characters per token; the host's
        tokenizer is what counts)."""
        return max(1, -(-len(prompt) // CHARS_PER_TOKEN)) if prompt else 0

    def get_session_cost(self, session_id: str | int) -> int:
        """What the chain charges for the tokens served so far, in base units of the session's payment token
        (at least the session's minimum charge once anything was served; see :meth:`get_cost_breakdown`)."""
        ledger = self._ledger(session_id)
        return self._cost(ledger, self._billed(ledger))

    def get_cost_breakdown(self, session_id: str | int) -> SessionCost:
        """Tokens served and billed, their costs, and why they differ."""
        ledger = self._ledger(session_id)
        billed = self._billed(ledger)
        return SessionCost(served_tokens=ledger.completion_tokens, billed_tokens=billed,
                           served_cost=self._cost(ledger, ledger.completion_tokens),
                           cost=self._cost(ledger, billed), minimum_charge=ledger.minimum_charge)

    def get_remaining_tokens(self, session_id: str | int) -> int | None:
        """Tokens the deposit still covers (``None`` for an untracked, unpaid session)."""
        return self._remaining(self._ledger(session_id))

    def get_usage_stats(self, session_id: str | int) -> UsageStats:
        ledger = self._ledger(session_id)
        return UsageStats(
            prompts=ledger.prompts, prompt_tokens=ledger.prompt_tokens, completion_tokens=ledger.completion_tokens,
            average_completion_tokens=ledger.completion_tokens / ledger.prompts if ledger.prompts else 0.0,
            cost=self._cost(ledger, ledger.completion_tokens), price_per_token=ledger.price_per_token,
            deposit=ledger.deposit, remaining_tokens=self._remaining(ledger), billed_tokens=self._billed(ledger),
            billed_cost=self._cost(ledger, self._billed(ledger)))


def usage_acknowledgement(sdk: FabstirSDK, job_id: int, transcript: UsageTranscript,
                          session_id: str | None = None) -> UsageAcknowledgement | None:
    """The depositor's countersignature of ``transcript`` on ``job_id`` as a ``usage_ack`` message, signed with
    the SDK's account for its marketplace (``None`` without an account, a chain or a deployment)."""
    if sdk.account is None or sdk.chain is None or sdk.deployment is None:
        return None
    ack = sign_usage(sdk.account, sdk.chain.chain_id, sdk.deployment.marketplace, job_id, transcript.tokens,
                     transcript.transcript_hash)
    return UsageAcknowledgement(job_id=job_id, tokens=ack.tokens, transcript_hash="0x" + ack.transcript_hash.hex(),
                                signature="0x" + ack.signature.hex(), session_id=session_id)
