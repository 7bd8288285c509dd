"""``SessionManager``: open, inspect and settle paid session jobs on chain. Reach it as ``sdk.sessions``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from web3 import Web3
from web3.logs import DISCARD

from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.records import SessionJob
from fabstir.chain.units import settle
from fabstir.discovery.selection import Requirements, Strategy, Weights
from fabstir.errors import ConfigError, ContractError, SessionError

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK
    from fabstir.sdk.opening import OpenedSession

__all__ = ["SessionEvent", "SessionManager", "resolve_model_id"]


def resolve_model_id(model: bytes | str | None) -> bytes | None:
    """A model given as a 32-byte id, ``0x…`` hex, or ``"repo/file"`` becomes its registry id."""
    if model is None or isinstance(model, bytes):
        if model is not None and len(model) != 32:
            raise ConfigError("a model id must be 32 bytes")
        return model
    if model.startswith("0x") and len(model) == 66:
        return bytes.fromhex(model[2:])
    repo, sep, file_name = model.rpartition("/")
    if not sep or not repo or not file_name:
        raise ConfigError(f"model must be a 32-byte id or 'repo/file', got {model!r}")
    return model_id(repo, file_name)


@dataclasses.dataclass(frozen=True)
class SessionEvent:
    """One marketplace event about a session (``name`` is the Solidity event name)."""

    name: str
    job_id: int
    block_number: int
    tx_hash: str
    args: dict[str, Any]


class SessionManager:
    """Create, read, complete and time out session jobs."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk

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
        functions = market.marketplace.functions
        host = Web3.to_checksum_address(host)
        model_key = resolve_model_id(model)
        if price_per_token is None:
            price_per_token = await self._sdk.registry.get_model_pricing(host, model_key, token)
        if token is None:
            call = (functions.createSessionJobForModel(host, model_key, price_per_token, max_duration, proof_interval)
                    if model_key else functions.createSessionJob(host, price_per_token, max_duration, proof_interval))
            receipt = await market.chain.transact(account, call, value=deposit)
        else:
            token = Web3.to_checksum_address(token)
            await self._ensure_allowance(token, deposit)
            call = (functions.createSessionJobForModelWithToken(host, model_key, token, deposit, price_per_token,
                                                                max_duration, proof_interval)
                    if model_key else
                    functions.createSessionJobWithToken(host, token, deposit, price_per_token, max_duration,
                                                        proof_interval))
            receipt = await market.chain.transact(account, call)
        created = market.marketplace.events.SessionJobCreated().process_receipt(receipt, errors=DISCARD)
        if not created:
            raise ContractError("createSession mined without a SessionJobCreated event", function="createSession")
        job = await self.get_session(int(created[0]["args"]["jobId"]))
        self._sdk.billing.track_session(job)
        return job

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

    async def _ensure_allowance(self, token: str, amount: int) -> None:
        market, account = self._market, self._sdk.require_account()
        erc20 = market.token(token)
        spender = market.marketplace.address
        allowance = await market.chain.call(erc20.functions.allowance(account.address, spender))
        if allowance < amount:
            await market.chain.transact(account, erc20.functions.approve(spender, amount))

    async def get_session(self, job_id: int) -> SessionJob:
        """The session job as stored on chain.

        Raises:
            SessionError: no such job.
        """
        market = self._market
        functions = market.marketplace.functions
        row = await market.chain.call(functions.sessionJobs(job_id))
        model = await market.chain.call(functions.sessionModel(job_id))
        job = SessionJob.from_getter(row, model)
        if not job.exists:
            raise SessionError(f"session job {job_id} does not exist", code="JOB_NOT_FOUND")
        return job

    async def complete_session(self, job_id: int, conversation_cid: str = "") -> SessionJob:
        """Settle the session now (the depositor may do so at any time; the host after the dispute window)."""
        market = self._market
        await market.chain.transact(self._sdk.require_account(),
                                    market.marketplace.functions.completeSessionJob(job_id, conversation_cid))
        return await self.get_session(job_id)

    async def trigger_timeout(self, job_id: int) -> SessionJob:
        """Settle an expired or abandoned session (anyone may call it once it timed out)."""
        market = self._market
        await market.chain.transact(self._sdk.require_account(),
                                    market.marketplace.functions.triggerSessionTimeout(job_id))
        return await self.get_session(job_id)

    async def get_session_events(self, job_id: int, from_block: int = 0) -> list[SessionEvent]:
        """Creation, checkpoints and settlement (``SessionCompleted`` or ``SessionTimedOut``) of ``job_id``,
        in chain order. The events have the public contracts' fields (and topics)."""
        market = self._market
        events = market.marketplace.events
        kinds = (events.SessionJobCreated, events.ProofSubmitted, events.SessionCompleted, events.SessionTimedOut)

        def fetch() -> list[tuple[int, int, SessionEvent]]:
            found: list[tuple[int, int, SessionEvent]] = []
            for kind in kinds:
                for log in kind().get_logs(from_block=from_block, argument_filters={"jobId": job_id}):
                    event = SessionEvent(str(log["event"]), job_id, int(log["blockNumber"]),
                                         log["transactionHash"].hex(), dict(log["args"]))
                    found.append((event.block_number, int(log["logIndex"]), event))
            return sorted(found, key=lambda item: item[:2])

        return [event for _, _, event in await market.chain.run(fetch)]

    async def expected_settlement(self, job_id: int) -> Any:
        """What completing the session now would pay: host earnings, treasury fee and refund."""
        job = await self.get_session(job_id)
        fee = await self._market.chain.call(self._market.marketplace.functions.feeBasisPoints())
        return settle(job.tokens_used, job.price_per_token, int(fee), job.deposit)
