"""``SessionManager``: open, inspect and settle paid session jobs on chain. Reach it as ``sdk.sessions``."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from web3 import Web3

from fabstir.chain.contracts import Marketplace
from fabstir.chain.hosts import resolve_model_id
from fabstir.chain.jobs import (
    SessionEvent,
    claim_rules,
    complete_session_job,
    create_session_job,
    depositor_job_ids,
    dispute_usage,
    fee_basis_points,
    get_session_job,
    session_events,
    trigger_session_timeout,
    usage_record,
)
from fabstir.chain.money import ClaimRules, Settlement, settle
from fabstir.chain.records import SessionJob
from fabstir.discovery.selection import Requirements, Strategy, Weights
from fabstir.errors import SessionError, StorageError
from fabstir.sdk.spending import SessionSummary, Spending, summarize_sessions

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK
    from fabstir.sdk.opening import OpenedSession

__all__ = ["SessionEvent", "SessionManager", "resolve_model_id"]

log = logging.getLogger("fabstir.sdk.storage")


class SessionManager:
    """Create, read, complete and time out session jobs."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk
        self._rules: ClaimRules | None = None

    @property
    def _market(self) -> Marketplace:
        return self._sdk.marketplace

    async def create_session(
        self,
        host: str,
        model: bytes | str | None,
        deposit: int,
        price_per_token: int | None = None,
        max_duration: int = 3600,
        proof_interval: int = 100,
        token: str | None = None,
    ) -> SessionJob:
        """Open a session job with ``deposit`` held in escrow; returns it as stored on chain.

        ``token=None`` pays in ETH; an ERC20 address pays in that token (the approval is sent
        first when the allowance is short). Amounts are integers in base units; the price uses
        the ×1000 precision. ``price_per_token=None`` offers the host's minimum for ``model``
        (its per-model price where it set one, else its default: see
        :meth:`~fabstir.sdk.registry.NodeRegistryClient.get_model_pricing`).

        Raises:
            ContractError: the marketplace refused (e.g. ``reason == "Price below host minimum for model"``).
        """
        market, account = self._market, self._sdk.require_account()
        host = Web3.to_checksum_address(host)
        model_key = resolve_model_id(model)
        if price_per_token is None:
            price_per_token = await self._sdk.registry.get_model_pricing(host, model_key, token)
        job_id = await create_session_job(market, account, host, model_key, deposit=deposit,
                                          price_per_token=price_per_token, max_duration=max_duration,
                                          proof_interval=proof_interval, token=token)
        job = await self.get_session(job_id)
        self._sdk.billing.track_session(job, await self.claim_rules())
        return job

    async def claim_rules(self) -> ClaimRules:
        """What the marketplace bills (exact on ours, the public minimums elsewhere); detected once."""
        if self._rules is None:
            self._rules = await claim_rules(self._market)
        return self._rules

    async def open_session(self, model: bytes | str, deposit: int, *, strategy: Strategy | str = "composite",
                           host: str | None = None, requirements: Requirements | None = None,
                           weights: Weights | None = None, token: str | None = None, max_duration: int = 3600,
                           proof_interval: int = 100, probe: bool = True) -> OpenedSession:
        """Pick a host through ``sdk.discovery`` by ``strategy`` (``cheapest``, ``fastest``, ``reputable``,
        ``composite``, ``round_robin``) or take ``host``, and open a session job with it at its on-chain price.

        Returns an :class:`~fabstir.sdk.opening.OpenedSession`: ``await opened.connect()``, then
        ``await opened.send_prompt(...)``, then ``await opened.close()``.

        Raises:
            SelectionError: no registered host serves ``model`` within ``requirements`` (NO_HOST_AVAILABLE).
            ContractError: the marketplace refused the job.
        """
        from fabstir.sdk.opening import open_session

        return await open_session(self._sdk, model, deposit, strategy=strategy, host=host, requirements=requirements,
                                  weights=weights, token=token, max_duration=max_duration,
                                  proof_interval=proof_interval, probe=probe)

    async def get_session(self, job_id: int) -> SessionJob:
        """The session job as stored on chain.

        Raises:
            SessionError: no such job.
        """
        job = await get_session_job(self._market, job_id)
        if not job.exists:
            raise SessionError(f"session job {job_id} does not exist", code="JOB_NOT_FOUND")
        return job

    async def complete_session(self, job_id: int, conversation_cid: str | None = None) -> SessionJob:
        """Settle the session now (the depositor may do so at any time; the host after the dispute window).

        ``conversation_cid=None``: with ``FabstirSDK(storage=...)``, the content address of the stored
        conversation of session ``str(job_id)`` (:meth:`InferenceManager.conversation_cid`; see
        ``docs/storage.md``), else empty. A storage failure is logged and completes with an empty one.
        """
        if conversation_cid is None:
            conversation_cid = await self._conversation_cid(job_id)
        if (await self.claim_rules()).countersigned and self._received(job_id) is not None:
            await self.dispute_overclaim(job_id)  # settling accepts every claim left undisputed
        await complete_session_job(self._market, self._sdk.require_account(), job_id, conversation_cid)
        return await self.get_session(job_id)

    async def dispute_overclaim(self, job_id: int, tokens: int | None = None,
                                transcript_hash: bytes | None = None) -> bool:
        """Answer the host's provisional (not countersigned) claims with what this client received, if they claim
        more (our contracts only; within the dispute window after the host's last checkpoint).

        ``tokens=None``: the tokens session ``str(job_id)`` of this SDK received on the job, and the transcript
        hash of its answers that ended (what it countersigned as they streamed). Returns whether a dispute was
        sent (``False``: nothing claimed beyond what was received or countersigned).

        Raises:
            SessionError: ``tokens`` not given and this SDK has no session on ``job_id`` (SESSION_NOT_FOUND).
            ContractError: the marketplace refused ("No claim in dispute window": the window is over).
        """
        if tokens is None:
            received = self._received(job_id)
            if received is None:
                raise SessionError(f"no session of this SDK streamed job {job_id}", code="SESSION_NOT_FOUND")
            tokens, transcript_hash = received
        job = await self.get_session(job_id)
        record = await usage_record(self._market, job_id)
        tokens = max(tokens, record.acknowledged)  # what the client countersigned is owed in any case
        if job.tokens_used <= tokens:
            return False
        await dispute_usage(self._market, self._sdk.require_account(), job_id, tokens,
                            transcript_hash if transcript_hash is not None else record.transcript_hash)
        return True

    def _received(self, job_id: int) -> tuple[int, bytes] | None:
        """(tokens received, transcript hash of the answers that ended) on ``job_id``: from this SDK's live session,
        else from its usage log (a session of an earlier process, or one that moved on to another job)."""
        if "inference" in self._sdk.__dict__:
            with contextlib.suppress(SessionError):
                session = self._sdk.inference.session(str(job_id))
                if session.job_id == job_id:
                    return session.job_tokens, session.usage.transcript_hash
        usage_log, chain, deployment = self._sdk.usage_log, self._sdk.chain, self._sdk.deployment
        if usage_log is None or chain is None or deployment is None:
            return None
        stored = usage_log.get(chain.chain_id, deployment.marketplace, job_id)
        return None if stored is None else (stored.received, stored.transcript_hash)

    async def _conversation_cid(self, job_id: int) -> str:
        if self._sdk.recorder is None:
            return ""
        try:
            return await self._sdk.inference.conversation_cid(str(job_id))
        except StorageError as exc:
            log.warning("no conversationCID for job %s (%s): %s", job_id, exc.code, exc.message)
            return ""

    async def trigger_timeout(self, job_id: int) -> SessionJob:
        """Settle an expired or abandoned session (anyone may call it once it timed out)."""
        await trigger_session_timeout(self._market, self._sdk.require_account(), job_id)
        return await self.get_session(job_id)

    async def list_sessions(self, depositor: str | None = None, *, from_block: int = 0) -> list[SessionSummary]:
        """The session jobs ``depositor`` (default: this SDK's account) opened, oldest first: status, host,
        model, tokens, cost and refund as the chain has them now."""
        who = depositor or self._sdk.require_account().address
        ids = await depositor_job_ids(self._market, Web3.to_checksum_address(who), from_block)
        return [SessionSummary.of(await self.get_session(job_id)) for job_id in ids]

    async def spend(self, depositor: str | None = None, *, from_block: int = 0) -> Spending:
        """What ``depositor``'s sessions cost, in total and per day, host and model (per payment token)."""
        return summarize_sessions(await self.list_sessions(depositor, from_block=from_block))

    async def get_session_events(self, job_id: int, from_block: int = 0) -> list[SessionEvent]:
        """Creation, checkpoints and settlement (``SessionCompleted`` or ``SessionTimedOut``) of ``job_id``,
        in chain order. The events have the public contracts' fields (and topics)."""
        return await session_events(self._market, job_id, from_block)

    async def expected_settlement(self, job_id: int) -> Settlement:
        """What completing the session now would pay: host earnings, treasury fee and refund."""
        job = await self.get_session(job_id)
        return settle(job.tokens_used, job.price_per_token, await fee_basis_points(self._market), job.deposit)
