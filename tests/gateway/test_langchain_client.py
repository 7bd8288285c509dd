"""A second real OpenAI-API client against the gateway, configured only by base URL: ``langchain-openai``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import StaticSource
from fabstir.gateway import Gateway, GatewayServer, serve_gateway
from fabstir.node.server import NodeServer
from fabstir.sdk import FabstirSDK

KEY = "sk-langchain"


@pytest.fixture
async def gateway(node: NodeServer) -> AsyncIterator[GatewayServer]:
    sdk = FabstirSDK(discovery_sources=[StaticSource([HostCandidate("host-a", node.url)])])
    async with serve_gateway(Gateway(sdk), api_keys=[KEY]) as server:
        yield server


async def test_langchain_chat_model_invokes_and_streams(gateway: GatewayServer) -> None:
    model = ChatOpenAI(base_url=gateway.base_url, api_key=KEY, model="tiny", max_tokens=6, temperature=0,  # type: ignore[arg-type]
                       max_retries=0, stream_usage=True)
    conversation = [SystemMessage("be brief"), HumanMessage("hello")]
    reply = await model.ainvoke(conversation)
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 6
    conversation += [reply, HumanMessage("and more")]
    pieces = [chunk async for chunk in model.astream(conversation)]
    text = "".join(str(chunk.content) for chunk in pieces)
    usage = [chunk.usage_metadata for chunk in pieces if chunk.usage_metadata]
    assert text and usage and usage[-1]["output_tokens"] == 6
