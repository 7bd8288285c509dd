"""Opening a paid session on a host chosen by unified discovery: ``sdk.sessions.open_session``.

The host is picked among the hosts registered on chain for the model (merged with
what the other discovery sources say), after a ping of the candidates with no
measured latency, so a dead host is banned before any deposit is locked with it.
The price offered is the host's on-chain minimum for the model and payment token
(its per-model price where it set one, else its default), read again just before
the job is created. Outcomes flow back into ``sdk.discovery.peers``:
a failed connect counts against the host, a completed session for it, and every
answer's TTFT and speed refine its quality metrics.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from fabstir.chain.hosts import resolve_model_id
from fabstir.chain.records import SessionJob
from fabstir.discovery.selection import HostCandidate, Requirements, SelectionError, Strategy, Weights
from fabstir.errors import ConfigError, FabstirError
from fabstir.sdk.switching import SessionRoute
from fabstir.sdk.types import InferenceResult

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["OpenedSession", "open_session"]


@dataclasses.dataclass
class OpenedSession:
    """A session job on chain and the host chosen for it; :meth:`connect`, then :meth:`send_prompt`."""

    sdk: FabstirSDK
    job: SessionJob
    host: HostCandidate
    opened_at: float = dataclasses.field(default_factory=time.monotonic)
    route: SessionRoute | None = None
    """How the session moves to another host (the model, this job's deposit as the budget, the strategy)."""

    @property
    def session_id(self) -> str:
        return str(self.job.job_id)

    async def connect(self) -> None:
        """Open the WebSocket to the host, encrypted with its published key; a failure counts against the host."""
        try:
            await self.sdk.inference.connect_to_session(
                self.session_id, self.host.api_url, job_id=self.job.job_id,
                host_public_key=self.host.encryption_key, host_signing_key=self.host.signing_key)
        except FabstirError:
            self.sdk.discovery.peers.record_failure(self.host.address, time.monotonic())
            raise
        session = self.sdk.inference.session(self.session_id)
        session.route = self.route or SessionRoute.from_job(self.job)
        session.job_deposit = self.job.deposit

    async def send_prompt(self, prompt: str, **kwargs: Any) -> InferenceResult:
        """``sdk.inference.send_prompt`` on this session; records the answer's TTFT and speed for the host."""
        result = await self.sdk.inference.send_prompt(prompt, session_id=self.session_id, **kwargs)
        self.sdk.discovery.peers.record_stream(self.host.address, ttft_ms=result.ttft_ms,
                                               tokens_per_s=result.tokens_per_s)
        return result

    async def close(self) -> None:
        """Close the socket (the host checkpoints and settles) and count a completed session for the host
        (the one serving it now, after a switch)."""
        route = self.route
        await self.sdk.inference.close(self.session_id)
        address = route.host_address if route is not None and route.host_address else self.host.address
        self.sdk.discovery.peers.record_completed(address, time.monotonic() - self.opened_at)


async def open_session(sdk: FabstirSDK, model: str | bytes, deposit: int, *,
                       strategy: Strategy | str = "composite", host: str | None = None,
                       requirements: Requirements | None = None, weights: Weights | None = None,
                       token: str | None = None, max_duration: int = 3600, proof_interval: int = 100,
                       probe: bool = True) -> OpenedSession:
    """Pick a host by ``strategy`` (or take ``host``), then open a session job with ``deposit`` in escrow.

    Raises:
        SelectionError: no registered host serves the model within the requirements (NO_HOST_AVAILABLE).
        ContractError: the marketplace refused the job.
    """
    model_key = resolve_model_id(model)
    if model_key is None:
        raise ConfigError("open_session needs a model")
    requirement = dataclasses.replace(requirements or Requirements(), model="0x" + model_key.hex())
    discovery = sdk.discovery
    if host is not None:
        hosts = await discovery.discover_all_hosts(requirement, registered_only=True)
        chosen = next((h for h in hosts if h.address.lower() == host.lower()), None)
        if chosen is None:
            raise SelectionError(f"host {host} is not a usable registered host for this model")
    else:
        chosen = await discovery.select_host(strategy, requirement, weights, registered_only=True, probe=probe)
    price = await sdk.registry.get_model_pricing(chosen.address, model_key, token)  # per-model price, else default
    discovery.peers.record_attempt(chosen.address)
    job = await sdk.sessions.create_session(chosen.address, model_key, deposit, price, max_duration=max_duration,
                                            proof_interval=proof_interval, token=token)
    route = SessionRoute.from_job(job, strategy=strategy, requirements=requirements, weights=weights)
    return OpenedSession(sdk, job, dataclasses.replace(chosen, price_per_token=price), route=route)
