"""Moving a :class:`~fabstir.sdk.session.Session` to another host: ``switch_host`` and mid-answer failover.

Theory of operation. A session that may move carries a :class:`SessionRoute`: the model, the budget
the user committed (the first job's deposit), the payment token and how to choose a host. Sessions
opened with ``sdk.sessions.open_session`` get one when they connect; a session connected by hand to a
paid job gets one read from the chain the first time it moves; a free session (no job) moves among
the hosts its SDK's discovery sources list.

:func:`switch_host` then, in this order: closes the old connection (a live host settles its job when the
socket closes; a dead one settles from its durable ledger when it comes back, or the depositor completes
it later), counts a failed host against its reputation (a doubling ban in ``sdk.discovery.peers``, so no
failover picks it again while banned), chooses the next host (the one given, else by the route's
strategy among the usable hosts, never the old one), opens a new job there with the budget left (the
cost the old jobs may claim deducted, minimum charge included), connects, encrypts with the host's
published key, authenticates, and restores the client's copy of the conversation (``session_resume``,
or the public-subset fallback). A candidate that cannot be reached counts as failed too and the next
one is tried, up to :data:`MAX_CANDIDATES`. The session object, its id and its stored conversation
stay the same; only its host, job and keys change. On the wire the session is then named by its new job id.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from fabstir.chain.money import billable_tokens, first_claim_minimum, max_tokens_for_deposit, token_cost
from fabstir.discovery.selection import (
    HostCandidate,
    Requirements,
    SelectionCriteria,
    SelectionError,
    Strategy,
    Weights,
)
from fabstir.errors import ConfigError, FabstirError, SessionError
from fabstir.protocol import SessionState
from fabstir.sdk.e2e import choose_encryption
from fabstir.sdk.types import HostSwitch

if TYPE_CHECKING:
    from fabstir.chain.records import SessionJob
    from fabstir.sdk.session import Session

__all__ = ["MAX_CANDIDATES", "SessionRoute", "switch_host"]

log = logging.getLogger("fabstir.sdk")

MAX_CANDIDATES = 3
"""Hosts one switch tries before it gives up."""


@dataclasses.dataclass
class SessionRoute:
    """What a session needs to open a job with another host."""

    model: bytes | None
    """The model's on-chain id (``None`` on free hosts: any host of the discovery sources)."""
    budget: int = 0
    """Base units the user committed to the conversation, across all its jobs."""
    token: str | None = None
    """ERC20 payment token, ``None`` for ETH."""
    strategy: Strategy | str = "composite"
    requirements: Requirements | None = None
    weights: Weights | None = None
    max_duration: int = 3600
    proof_interval: int = 100
    host_address: str | None = None
    """The current host's address (its URL on a free host known by URL only)."""
    price_per_token: int = 0
    """The current job's price (×1000 precision)."""
    spent: int = 0
    """What the jobs left behind may cost at most: their tokens, minimum charge included."""

    @classmethod
    def from_job(cls, job: SessionJob, *, strategy: Strategy | str = "composite",
                 requirements: Requirements | None = None, weights: Weights | None = None) -> SessionRoute:
        return cls(model=job.model_id, budget=job.deposit, token=job.payment_token, strategy=strategy,
                   requirements=requirements, weights=weights, max_duration=job.max_duration,
                   proof_interval=job.proof_interval, host_address=job.host, price_per_token=job.price_per_token)

    def leave_job(self, deposit: int, tokens: int) -> None:
        """Count what the job being left (``deposit``, ``tokens`` served on it) may cost."""
        if self.price_per_token <= 0:
            return
        most = max_tokens_for_deposit(deposit, self.price_per_token)
        billed = billable_tokens(tokens, first_claim_minimum(self.proof_interval, most), most)
        self.spent += token_cost(billed, self.price_per_token)

    @property
    def budget_left(self) -> int:
        return self.budget - self.spent


async def switch_host(session: Session, new_host: str | HostCandidate | None = None, *,
                      failed: bool = False) -> HostSwitch:
    """Move ``session`` to ``new_host`` (a URL, an address or a candidate; ``None``: the route's strategy).

    Raises:
        SelectionError: NO_HOST_AVAILABLE (no other usable host).
        SessionError: BUDGET_EXHAUSTED (nothing left for a new job), SESSION_CLOSED.
        ConnectError, NodeError, E2EError, ContractError: the last candidate's failure.
    """
    if session.state.state is SessionState.CLOSED:
        raise SessionError("the session is closed", code="SESSION_CLOSED")
    sdk = session.sdk
    route = await _route_of(session)
    old_url, old_job = session.host_url, session.job_id
    old_address = route.host_address or await _address_of(session, old_url)
    await session.close_channel()
    peers = sdk.discovery.peers
    if failed:
        peers.record_failure(old_address, time.monotonic())
    if old_job is not None and sdk.chain is not None:
        route.leave_job(session.job_deposit, session.job_tokens)
    tried: set[str] = {old_address.lower(), old_url}
    last_error: FabstirError | None = None
    for _ in range(MAX_CANDIDATES):
        try:
            host = await _choose(session, route, new_host, tried)
        except SelectionError:
            if last_error is not None:
                raise last_error from None
            raise
        tried |= {host.address.lower(), host.api_url}
        try:
            deposit = await _move(session, route, host)
        except FabstirError as exc:
            log.warning("session %s: host %s failed while taking over: %s", session.session_id, host.api_url, exc)
            peers.record_failure(host.address, time.monotonic())
            await session.close_channel()
            if new_host is not None or isinstance(exc, SessionError) and exc.code == "BUDGET_EXHAUSTED":
                raise
            last_error = exc
            continue
        switch = HostSwitch(from_host=old_url, to_host=host.api_url, reason="failed" if failed else "requested",
                            from_job=old_job, to_job=session.job_id if session.job_id != old_job else None,
                            deposit=deposit)
        session.switches.append(switch)
        log.info("session %s moved from %s to %s (%s)", session.session_id, old_url, host.api_url, switch.reason)
        return switch
    assert last_error is not None
    raise last_error


async def _route_of(session: Session) -> SessionRoute:
    """The session's route; read from its job on chain the first time a hand-connected paid session moves."""
    if session.route is not None:
        return session.route
    sdk = session.sdk
    if session.job_id is not None and sdk.chain is not None and sdk.deployment is not None:
        job = await sdk.sessions.get_session(session.job_id)
        session.route = SessionRoute.from_job(job)
        session.job_deposit = job.deposit
    else:
        session.route = SessionRoute(model=None)
    return session.route


async def _address_of(session: Session, url: str) -> str:
    """The address discovery lists for the host at ``url`` (the URL itself when none does)."""
    wanted = url.lower().rstrip("/")
    for host in await session.sdk.discovery.discover_all_hosts(registered_only=False):
        if host.api_url.lower().rstrip("/") == wanted:
            return host.address
    return url


async def _choose(session: Session, route: SessionRoute, new_host: str | HostCandidate | None,
                  tried: set[str]) -> HostCandidate:
    """The next host: the one asked for, else the best usable one by the route's strategy not yet tried."""
    if isinstance(new_host, HostCandidate):
        return new_host
    discovery = session.sdk.discovery
    paid = route.model is not None
    requirements = route.requirements or Requirements()
    if route.model is not None:
        requirements = dataclasses.replace(requirements, model="0x" + route.model.hex())
    hosts = await discovery.discover_all_hosts(requirements, registered_only=paid)
    if new_host is not None:
        wanted = new_host.lower().rstrip("/")
        found = next((h for h in hosts if wanted in (h.address.lower(), h.api_url.lower().rstrip("/"))), None)
        if found is not None:
            return found
        if paid:
            raise SelectionError(f"{new_host} is not a usable registered host for this session's model")
        return HostCandidate(address=new_host, api_url=new_host)
    pool = [h for h in hosts if h.address.lower() not in tried and h.api_url not in tried]
    if not pool:
        raise SelectionError("no other usable host for this session: every known host failed or is in use")
    criteria = SelectionCriteria(weights=route.weights or discovery.selector.weights)
    return discovery.selector.select_optimal_host(pool, criteria, route.strategy)


async def _move(session: Session, route: SessionRoute, host: HostCandidate) -> int:
    """Open a job with ``host`` (paid routes), connect and restore the history there; returns the deposit."""
    sdk = session.sdk
    deposit = 0
    job_id = session.job_id
    if route.model is not None:
        if sdk.chain is None:
            raise ConfigError("moving a paid session needs the SDK's chain")
        deposit = route.budget_left
        if deposit <= 0:
            raise SessionError("the session's budget is used up; nothing is left for a new job",
                               code="BUDGET_EXHAUSTED")
        price = await sdk.registry.get_model_pricing(host.address, route.model, route.token)
        sdk.discovery.peers.record_attempt(host.address)
        job = await sdk.sessions.create_session(host.address, route.model, deposit, price,
                                                max_duration=route.max_duration, proof_interval=route.proof_interval,
                                                token=route.token)
        job_id = job.job_id
        route.price_per_token = price
    session.move_to(host.api_url, job_id, deposit=deposit, signing_key=host.signing_key)
    route.host_address = host.address
    if session.state.can(SessionState.RECONNECTING):
        session.state.move(SessionState.RECONNECTING)
    await session.open_channel()
    account = sdk.account
    session.encryption = choose_encryption(host.encryption_key, sdk.encryption, announced=session.announced_key(),
                                           client_key=bytes(account.key) if account is not None else None)
    await session.authenticate_if_offered()
    if session.history:
        await session.resume(session.history)
    else:
        await session.initialize()
    return deposit
