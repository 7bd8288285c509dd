"""A gateway's idle conversations against a node's cap on connections per address.

Every conversation the gateway keeps for affinity holds a WebSocket to its host, and all of them come from the
gateway's one address. A node caps those (``max_connections_per_address``); when new conversations are refused,
the gateway closes its least recently used idle sessions on that host and tries again.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import StaticSource
from fabstir.errors import SessionError
from fabstir.gateway import Gateway, serve_gateway
from fabstir.sdk import FabstirSDK
from tests.conftest import NodeFactory

KEY = "sk-test-gateway"
CAP = 6


async def test_new_conversations_beyond_the_nodes_connection_cap(node_factory: NodeFactory) -> None:
    node = await node_factory(max_connections_per_address=CAP, max_concurrent_per_client=0)
    gateway = Gateway(FabstirSDK(discovery_sources=[StaticSource([HostCandidate("host-a", node.url)])]))
    async with serve_gateway(gateway, api_keys=[KEY]) as server:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60) as client:
            async def ask(text: str) -> str:
                answer = await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": text}], max_tokens=2, temperature=0)
                return answer.model_extra["x_fabstir"]["session_id"]  # type: ignore[index]

            one_by_one = [await ask(f"conversation {n}") for n in range(2 * CAP)]
            assert len(set(one_by_one)) == 2 * CAP, "each one a new conversation, on its own session"
            assert len(gateway.conversations) <= CAP, "the oldest idle sessions were closed to make room"
            # the last ones are still kept for their conversations to continue
            assert len(gateway.conversations) >= CAP - 2
            # several new conversations at once, while idle sessions fill the cap: they share what is closed
            at_once = await asyncio.gather(*(ask(f"burst {n}") for n in range(CAP - 1)))
            assert len(set(at_once)) == CAP - 1


async def test_the_same_conversation_twice_keeps_one_session_open(node_factory: NodeFactory) -> None:
    """Two clients asking the same question get the same (greedy) answer: one conversation, so only one of their
    sessions can be found again; the other is closed, not left holding a connection to the host."""
    node = await node_factory(max_connections_per_address=CAP)
    sdk = FabstirSDK(discovery_sources=[StaticSource([HostCandidate("host-a", node.url)])])
    gateway = Gateway(sdk)
    async with serve_gateway(gateway, api_keys=[KEY]) as server:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60) as client:
            sessions = []
            for _ in range(2 * CAP):
                answer = await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "the same question"}], max_tokens=2,
                    temperature=0)
                sessions.append(answer.model_extra["x_fabstir"]["session_id"])  # type: ignore[index]
            assert sdk.inference.session(sessions[-1]).session_id == sessions[-1]
            for displaced in sessions[:-1]:
                with pytest.raises(SessionError):
                    sdk.inference.session(displaced)
    assert len(set(sessions)) == 2 * CAP
    assert len(gateway.conversations) == 1
