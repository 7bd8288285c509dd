"""Encrypted paid sessions on the embedded chain: the host key is the e2e key, refusals are never billed."""

from __future__ import annotations

from pathlib import Path

import coincurve

from fabstir.chain.metadata import build_host_metadata
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.node.registration import register_host
from fabstir.node.server import NodeServer
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.e2e_helpers import E2EWire
from tests.node.test_encrypted_ws import attack_rows
from tests.paid.conftest import HOST_PRICE_NATIVE, HOST_PRICE_STABLE, PaidWorld

OPTIONS = PromptOptions(max_tokens=40, temperature=0.0)


async def paid_node(world: PaidWorld, node_factory: NodeFactory, tmp_path: Path, **config: object) -> NodeServer:
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "ledger.db",
                             complete_sessions=False)
    node: NodeServer = await node_factory(billing=billing, **config)
    metadata = build_host_metadata("encrypted host", models=["tiny"], publicKey=node.runtime.e2e_public_key)
    await register_host(world.market, world.host, metadata=metadata, api_url=node.url, models=[world.model],
                        min_price_native=HOST_PRICE_NATIVE, min_price_stable=HOST_PRICE_STABLE)
    return node


async def open_job(world: PaidWorld) -> int:
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        return (await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)).job_id


async def test_encrypted_paid_session_from_registry_metadata(world: PaidWorld, node_factory: NodeFactory,
                                                             tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path)
    host_public = coincurve.PrivateKey(bytes(world.host.key)).public_key.format(compressed=True).hex()
    assert node.runtime.e2e_public_key == host_public, "a paid node encrypts with its host account key"
    job_id = await open_job(world)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=OPTIONS) as sdk:
        host = (await sdk.registry.get_all_active_nodes())[0]
        assert host.metadata is not None and host.metadata.public_key == host_public
        await sdk.inference.connect_to_session(str(job_id), host.api_url, job_id=job_id,
                                               host_public_key=host.metadata.public_key)
        assert sdk.inference.is_encrypted()
        assert sdk.inference.client_address() == world.client.address.lower()
        results = [await sdk.inference.send_prompt(f"turn {i}") for i in range(3)]
        assert all(r.receipt is not None and r.receipt.price_per_token == HOST_PRICE_NATIVE for r in results)
        served = sum(r.completion_tokens for r in results)
        assert served == 120 and sdk.billing.get_token_usage(job_id) == served
    billing = node.runtime.billing
    assert billing is not None
    entry = billing.entry(job_id)
    assert entry is not None and entry.generated == served


async def test_refused_encrypted_requests_are_never_billed(world: PaidWorld, node_factory: NodeFactory,
                                                           tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path)
    billing = node.runtime.billing
    assert billing is not None
    job_id = await open_job(world)
    client = await attack_rows(node, str(job_id), client_key=bytes(world.client.key))
    entry = billing.entry(job_id)
    assert entry is not None and entry.generated == 3, "only the one accepted message was billed"
    answer = await client.ask("second", rid="after", max_tokens=5)
    assert answer.end["reason"] == "complete" and answer.end["receipt"]["price_per_token"] == HOST_PRICE_NATIVE
    assert entry.generated == 8
    other = await E2EWire.open(node.ws_url, client_key=bytes(world.client.key))
    await other.init(str(job_id))
    assert (await other.ask("another connection", max_tokens=2)).end["reason"] == "complete"
    assert entry.generated == 10
    await client.close()
    await other.close()


async def test_jobs_come_from_the_sealed_init(world: PaidWorld, node_factory: NodeFactory, tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path)
    job_id = await open_job(world)
    client = await E2EWire.open(node.ws_url, client_key=bytes(world.client.key))
    await client.send(client.init_frame("999", "999", outer_job=str(job_id), rid="a"))
    await client.expect_error("JOB_NOT_FOUND", "a")
    await client.send(client.init_frame("free-ride", "free-ride", outer_job=str(job_id), rid="b"))
    await client.expect_error("JOB_REQUIRED", "b")
    ack = await client.init(str(job_id), f"{job_id}n", outer_job="999")
    assert ack["job_id"] == job_id
    assert (await client.ask("paid", max_tokens=2)).end["reason"] == "complete"
    await client.close()


async def test_encrypted_session_on_an_auth_required_node(world: PaidWorld, node_factory: NodeFactory,
                                                          tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path)
    billing = node.runtime.billing
    assert billing is not None
    job_id = await open_job(world)
    sdk_args = {"chain": world.chain, "deployment": world.market.deployment, "default_options": OPTIONS}
    async with FabstirSDK(account=world.client, **sdk_args) as sdk:  # type: ignore[arg-type]
        await sdk.inference.connect_to_session(str(job_id), node.url, job_id=job_id,
                                               host_public_key=node.runtime.e2e_public_key)
        assert sdk.inference.is_encrypted() and sdk.inference.session_token() is not None
        assert (await sdk.inference.send_prompt("hi")).completion_tokens == 40
    thief = await E2EWire.open(node.ws_url)  # knows the job id and the host key, but is not the depositor
    await thief.send(thief.init_frame(str(job_id), rid="t"))
    error = await thief.recv()
    assert error["code"] == "AUTH_FAILED"
    await thief.close()
    entry = billing.entry(job_id)
    assert entry is not None and entry.generated == 40


async def test_keys_come_from_the_registry_by_default(world: PaidWorld, node_factory: NodeFactory,
                                                      tmp_path: Path) -> None:
    """No keys passed: the SDK reads the job's host metadata on chain, encrypts and checks receipts."""
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "l.db",
                             complete_sessions=False)
    node: NodeServer = await node_factory(billing=billing)
    metadata = build_host_metadata("keyed host", publicKey=node.runtime.e2e_public_key,
                                   ed25519PublicKey=node.runtime.signing_public_key)
    await register_host(world.market, world.host, metadata=metadata, api_url=node.url, models=[world.model],
                        min_price_native=HOST_PRICE_NATIVE, min_price_stable=HOST_PRICE_STABLE)
    job_id = await open_job(world)
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=OPTIONS) as sdk:
        await sdk.inference.connect_to_session(str(job_id), node.url, job_id=job_id)
        assert sdk.inference.is_encrypted()
        result = await sdk.inference.send_prompt("hello")
        assert result.receipt is not None and result.receipt.key == node.runtime.signing_public_key
