"""The SDK's InferenceManager against a real node (llama.cpp, tiny model) over a real WebSocket."""

from __future__ import annotations

import asyncio

import pytest

from fabstir.errors import ConnectError, SessionError, TokenLimitExceededError
from fabstir.node.server import NodeServer
from fabstir.protocol import ChatTurn, Feature, SessionState
from fabstir.sdk import FabstirSDK, PromptOptions, RetryPolicy, Timeouts
from tests.conftest import NodeFactory

GREEDY = PromptOptions(max_tokens=8, temperature=0.0)


async def test_multi_turn_with_server_side_context(node: NodeServer) -> None:
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("139", node.url, job_id=139)
        assert Feature.SERVER_CONTEXT in sdk.inference.host_features()
        results = [await sdk.inference.send_prompt(f"question {i}") for i in range(3)]
        assert [r.message_index for r in results] == [0, 1, 2]
        prompt_tokens = [r.usage.prompt_tokens for r in results if r.usage]
        assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2], "the node kept the history"
        assert all(r.completion_tokens == 8 and r.finish_reason == "length" for r in results)
        assert all(r.ttft_ms is not None and r.ttft_ms > 0 and r.tokens_per_s > 0 for r in results)
        history = sdk.inference.get_conversation()
        assert [t.role for t in history] == ["user", "assistant"] * 3
        assert history[1].content == results[0].text
        session = node.runtime.sessions.find("139")
        assert session is not None and session.history == history


async def test_on_token_callback_and_stream_iterator(node: NodeServer) -> None:
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("s", node.url)
        pieces: list[str] = []
        result = await sdk.inference.send_prompt("hello", on_token=pieces.append)
        assert "".join(pieces) == result.text and len(pieces) >= 2

        async def async_callback(text: str) -> None:
            pieces.append(text)

        await sdk.inference.send_prompt("again", on_token=async_callback)
        stream = sdk.inference.stream("and a stream", PromptOptions(max_tokens=5, temperature=0.0))
        streamed = [piece async for piece in stream]
        assert "".join(streamed) == stream.result.text and stream.result.completion_tokens == 5


async def test_resume_on_a_fresh_connection(node: NodeServer) -> None:
    history = [ChatTurn("user", "my name is Ada"), ChatTurn("assistant", "hello Ada"),
               ChatTurn("user", "what is my name"), ChatTurn("assistant", "Ada")]
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("r1", node.url, job_id=1)
        bare = await sdk.inference.send_prompt("next")
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("r2", node.url, job_id=2, conversation_context=history)
        resumed = await sdk.inference.send_prompt("next")
    assert resumed.message_index == 2
    assert resumed.usage and bare.usage and resumed.usage.prompt_tokens > bare.usage.prompt_tokens
    session = node.runtime.sessions.find("r2")
    assert session is not None and session.history[:4] == history


async def test_cancel_mid_stream(node: NodeServer) -> None:
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("c", node.url)
        stream = sdk.inference.stream("go on", PromptOptions(max_tokens=400, temperature=0.0))
        async for _ in stream:
            await sdk.inference.cancel()
        assert stream.result.cancelled and 1 <= stream.result.completion_tokens < 400
        assert sdk.inference.session_state() is SessionState.READY
        after = await sdk.inference.send_prompt("next", GREEDY)
        assert after.finish_reason == "length" and after.message_index == 1


async def test_public_subset_node_gets_context_with_each_prompt(node_factory: NodeFactory) -> None:
    """A node with our extensions switched off behaves like the public node; the SDK re-sends context."""
    node: NodeServer = await node_factory(extensions=False)
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("p", node.url, job_id=9)
        assert sdk.inference.host_features() == frozenset()
        first = await sdk.inference.send_prompt("first")
        second = await sdk.inference.send_prompt("second")
        assert first.message_index is None and second.message_index is None
        assert second.usage and first.usage and second.usage.prompt_tokens > first.usage.prompt_tokens
        assert len(sdk.inference.get_conversation()) == 4


async def test_two_sessions_one_sdk(node: NodeServer) -> None:
    async with FabstirSDK(default_options=PromptOptions(max_tokens=40, temperature=0.0)) as sdk:
        await sdk.inference.connect_to_session("a", node.url)
        await sdk.inference.connect_to_session("b", node.url)
        a, b = await asyncio.gather(sdk.inference.send_prompt("one", session_id="a"),
                                    sdk.inference.send_prompt("two", session_id="b"))
        assert a.session_id == "a" and b.session_id == "b"
        assert len(sdk.inference.get_conversation("a")) == len(sdk.inference.get_conversation("b")) == 2


async def test_reconnects_and_resumes_after_node_restart(node_factory: NodeFactory) -> None:
    first: NodeServer = await node_factory()
    port = first.port
    async with FabstirSDK(default_options=GREEDY, retry=RetryPolicy(attempts=20, initial_delay=0.05,
                                                                     max_delay=0.2)) as sdk:
        await sdk.inference.connect_to_session("crash", first.url, job_id=3)
        before = [await sdk.inference.send_prompt(f"turn {i}") for i in range(2)]
        await first.aclose()
        second: NodeServer = await node_factory(port=port)
        after = await sdk.inference.send_prompt("after the crash")
        assert after.message_index == 2
        restored = second.runtime.sessions.find("crash")
        assert restored is not None and restored.history[:4] == sdk.inference.get_conversation()[:4]
        assert after.usage and before[1].usage and after.usage.prompt_tokens > before[1].usage.prompt_tokens


async def test_errors(node: NodeServer, unused_tcp_port: int) -> None:
    async with FabstirSDK(timeouts=Timeouts(connect=2.0)) as sdk:
        with pytest.raises(SessionError):
            await sdk.inference.send_prompt("no session yet")
        with pytest.raises(ConnectError) as info:
            await sdk.inference.connect_to_session("x", f"http://127.0.0.1:{unused_tcp_port}")
        assert "refused" in str(info.value)
        await sdk.inference.connect_to_session("t", node.url)
        with pytest.raises(TokenLimitExceededError) as limit:
            await sdk.inference.send_prompt("word " * 2000)
        assert limit.value.details["context_window_size"] == 512
        ok = await sdk.inference.send_prompt("short", GREEDY)
        assert ok.message_index == 0, "a rejected prompt does not use up a message index"
        with pytest.raises(SessionError):
            await sdk.inference.send_prompt("")


async def test_one_request_at_a_time_per_session(node: NodeServer) -> None:
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("one", node.url)
        stream = sdk.inference.stream("long", PromptOptions(max_tokens=100, temperature=0.0))
        iterator = aiter(stream)
        await anext(iterator)
        with pytest.raises(SessionError) as info:
            sdk.inference.stream("second")
        assert info.value.code == "REQUEST_IN_PROGRESS"
        await stream.until_done()
        assert stream.result.completion_tokens == 100


async def test_permessage_deflate_negotiated(node: NodeServer) -> None:
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("z", node.url)
        session = sdk.inference._session(None)
        assert session.connection is not None
        response = session.connection._ws.response
        assert response is not None
        assert "permessage-deflate" in response.headers.get("Sec-WebSocket-Extensions", "")


async def test_index_conflict_is_repaired_by_resuming(node: NodeServer) -> None:
    """Two clients on one session id: the second sees INVALID_MESSAGE_INDEX, resumes with its copy, retries."""
    async with FabstirSDK(default_options=GREEDY) as first, FabstirSDK(default_options=GREEDY) as second:
        await first.inference.connect_to_session("shared", node.url)
        await second.inference.connect_to_session("shared", node.url)
        await first.inference.send_prompt("from the first client")
        result = await second.inference.send_prompt("from the second client")
        assert result.message_index == 0, "the node took the second client's history (empty) and index"
        assert second.inference.session_state() is SessionState.READY


async def test_receipts_are_signed_and_verified(node: NodeServer) -> None:
    from fabstir.protocol.signing import text_digest

    published = node.runtime.signing_public_key
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("rcpt", node.url, host_signing_key=published)
        result = await sdk.inference.send_prompt("sign this")
    receipt = result.receipt
    assert receipt is not None and receipt.key == published and receipt.session_id == "rcpt"
    assert receipt.tokens == result.tokens_used and receipt.text_sha256 == text_digest(result.text)
    assert receipt.model == node.runtime.inference.model_id and receipt.message_index == 0
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("rcpt2", node.url, host_signing_key="ab" * 32)
        with pytest.raises(Exception) as info:
            await sdk.inference.send_prompt("wrong key published")
        assert getattr(info.value, "code", "") == "RECEIPT_INVALID"


@pytest.mark.parametrize("catch_up", [False, True])
async def test_a_consumer_that_fell_behind_catches_up_in_one_piece(node: NodeServer, catch_up: bool) -> None:
    """While the consumer holds the first piece, the rest of the answer arrives; with ``catch_up`` the next
    piece carries every frame that arrived meanwhile, without it one piece per frame. Same text either way,
    and the first piece never waits for more."""
    async with FabstirSDK(default_options=PromptOptions(max_tokens=12, temperature=0.0)) as sdk:
        await sdk.inference.connect_to_session("behind", node.url)
        session = sdk.inference.session("behind")
        pieces: list[str] = []
        async with session.stream("tell me more", catch_up=catch_up) as stream:
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == 1:  # hold on until the whole answer is in (the inbox ends with stream_end)
                    inbox = session.channel().transport._inbox  # type: ignore[attr-defined]
                    async with asyncio.timeout(60):
                        while not any('"stream_end"' in frame for frame in inbox):
                            await asyncio.sleep(0.01)
                    behind = sum('"stream_chunk"' in frame and '"content":""' not in frame for frame in inbox)
            result = stream.result
    assert "".join(pieces) == result.text and result.tokens_used == 12 and behind >= 1
    assert len(pieces) == (2 if catch_up else 1 + behind)
