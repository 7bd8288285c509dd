"""One admission step on every path of a paid node: strangers get coded refusals and are billed nothing.

A real node with default settings (depositor authentication on), the embedded chain with our contracts, the
tiny model; attackers are a second wallet and a client with no wallet that both know the job id.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from fabstir.errors import AuthenticationError, ConfigError
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.host_chain import HostChain
from fabstir.node.server import NodeServer
from fabstir.protocol.auth import TokenClaims, issue_token
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.e2e_helpers import E2EWire
from tests.helpers import WireClient, prompt
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register

OPTIONS = PromptOptions(max_tokens=4, temperature=0.0)


async def paid_node(world: PaidWorld, node_factory: NodeFactory, tmp_path: Path, **config: Any) -> NodeServer:
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "ledger.db",
                             complete_sessions=False)
    node: NodeServer = await node_factory(billing=billing, **config)
    await register(world, node.url)
    return node


async def open_job(world: PaidWorld, account: Any = None) -> int:
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment,
                          account=account or world.client) as sdk:
        return (await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE)).job_id


def generated(node: NodeServer, job_id: int) -> int:
    billing = node.runtime.billing
    assert billing is not None
    entry = billing.entry(job_id)
    return 0 if entry is None else entry.generated


async def expect_refusal(client: WireClient, codes: set[str], rid: str) -> None:
    error, end = await client.recv(), await client.recv()
    assert error["type"] == "error" and error["code"] in codes and error.get("id") == rid, error
    assert end["type"] == "stream_end" and end["reason"] == "error" and end["tokens_used"] == 0, end


async def test_strangers_get_coded_refusals_on_every_message_and_route(world: PaidWorld, node_factory: NodeFactory,
                                                                       tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path)
    job_id = await open_job(world)
    stranger_job = await open_job(world, world.stranger)
    job = str(job_id)
    # the depositor talks first, so there is a conversation to steal
    async with FabstirSDK(account=world.client, chain=world.chain, deployment=world.market.deployment,
                          default_options=OPTIONS, encryption=False) as sdk:
        await sdk.inference.connect_to_session(job, node.url, job_id=job_id)
        await sdk.inference.send_prompt("my secret is 1234")
        depositor_token = sdk.inference.session_token()
        assert depositor_token is not None
    served = generated(node, job_id)
    assert served == 4

    # no wallet at all: every message type that touches the job
    anonymous = await WireClient.open(node.ws_url)
    attempts: list[dict[str, Any]] = [
        {"type": "session_init", "session_id": job, "jobId": job, "id": "init"},
        prompt("free?", rid="prompt", session_id=job, jobId=job),
        {"type": "inference", "request": {"prompt": "free?", "max_tokens": 4, "job_id": job_id}, "id": "inference"},
        {"type": "session_resume", "session_id": job, "job_id": job_id, "conversation_context": [],
         "last_message_index": -1, "id": "resume"},
        {"type": "get_history", "session_id": job, "id": "history"},
        {"type": "session_clear", "session_id": job, "id": "clear"},
        prompt("no job at all", rid="nojob"),
    ]
    expected = {"init": {"AUTH_REQUIRED"}, "prompt": {"AUTH_REQUIRED"}, "inference": {"AUTH_REQUIRED"},
                "resume": {"AUTH_REQUIRED"}, "history": {"AUTH_REQUIRED"}, "clear": {"AUTH_REQUIRED"},
                "nojob": {"JOB_REQUIRED"}}
    for attempt in attempts:
        await anonymous.send(attempt)
        await expect_refusal(anonymous, expected[attempt["id"]], attempt["id"])
    await anonymous.close()

    # a second wallet: its signature, its token for its own job, and an encrypted init it signed
    async with FabstirSDK(account=world.stranger, chain=world.chain, deployment=world.market.deployment,
                          default_options=OPTIONS, encryption=False) as thief:
        with pytest.raises(AuthenticationError) as refused:
            await thief.inference.connect_to_session(job, node.url, job_id=job_id)
        assert refused.value.code == "AUTH_FAILED"
        await thief.inference.connect_to_session(str(stranger_job), node.url, job_id=stranger_job)
        foreign_token = thief.inference.session_token()
        assert foreign_token is not None
    with_foreign_token = await WireClient.open(node.ws_url)
    await with_foreign_token.send({"type": "auth", "job_id": stranger_job, "token": foreign_token, "id": "a"})
    assert (await with_foreign_token.recv())["type"] == "auth_success"
    for attempt in attempts[:6]:
        await with_foreign_token.send(attempt)
        await expect_refusal(with_foreign_token, {"AUTH_FAILED"}, attempt["id"])
    await with_foreign_token.close()
    signed_by_stranger = await E2EWire.open(node.ws_url, client_key=bytes(world.stranger.key))
    for scheme in ("ciphertext", "e2eev1"):
        await signed_by_stranger.send(signed_by_stranger.init_frame(job, scheme=scheme, rid=scheme))  # type: ignore[arg-type]
        error = await signed_by_stranger.expect_error("AUTH_FAILED", scheme)
        assert world.stranger.address.lower() in error["message"] or scheme == "e2eev1"
    await signed_by_stranger.close()

    # HTTP, JSON and SSE: no token, a foreign token, a forged token, no job
    forged = issue_token(SigningKey(b"\x07" * 32), TokenClaims(job, job_id, ("prompt",), world.client.address,
                                                                world.host.address, int(time.time()),
                                                                int(time.time()) + 600))
    cases = [
        ({"job_id": job_id}, None, 401, "AUTH_REQUIRED"),
        ({"job_id": job_id}, foreign_token, 403, "AUTH_FAILED"),
        ({"job_id": job_id}, forged, 403, "AUTH_FAILED"),
        ({}, depositor_token, 402, "JOB_REQUIRED"),
        ({"session_id": job}, None, 401, "AUTH_REQUIRED"),
    ]
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        for fields, token, status, code in cases:
            for stream in (False, True):
                headers = {"authorization": f"Bearer {token}"} if token else {}
                response = await http.post("/v1/inference", headers=headers, json={
                    "prompt": "free tokens?", "max_tokens": 4, "stream": stream, **fields})
                assert response.status_code == status, (fields, stream, response.text)
                assert response.json()["details"]["code"] == code
    assert generated(node, job_id) == served, "nothing was billed (nor served) to anyone but the depositor"
    assert generated(node, stranger_job) == 0


async def test_depositor_over_http_is_billed_like_a_websocket_prompt(world: PaidWorld, node_factory: NodeFactory,
                                                                     tmp_path: Path) -> None:
    node = await paid_node(world, node_factory, tmp_path)
    job_id = await open_job(world)
    async with FabstirSDK(account=world.client, chain=world.chain, deployment=world.market.deployment,
                          default_options=OPTIONS) as sdk:
        await sdk.inference.connect_to_session(str(job_id), node.url, job_id=job_id)
        token = sdk.inference.session_token()
        history = await sdk.inference.get_history()
    assert token is not None and history == []
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        plain = await http.post("/v1/inference", headers=headers,
                                json={"prompt": "hello", "max_tokens": 5, "temperature": 0, "job_id": job_id})
        assert plain.status_code == 200, plain.text
        assert plain.json()["tokens_used"] == 5
        assert generated(node, job_id) == 5
        streamed = await http.post("/v1/inference", headers=headers,
                                   json={"prompt": "hello", "max_tokens": 3, "temperature": 0, "stream": True,
                                         "job_id": job_id})
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        assert generated(node, job_id) == 8
    billing = node.runtime.billing
    assert billing is not None
    entry = billing.entry(job_id)
    assert entry is not None and entry.closed, "an HTTP request is one short connection: billing flushes at its end"


async def test_public_sdk_encrypted_init_authenticates_the_depositor(world: PaidWorld, node_factory: NodeFactory,
                                                                     tmp_path: Path) -> None:
    """An init signed as the TypeScript SDK signs it (E2EEv1 digest) by the depositor is its authentication."""
    node = await paid_node(world, node_factory, tmp_path)
    job_id = await open_job(world)
    client = await E2EWire.open(node.ws_url, client_key=bytes(world.client.key))
    ack = await client.init(str(job_id), f"{job_id}n", scheme="e2eev1")
    assert ack["job_id"] == job_id
    answer = await client.ask("paid through the public SDK's signature", max_tokens=3)
    assert answer.end["reason"] == "complete" and generated(node, job_id) == 3
    # the same connection's plaintext prompts are not covered by the encrypted session's signer
    await client.send(prompt("plaintext on the side", rid="side", session_id="other", jobId=str(job_id)))
    await client.expect_error("AUTH_REQUIRED", "side")
    await client.close()
    assert generated(node, job_id) == 3


async def test_only_a_loudly_named_setting_opens_a_paid_node(world: PaidWorld, node_factory: NodeFactory,
                                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError) as info:
        NodeConfig(require_auth=False)
    assert "insecure_serve_without_depositor_auth" in info.value.message
    with caplog.at_level(logging.WARNING, logger="fabstir.node.admission"):
        node = await paid_node(world, node_factory, tmp_path, insecure_serve_without_depositor_auth=True)
        job_id = await open_job(world)
        client = await WireClient.open(node.ws_url)
        await client.send(prompt("anyone", rid="x", session_id=str(job_id), jobId=str(job_id), max_tokens=2))
        assert (await client.until_end())[-1]["reason"] == "complete"
        await client.close()
        assert node.runtime.admission.paid
    assert any("INSECURE" in record.message for record in caplog.records)
    assert generated(node, job_id) == 2
