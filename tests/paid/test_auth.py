"""JWT session auth bound to the depositor, on a real node with the embedded chain."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from fabstir.errors import AuthenticationError
from fabstir.node.billing import BillingService
from fabstir.node.host_chain import HostChain
from fabstir.protocol.auth import TokenClaims, challenge_text, issue_token, sign_challenge
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.helpers import WireClient, prompt
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register

OPTIONS = PromptOptions(max_tokens=4, temperature=0.0)


async def paid_node(world: PaidWorld, node_factory: NodeFactory, tmp_path: Path, **config: object) -> object:
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "l.db",
                             complete_sessions=False)
    node = await node_factory(billing=billing, require_auth=True, **config)
    await register(world, node.url)
    return node


async def open_job(world: PaidWorld) -> int:
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        return (await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)).job_id


async def test_depositor_authenticates_and_others_are_refused(world: PaidWorld, node_factory: NodeFactory,
                                                              tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path)
    job_id = await open_job(world)
    sdk_args = {"chain": world.chain, "deployment": world.market.deployment, "default_options": OPTIONS}
    async with FabstirSDK(account=world.client, **sdk_args) as sdk:  # type: ignore[arg-type]
        await sdk.inference.connect_to_session(str(job_id), node.url, job_id=job_id)  # authenticates by itself
        token = sdk.inference.session_token()
        assert token is not None
        claims = sdk.inference.validate_token(token, node.runtime.signing_public_key)
        assert claims.job_id == job_id and claims.subject == world.client.address
        assert claims.permissions == ("prompt", "read_history")
        assert (await sdk.inference.send_prompt("hi")).completion_tokens == 4
        assert len(await sdk.inference.get_history()) == 2
        before = claims.expires_at
        await asyncio.sleep(1.1)
        await sdk.inference.refresh_token()
        assert sdk.inference.validate_token(sdk.inference.session_token() or "",
                                            node.runtime.signing_public_key).expires_at > before
        with pytest.raises(AuthenticationError) as admin:
            await sdk.inference.authenticate_session(permissions=("prompt", "admin"))
        assert admin.value.code == "PERMISSION_DENIED"
    # a second wallet that knows the job id
    async with FabstirSDK(account=world.stranger, **sdk_args) as thief:  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError) as refused:
            await thief.inference.connect_to_session(str(job_id), node.url, job_id=job_id)
        assert refused.value.code == "AUTH_FAILED" and "not the depositor" in refused.value.message
    # no wallet at all
    async with FabstirSDK(**sdk_args) as anonymous:  # type: ignore[arg-type]
        with pytest.raises(Exception) as info:
            await anonymous.inference.connect_to_session(str(job_id), node.url, job_id=job_id)
        assert getattr(info.value, "code", "") == "AUTH_REQUIRED"
    billing = node.runtime.billing  # type: ignore[attr-defined]
    assert billing.entry(job_id).generated == 4, "refused requests were never billed"


async def test_forged_foreign_expired_tokens_and_replayed_challenges(world: PaidWorld, node_factory: NodeFactory,
                                                                     tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path, auth_token_ttl=2)
    job_id, other_job = await open_job(world), await open_job(world)
    key = node.runtime.signing_key  # type: ignore[attr-defined]
    now = int(time.time())

    def token(signing_key: SigningKey, job: int, expires: int) -> str:
        return issue_token(signing_key, TokenClaims(str(job), job, ("prompt",), world.client.address,
                                                     world.host.address, now, expires))

    client = await WireClient.open(node.ws_url)  # type: ignore[attr-defined]
    cases = {
        "forged": (token(SigningKey(b"\x09" * 32), job_id, now + 600), "AUTH_FAILED"),
        "foreign": (token(key, other_job, now + 600), "AUTH_FAILED"),
        "expired": (token(key, job_id, now - 1), "SESSION_EXPIRED"),
        "garbage": ("not.a.jwt", "AUTH_FAILED"),
    }
    for name, (bad, code) in cases.items():
        await client.send({"type": "auth", "job_id": job_id, "token": bad, "id": name})
        error, end = await client.recv(), await client.recv()
        assert (error["code"], end["reason"]) == (code, "error"), name
    # a challenge signed by the depositor works once, never twice
    await client.send({"type": "auth_challenge", "job_id": job_id, "id": "c"})
    challenge = (await client.recv())["challenge"]
    assert f"job: {job_id}" in challenge and world.host.address.lower() in challenge
    signature = sign_challenge(challenge, world.client.key)
    await client.send({"type": "auth", "job_id": job_id, "challenge": challenge, "signature": signature, "id": "a1"})
    success = await client.recv()
    assert success["type"] == "auth_success" and success["job_id"] == job_id
    await client.send({"type": "auth", "job_id": job_id, "challenge": challenge, "signature": signature, "id": "a2"})
    assert (await client.recv())["code"] == "AUTH_FAILED"
    await client.recv()
    # a challenge text the node never issued
    made_up = challenge_text(chain_id=world.chain.chain_id, marketplace=world.market.marketplace.address,
                             job_id=job_id, host=world.host.address, nonce="00", expires_at=now + 60)
    await client.send({"type": "auth", "job_id": job_id, "challenge": made_up,
                       "signature": sign_challenge(made_up, world.client.key), "id": "a3"})
    assert (await client.recv())["code"] == "AUTH_FAILED"
    await client.recv()
    # authenticated: prompts work until the 2-second token expires
    await client.send(prompt("hi", rid="p1", max_tokens=2, session_id=str(job_id), jobId=str(job_id)))
    assert (await client.until_end())[-1]["reason"] == "complete"
    await asyncio.sleep(2.1)
    await client.send(prompt("late", rid="p2", max_tokens=2, session_id=str(job_id), jobId=str(job_id)))
    error = await client.recv()
    assert error["code"] == "SESSION_EXPIRED"
    await client.close()
