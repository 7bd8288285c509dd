"""``fabstir gateway`` driven by the official ``openai`` client (sync and async, streaming and not, errors).

Real nodes on 127.0.0.1 (llama.cpp over the tiny model), a real gateway server; the sync client runs in a
thread so the in-process servers keep serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import StaticSource
from fabstir.gateway import Gateway, GatewayServer, serve_gateway
from fabstir.node.server import NodeServer
from fabstir.sdk import FabstirSDK
from tests.conftest import NodeFactory

KEY = "sk-test-gateway"


@pytest.fixture
async def gateway(node: NodeServer) -> AsyncIterator[GatewayServer]:
    sdk = FabstirSDK(discovery_sources=[StaticSource([HostCandidate("host-a", node.url)])])
    async with serve_gateway(Gateway(sdk), api_keys=[KEY]) as server:
        yield server


def sync_client(server: GatewayServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)


def async_client(server: GatewayServer, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)


def extra(obj: Any) -> dict[str, Any]:
    fabstir = obj.model_extra["x_fabstir"]
    assert isinstance(fabstir, dict)
    return fabstir


async def test_sync_client_gets_a_completion_with_usage_and_receipt(gateway: GatewayServer, node: NodeServer) -> None:
    def ask() -> Any:
        with sync_client(gateway) as client:
            return client.chat.completions.with_raw_response.create(
                model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0)

    raw = await asyncio.to_thread(ask)
    response = raw.parse()
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + 8 and response.usage.prompt_tokens > 0
    fabstir = extra(response)
    assert fabstir["host"] == node.url and fabstir["tokens"] == 8 and len(fabstir["receipts"]) == 1
    assert fabstir["receipts"][0]["tokens"] == 8
    assert raw.headers["x-fabstir-host"] == node.url and raw.headers["x-fabstir-tokens"] == "8"


async def test_async_streaming_with_usage(gateway: GatewayServer) -> None:
    async with async_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "stream please"}], max_tokens=12, temperature=0,
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert extra(finals[0])["tokens"] == 12
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)


async def test_a_continuing_conversation_stays_on_its_session(gateway: GatewayServer) -> None:
    """The client re-sends the whole conversation; the gateway sends only the new message to the same session."""
    async with async_client(gateway) as client:
        messages: list[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}]
        first = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
        messages += [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "two"}]
        second = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
        other = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "one"}], max_tokens=5, temperature=0)
    assert extra(second)["session_id"] == extra(first)["session_id"], "the same session continues"
    assert extra(other)["session_id"] != extra(first)["session_id"], "another conversation, another session"
    # the host saw the second prompt with the first turn as context: more prompt tokens than the first time
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


async def test_an_edited_history_opens_a_session_with_that_history(gateway: GatewayServer) -> None:
    async with async_client(gateway) as client:
        first = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "one"}], max_tokens=5, temperature=0)
        edited = await client.chat.completions.create(model="tiny", messages=[
            {"role": "user", "content": "one"}, {"role": "assistant", "content": "an answer I wrote myself"},
            {"role": "user", "content": "two"}], max_tokens=5, temperature=0)
    assert extra(edited)["session_id"] != extra(first)["session_id"]
    assert edited.usage is not None and first.usage is not None
    assert edited.usage.prompt_tokens > first.usage.prompt_tokens, "the history went to the host"


async def test_errors_have_the_openai_shape(gateway: GatewayServer) -> None:
    async with async_client(gateway, key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
    async with async_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="tiny", messages=[])
        assert bad.value.param == "messages"
        with pytest.raises(openai.BadRequestError) as last:
            await client.chat.completions.create(model="tiny", messages=[{"role": "assistant", "content": "x"}])
        assert last.value.param == "messages"
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                 temperature=7)
    async with httpx.AsyncClient(base_url=gateway.url) as raw:
        broken = await raw.post("/v1/chat/completions", content=b"{not json", headers={"authorization": f"Bearer {KEY}"})
        spec = await raw.get("/openapi.json")
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    assert "/v1/chat/completions" in spec.json()["paths"]


async def test_no_host_is_a_503_and_models_lists_what_hosts_serve(node_factory: NodeFactory, tmp_path: Path) -> None:
    live = await node_factory()
    source = StaticSource([HostCandidate("host-a", live.url)])
    async with serve_gateway(Gateway(FabstirSDK(discovery_sources=[source])), api_keys=[KEY]) as server:
        async with async_client(server) as client:
            models = await client.models.list()
            assert [m.id for m in models.data] == [live.runtime.inference.model_id]
            assert models.data[0].model_extra["hosts"] == 1
    dead = StaticSource([HostCandidate("host-dead", "http://127.0.0.1:9")])
    async with serve_gateway(Gateway(FabstirSDK(discovery_sources=[dead])), api_keys=[KEY]) as server:
        async with async_client(server) as client:
            with pytest.raises(openai.APIStatusError) as failed:
                await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code in (502, 503)


async def test_completions_one_prompt_each_on_a_reused_session(gateway: GatewayServer) -> None:
    async with async_client(gateway) as client:
        first = await client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
        second = await client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6,
                                                 temperature=0)
        stream = await client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6,
                                                 temperature=0, stream=True)
        events = [event async for event in stream]
    assert first.object == "text_completion" and first.choices[0].text and first.choices[0].finish_reason == "length"
    assert first.usage is not None and second.usage is not None and first.usage.completion_tokens == 6
    assert extra(second)["session_id"] == extra(first)["session_id"], "the idle session serves the next prompt"
    assert second.usage.prompt_tokens == first.usage.prompt_tokens, "with no history carried over"
    assert second.choices[0].text == first.choices[0].text
    assert "".join(e.choices[0].text for e in events) == first.choices[0].text
    assert events[-1].choices[0].finish_reason == "length"
