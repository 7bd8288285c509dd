"""A paid marketplace on the embedded chain: deployed contracts, a registered host, a funded client."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.deploy import deploy_marketplace
from fabstir.chain.metadata import build_host_metadata
from fabstir.node.registration import register_host

MODEL_REPO = "local"
HOST_PRICE_NATIVE = 1_000_000  # wei per token x 1000
HOST_PRICE_STABLE = 10_000


@dataclasses.dataclass
class PaidWorld:
    chain: Chain
    market: Marketplace
    owner: LocalAccount
    host: LocalAccount
    client: LocalAccount
    stranger: LocalAccount
    model_file: str

    @property
    def model(self) -> bytes:
        return model_id(MODEL_REPO, self.model_file)


async def build_world(chain: Chain, model_file: str, *, dispute_window: int = 2,
                      max_tokens_per_second: int = 1_000_000) -> PaidWorld:
    owner, host, client, stranger = (dev_account(i) for i in range(4))
    deployment = await deploy_marketplace(chain, owner, models=[(MODEL_REPO, model_file, b"\x11" * 32)],
                                          dispute_window=dispute_window,
                                          max_tokens_per_second=max_tokens_per_second)
    market = Marketplace(chain, deployment)
    await chain.transact(owner, market.stake_token.functions.mint(host.address, 10_000 * 10**18))
    await chain.transact(owner, market.stable_token.functions.mint(client.address, 1_000 * 10**6))
    return PaidWorld(chain, market, owner, host, client, stranger, model_file)


@pytest.fixture
async def world(tiny_model: Path) -> AsyncIterator[PaidWorld]:
    chain = Chain.embedded(funded_accounts=5)
    try:
        yield await build_world(chain, tiny_model.name)
    finally:
        chain.close()


@pytest.fixture
async def slow_world(tiny_model: Path) -> AsyncIterator[PaidWorld]:
    """A marketplace whose dispute window (600 s of chain time) only the test moves past."""
    chain = Chain.embedded(funded_accounts=5)
    try:
        yield await build_world(chain, tiny_model.name, dispute_window=600)
    finally:
        chain.close()


async def register(world: PaidWorld, api_url: str) -> None:
    await register_host(world.market, world.host, metadata=build_host_metadata("test host", models=["tiny"]),
                        api_url=api_url, models=[world.model], min_price_native=HOST_PRICE_NATIVE,
                        min_price_stable=HOST_PRICE_STABLE)


async def add_host(world: PaidWorld, account: LocalAccount, api_url: str, price: int, *,
                   signing_key: str | None = None, encryption_key: str | None = None) -> None:
    """Stake and register any ``account`` as a host at ``price``, publishing the keys given in its metadata."""
    await world.chain.transact(world.owner, world.market.stake_token.functions.mint(account.address, 10_000 * 10**18))
    metadata = build_host_metadata(f"host {account.address[:8]}", models=["tiny"], ed25519PublicKey=signing_key,
                                   publicKey=encryption_key, capabilities=["e2e-v1"])
    await register_host(world.market, account, metadata=metadata, api_url=api_url, models=[world.model],
                        min_price_native=price, min_price_stable=10_000)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 120) -> None:
    """Wait for ``condition`` (polled every 50 ms) with a generous deadline."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)
