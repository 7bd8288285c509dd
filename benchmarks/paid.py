"""Shared set-up of the paid benchmarks: a marketplace on a chain, a host's billing, an in-process node.

Nothing here is timed. The node runs in the benchmark's process (``serve_node``), like the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from eth_account.signers.local import LocalAccount

from common import Settings, log
from fabstir.chain.anvil import running_anvil
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.deploy import deploy_marketplace
from fabstir.chain.metadata import build_host_metadata
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import register_host

MODEL_REPO = "local"
HOST_PRICE = 1_000_000
"""The host's minimum, and the price paid: wei per token x 1000."""
DEPOSIT = 10**18
"""1 ETH: covers 10^15 tokens at HOST_PRICE."""


@dataclasses.dataclass
class PaidMarket:
    chain: Chain
    market: Marketplace
    host: LocalAccount
    client: LocalAccount
    model: bytes


async def deploy_paid_market(chain: Chain, model_path: Path) -> PaidMarket:
    """Deploy (dispute window 30 s, no practical rate limit), approve the model, fund the host's stake."""
    owner, host, client = dev_account(0), dev_account(1), dev_account(2)
    digest = await asyncio.to_thread(lambda: hashlib.sha256(model_path.read_bytes()).digest())
    deployment = await deploy_marketplace(chain, owner, models=[(MODEL_REPO, model_path.name, digest)],
                                          max_tokens_per_second=1_000_000)
    market = Marketplace(chain, deployment)
    await chain.transact(owner, market.stake_token.functions.mint(host.address, 10_000 * 10**18))
    return PaidMarket(chain, market, host, client, model_id(MODEL_REPO, model_path.name))


async def register(paid: PaidMarket, api_url: str) -> None:
    await register_host(paid.market, paid.host, metadata=build_host_metadata("bench host", models=["bench"]),
                        api_url=api_url, models=[paid.model], min_price_native=HOST_PRICE,
                        min_price_stable=10_000)


def host_billing(paid: PaidMarket, ledger: Path, *, checkpoint_tokens: int = 100,
                 host_chain: Chain | None = None, defer_while_streaming: bool = True) -> BillingService:
    """The host's billing (its own chain connection when ``host_chain`` is given).

    ``complete_sessions=False``: the host never settles during a benchmark, so no settlement
    traffic runs behind a measurement. ``defer_while_streaming=False`` sends each checkpoint as soon
    as it is due, even while answers stream (the node's default holds it back for a quiet moment).
    """
    market = paid.market if host_chain is None else Marketplace(host_chain, paid.market.deployment)
    return BillingService(HostChain(market, paid.host, paid.model), ledger, checkpoint_tokens=checkpoint_tokens,
                          retry_delay=0.2, complete_sessions=False, defer_while_streaming=defer_while_streaming)


class CheckpointLog:
    """When the host submitted each checkpoint (wraps ``HostChain.submit_checkpoint``), and whether the chain took it."""

    def __init__(self, host: HostChain) -> None:
        self.tries: list[tuple[float, bool]] = []
        submit = host.submit_checkpoint

        async def recorded(job_id: int, tokens: int, proof_hash: bytes, proof_cid: str = "") -> None:
            started = time.perf_counter()
            try:
                await submit(job_id, tokens, proof_hash, proof_cid)
            except BaseException:
                self.tries.append((started, False))
                raise
            self.tries.append((started, True))

        host.submit_checkpoint = recorded  # type: ignore[method-assign]

    @property
    def submitted(self) -> int:
        """Checkpoints the chain took."""
        return sum(1 for _, ok in self.tries if ok)

    def during(self, windows: list[tuple[float, float]], *, refused_too: bool = False) -> int:
        """Checkpoints the chain took (with ``refused_too``: every try) that started inside any of ``windows``."""
        return sum(1 for t, ok in self.tries if ok or refused_too for start, end in windows if start <= t <= end)


def node_config(settings: Settings) -> NodeConfig:
    """One engine, greedy-friendly settings, loopback port 0 (same on every side)."""
    return NodeConfig(port=0, model_path=str(settings.model), template=settings.template,
                      context_window=settings.context_window, parallel=1, threads=settings.threads,
                      repeat_penalty=1.0, seed=0)


async def wait_billed(billing: BillingService, job_id: int, timeout: float) -> None:
    """Wait until the host has nothing left to checkpoint for ``job_id`` (no pending, less than a claim)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = billing.entry(job_id)
        if entry is None or (entry.pending_tokens == 0 and entry.unbilled < billing.min_tokens):
            return
        if entry.parked_reason:
            raise RuntimeError(f"billing of job {job_id} parked: {entry.parked_reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"billing of job {job_id} still busy after {timeout:.0f} s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def chains(backend: str) -> AsyncIterator[tuple[Chain, Chain]]:
    """(client's chain, host's chain): one shared in-process EVM, or two connections to one anvil."""
    if backend == "embedded":
        chain = Chain.embedded(funded_accounts=3)
        try:
            yield chain, chain
        finally:
            chain.close()
        return
    async with running_anvil() as anvil:
        log(f"anvil (pid {anvil.pid}) at {anvil.rpc_url}")
        client_chain = await asyncio.to_thread(Chain.connect, anvil.rpc_url)
        host_chain = await asyncio.to_thread(Chain.connect, anvil.rpc_url)
        try:
            yield client_chain, host_chain
        finally:
            client_chain.close()
            host_chain.close()
