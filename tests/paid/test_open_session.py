"""Opening a paid session through unified discovery: real nodes, real chain, real contracts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from fabstir.chain.backend import dev_account
from fabstir.discovery import HostSelector, Requirements, SelectionError
from fabstir.discovery.chain_source import ChainSource
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.sdk import FabstirSDK
from tests.helpers import closed_port_url
from tests.paid.conftest import PaidWorld, add_host

DEPOSIT = 10**15


async def start_host(world: PaidWorld, node_factory, tmp_path: Path, account: LocalAccount, price: int):
    billing = BillingService(HostChain(world.market, account, world.model), tmp_path / f"{account.address}.db",
                             retry_delay=0.25)
    node = await node_factory(billing=billing)
    await add_host(world, account, node.url, price, signing_key=node.runtime.signing_public_key,
                   encryption_key=node.runtime.e2e_public_key)
    return node


async def test_chain_source_lists_registered_hosts_with_chain_price_stake_and_keys(world: PaidWorld, node_factory,
                                                                                   tmp_path: Path) -> None:
    node = await start_host(world, node_factory, tmp_path, world.host, 3_000_000)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment) as sdk:
        (host,) = await ChainSource(sdk).discover()
        assert host.address == world.host.address and host.api_url == node.url
        assert host.price_per_token == 3_000_000 and host.stake > 0
        assert host.signing_key == node.runtime.signing_public_key
        assert host.encryption_key == node.runtime.e2e_public_key
        assert "0x" + world.model.hex() in host.models and "tiny" in host.models
        assert host.sources == {"chain"} and host.capabilities == {"e2e-v1"}
        assert await ChainSource(sdk, payment_token=world.market.stable_token.address).discover() != []
        assert (await ChainSource(sdk, payment_token="0x" + "11" * 20).discover())[0].price_per_token == 10_000
        by_model = await ChainSource(sdk).discover(Requirements(model=f"local/{world.model_file}"))
        assert [h.address for h in by_model] == [world.host.address]
        assert await ChainSource(sdk).discover(Requirements(model="local/other.gguf")) == []


async def test_open_session_picks_the_cheapest_live_host_and_chats_encrypted(world: PaidWorld, node_factory,
                                                                            tmp_path: Path) -> None:
    """Three registered hosts: the cheapest is dead (its port is closed), so the probe bans it before any deposit
    is locked; the cheaper of the two live ones gets the session, at its on-chain price."""
    third = dev_account(4)
    await start_host(world, node_factory, tmp_path, world.host, 5_000_000)
    cheap = await start_host(world, node_factory, tmp_path, world.stranger, 2_000_000)
    await add_host(world, third, closed_port_url(), 1_000_000)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        opened = await sdk.sessions.open_session(f"local/{world.model_file}", DEPOSIT, strategy="cheapest")
        assert opened.host.address == world.stranger.address and opened.host.api_url == cheap.url
        assert opened.job.price_per_token == 2_000_000 and opened.job.host == world.stranger.address
        assert sdk.discovery.peers.is_blocked(third.address, now=time.monotonic())
        await opened.connect()
        assert sdk.inference.is_encrypted(opened.session_id)
        result = await opened.send_prompt("Once upon a time")
        assert result.completion_tokens > 0 and result.receipt is not None
        await opened.close()
        quality = sdk.discovery.peers.quality(world.stranger.address)
        assert quality.completed == 1 and quality.rtt_ms is not None and quality.tokens_per_s is not None
        assert sdk.discovery.peers.reputation(world.stranger.address) > 0.5

        fixed = await sdk.sessions.open_session(world.model, DEPOSIT, host=world.host.address, probe=False)
        assert fixed.job.host == world.host.address and fixed.job.price_per_token == 5_000_000
        with pytest.raises(SelectionError) as info:
            await sdk.sessions.open_session(world.model, DEPOSIT, requirements=Requirements(max_price=1_500_000))
        assert info.value.code == "NO_HOST_AVAILABLE"
        with pytest.raises(SelectionError):
            await sdk.sessions.open_session(world.model, DEPOSIT, host="0x" + "22" * 20)


async def test_chain_source_follows_registry_events_after_the_first_read(world: PaidWorld) -> None:
    """After one full read, refreshes read only the hosts named by events: pricing, URL, stake, activity, exits."""
    registry = world.market.node_registry.functions
    await add_host(world, world.host, "http://127.0.0.1:1", 2_000_000)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment) as sdk:
        source = ChainSource(sdk)
        assert [h.price_per_token for h in await source.discover()] == [2_000_000]
        assert (source.full_reads, source.hosts_read) == (1, 1)
        assert len(await source.discover()) == 1 and source.hosts_read == 1  # nothing happened: nothing read

        await world.chain.transact(world.host, registry.updatePricingNative(3_000_000))
        await world.chain.transact(world.host, registry.updateApiUrl("http://127.0.0.1:2"))
        await add_host(world, world.stranger, "http://127.0.0.1:3", 1_500_000)
        hosts = {h.address: h for h in await source.discover()}
        assert hosts[world.host.address].price_per_token == 3_000_000
        assert hosts[world.host.address].api_url == "http://127.0.0.1:2"
        assert hosts[world.stranger.address].price_per_token == 1_500_000
        assert (source.full_reads, source.hosts_read) == (1, 3)

        stake = hosts[world.host.address].stake
        await world.chain.transact(world.owner, world.market.stake_token.functions.mint(world.host.address, 10**18))
        await world.chain.transact(world.host, world.market.stake_token.functions.approve(
            world.market.node_registry.address, 10**18))
        await world.chain.transact(world.host, registry.stake(10**18))
        await world.chain.transact(world.stranger, registry.setNodeActive(False))
        hosts = {h.address: h for h in await source.discover()}
        assert set(hosts) == {world.host.address} and hosts[world.host.address].stake == stake + 10**18
        await world.chain.transact(world.host, registry.unregisterNode())
        assert await source.discover() == []
        assert source.full_reads == 1
        fresh = ChainSource(sdk, incremental=False)
        assert await fresh.discover() == [] and fresh.full_reads == 1


async def test_chain_source_prices_a_model_at_the_hosts_price_for_it(world: PaidWorld) -> None:
    """For a model requirement a host's price is its per-model price where it set one (else its default), so
    "cheapest" ranks by what a session on that model costs; a pricing change is picked up by the next refresh,
    and a slash by the next stake read."""
    registry = world.market.node_registry.functions
    await add_host(world, world.host, "http://127.0.0.1:1", 2_000_000)
    await add_host(world, world.stranger, "http://127.0.0.1:2", 3_000_000)
    await world.chain.transact(world.host, registry.setModelPricing(world.model, 4_000_000, 0))
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment) as sdk:
        source = ChainSource(sdk)
        wanted = Requirements(model=f"local/{world.model_file}")
        for_model = {h.address: h.price_per_token for h in await source.discover(wanted)}
        assert for_model == {world.host.address: 4_000_000, world.stranger.address: 3_000_000}
        cheapest = HostSelector().select_optimal_host(await source.discover(wanted), strategy="cheapest")
        assert cheapest.address == world.stranger.address
        defaults = {h.address: h.price_per_token for h in await source.discover()}
        assert defaults == {world.host.address: 2_000_000, world.stranger.address: 3_000_000}

        await world.chain.transact(world.host, registry.clearModelPricing(world.model))
        for_model = {h.address: h.price_per_token for h in await source.discover(wanted)}
        assert for_model[world.host.address] == 2_000_000

        stake = {h.address: h.stake for h in await source.discover()}[world.host.address]
        await world.chain.transact(world.owner, registry.setSlashingAuthority(world.owner.address))
        await world.chain.transact(world.owner, registry.slash(world.host.address, 10**18, world.owner.address))
        assert {h.address: h.stake for h in await source.discover()}[world.host.address] == stake - 10**18
        assert source.full_reads == 1
