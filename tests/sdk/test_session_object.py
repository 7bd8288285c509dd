"""The SDK's Session object, its stream as an async context manager, and the injected connector.

Real node (llama.cpp over the tiny model) on 127.0.0.1; the injected connector wraps the real WebSocket one.
"""

from __future__ import annotations

from typing import Any

from fabstir.node.server import NodeServer
from fabstir.protocol import SessionState
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.sdk.connection import Transport, connect_host
from fabstir.sdk.session import Session

GREEDY = PromptOptions(max_tokens=6, temperature=0.0)


async def test_a_session_is_an_async_context_manager_with_its_own_methods(node: NodeServer) -> None:
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("object", node.url)
        session = sdk.inference.session()
        assert isinstance(session, Session) and session.session_id == "object"
        async with session:
            result = await session.send("hello")
            assert result.completion_tokens == 6 and session.next_index == 1
            assert [turn.role for turn in session.history] == ["user", "assistant"]
        assert session.state.state is SessionState.CLOSED and session.connection is not None
        assert session.connection.closed


async def test_leaving_a_stream_early_cancels_it_and_frees_the_session(node: NodeServer) -> None:
    async with FabstirSDK(default_options=PromptOptions(max_tokens=400, temperature=0.0)) as sdk:
        await sdk.inference.connect_to_session("early", node.url)
        pieces = []
        async with sdk.inference.stream("a long answer") as stream:
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == 3:
                    break
        assert len(pieces) == 3
        assert stream.result.finish_reason == "cancelled" and stream.result.completion_tokens < 400
        session = sdk.inference.session()
        assert session.active_request is None and session.state.state is SessionState.READY
        after = await sdk.inference.send_prompt("next", PromptOptions(max_tokens=4, temperature=0.0))
        assert after.finish_reason == "length" and after.completion_tokens == 4
        # a cancelled turn stays in both copies of the conversation, so their indices agree
        assert after.message_index == 1
        assert [turn.content for turn in sdk.inference.get_conversation() if turn.role == "user"] == [
            "a long answer", "next"]


async def test_aclose_before_iterating_and_after_the_end_are_harmless(node: NodeServer) -> None:
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("idle", node.url)
        unused = sdk.inference.stream("never started")
        await unused.aclose()
        stream = sdk.inference.stream("complete")
        result = await stream.until_done()
        await stream.aclose()
        assert stream.result is result and result.completion_tokens == 6


async def test_the_transport_comes_from_the_injected_connector(node: NodeServer) -> None:
    opened: list[str] = []

    async def recording_connector(host_url: str, *, timeout: float | None, compression: bool) -> Transport:
        opened.append(host_url)
        return await connect_host(host_url, timeout=timeout, compression=compression)

    options: dict[str, Any] = {"default_options": GREEDY, "connector": recording_connector}
    async with FabstirSDK(**options) as sdk:
        await sdk.inference.connect_to_session("injected", node.url)
        await sdk.inference.send_prompt("one")
        session = sdk.inference.session()
        assert session.connection is not None
        await session.connection.aclose()  # the next prompt reconnects through the same connector
        await sdk.inference.send_prompt("two")
    assert opened == [node.url, node.url]
