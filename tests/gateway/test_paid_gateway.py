"""The gateway on a paid marketplace: the embedded chain, two registered paid nodes, the official openai client.

Each conversation opens a session job through unified discovery (the request's strategy), encrypted to the
host's published key; answers carry the job, the price and the host's signed receipts; the jobs settle when
the gateway closes its sessions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from fabstir.chain.money import token_cost
from fabstir.chain.records import JobStatus
from fabstir.gateway import Gateway, serve_gateway
from fabstir.gateway.keys import KeyStore
from fabstir.sdk import FabstirSDK
from tests.conftest import NodeFactory
from tests.paid.conftest import PaidWorld, world  # noqa: F401 (a fixture)
from tests.paid.test_open_session import start_host

DEPOSIT = 10**15
KEY = "sk-paid"


async def test_paid_conversations_through_the_openai_client(world: PaidWorld, node_factory: NodeFactory,  # noqa: F811
                                                             tmp_path: Path) -> None:
    await start_host(world, node_factory, tmp_path, world.host, 5_000_000)
    cheap = await start_host(world, node_factory, tmp_path, world.stranger, 2_000_000)
    model = f"local/{world.model_file}"
    sdk = FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client)
    async with serve_gateway(Gateway(sdk, deposit=DEPOSIT), api_keys=[KEY]) as server:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120) as client:
            messages: list[Any] = [{"role": "user", "content": "tell me something"}]
            first = await client.chat.completions.create(model=f"{model}:cheapest", messages=messages,
                                                         max_tokens=20, temperature=0)
            messages += [{"role": "assistant", "content": first.choices[0].message.content},
                         {"role": "user", "content": "and then?"}]
            stream = await client.chat.completions.create(model=f"{model}:cheapest", messages=messages,
                                                          max_tokens=20, temperature=0, stream=True)
            chunks = [chunk async for chunk in stream]
        fabstir = first.model_extra["x_fabstir"] if first.model_extra else {}
        last = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra or {}
        job_id = fabstir["job_id"]
    assert fabstir["host"] == cheap.url and fabstir["price_per_token"] == 2_000_000 and fabstir["encrypted"]
    assert fabstir["receipts"][0]["tokens"] == 20 and fabstir["receipts"][0]["price_per_token"] == 2_000_000
    assert last["x_fabstir"]["job_id"] == job_id, "the conversation stayed on its session job"
    assert last["x_fabstir"]["session_id"] == fabstir["session_id"]
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment) as reader:
        async with asyncio.timeout(120):
            while (job := await reader.sessions.get_session(job_id)).status is JobStatus.ACTIVE:
                await asyncio.sleep(0.25)
    assert job.host == world.stranger.address and job.status is JobStatus.COMPLETED
    served = 40  # two answers of 20 tokens, each receipted
    assert served <= job.tokens_used <= max(served, 100), "billed what was served (or the session's minimum charge)"


async def test_a_key_spends_up_to_its_cap(world: PaidWorld, node_factory: NodeFactory,  # noqa: F811
                                          tmp_path: Path) -> None:
    """A capped key: its session holds at most what it has left, each answer's cost is counted, and at the cap
    the gateway answers 402 before opening anything."""
    price = 2_000_000
    await start_host(world, node_factory, tmp_path, world.host, price)
    store = KeyStore(tmp_path / "keys.json")
    cap = DEPOSIT // 2
    key = store.create("capped", cap)
    sdk = FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client)
    async with serve_gateway(Gateway(sdk, deposit=DEPOSIT), api_keys=store) as server:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120) as client:
            answer = await client.chat.completions.create(
                model=f"local/{world.model_file}", messages=[{"role": "user", "content": "hi"}], max_tokens=10,
                temperature=0)
            fabstir = answer.model_extra["x_fabstir"] if answer.model_extra else {}
            (record,) = store.records()
            assert record.spent == token_cost(10, price), "the answer's cost, in base units"
            job = await sdk.sessions.get_session(fabstir["job_id"])
            assert job.deposit == cap, "the session held what the key had left, not the gateway's deposit"
            store.set_cap("capped", record.spent)
            with pytest.raises(openai.APIStatusError) as refused:
                await client.chat.completions.create(
                    model=f"local/{world.model_file}", messages=[{"role": "user", "content": "more"}], max_tokens=5)
    assert refused.value.status_code == 402 and refused.value.code == "insufficient_quota"
