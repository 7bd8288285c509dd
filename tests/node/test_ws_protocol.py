"""Wire-level tests of /v1/ws: a real node (llama.cpp, tiny model) on 127.0.0.1, a raw WebSocket client."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from fabstir.node.server import NodeServer
from tests.helpers import WireClient, prompt, text_of


async def test_connected_then_init_ack_with_features(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url, expect_connected=False)
    hello = await client.recv()
    assert hello["type"] == "connected" and hello["message"] == "WebSocket connected successfully"
    assert "session-resume" in hello["features"]
    await client.send({"type": "session_init", "sessionId": "139", "jobId": "139", "chainId": 84532, "id": "i1"})
    ack = await client.recv()
    secret = ack.pop("session_secret")  # a free node's opener gets the key to its session's context
    assert len(secret) == 32 and int(secret, 16) >= 0
    assert ack == {"type": "session_init_ack", "status": "success", "session_id": "139", "job_id": 139,
                   "chain_id": 84532, "message": "Session initialized successfully",
                   "features": hello["features"], "message_index": 0, "id": "i1"}
    await client.close()


async def test_stream_shape(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.init("s1")
    await client.send(prompt("hello there", rid="p1", max_tokens=6))
    frames = await client.until_end()
    chunks, end = frames[:-1], frames[-1]
    assert all(f["type"] == "stream_chunk" and f["id"] == "p1" for f in chunks)
    assert chunks[-1] == {"type": "stream_chunk", "content": "", "tokens": 0, "id": "p1"}  # sentinel
    assert all(f["content"] for f in chunks[:-1]), "only the sentinel is empty"
    assert end["reason"] == "complete" and end["id"] == "p1" and end["session_id"] == "s1"
    assert end["finish_reason"] in ("length", "stop")
    assert end["tokens_used"] == sum(f["tokens"] for f in chunks)
    usage = end["usage"]
    assert usage["completion_tokens"] <= 6 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["context_window_size"] == 512
    assert end["message_index"] == 0
    await client.close()


async def test_max_tokens_is_exact_and_finish_reason_length(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.send(prompt("count with me", max_tokens=5, session_id="len"))
    end = (await client.until_end())[-1]
    assert end["usage"]["completion_tokens"] == 5 and end["finish_reason"] == "length"
    await client.close()


async def test_public_subset_client_without_extensions(node: NodeServer) -> None:
    """A client of the public node's subset: no message_index, context re-sent with each prompt."""
    client = await WireClient.open(node.ws_url)
    await client.init("pub", jobId="7", chain_id=84532)
    await client.send(prompt("first question", rid="a"))
    end_a = (await client.until_end())[-1]
    context = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "an answer"}]
    await client.send({"type": "prompt", "jobId": "7", "chain_id": 84532, "prompt": "second", "id": "b",
                       "request": {"model": "x", "prompt": "second", "max_tokens": 4, "temperature": 0.5,
                                   "stream": True, "conversation_context": context}})
    end_b = (await client.until_end())[-1]
    assert end_b["reason"] == "complete"
    assert end_b["usage"]["prompt_tokens"] > end_a["usage"]["prompt_tokens"]
    await client.send({"type": "inference", "request": {"model": "m", "prompt": "third", "max_tokens": 3,
                                                          "stream": True, "job_id": 7}})
    frames = await client.until_end()
    assert frames[-1]["reason"] == "complete" and "id" not in frames[-1]
    await client.close()


@pytest.mark.parametrize("frame,code", [
    ("{not json", "INVALID_JSON"),
    (json.dumps({"type": "batch_prompt"}), "UNKNOWN_MESSAGE_TYPE"),
    (json.dumps([1, 2, 3]), "INVALID_MESSAGE"),
    (b"\x00\x01binary", "BINARY_FRAME"),
    (json.dumps({"type": "prompt", "content": "Jan-2025 style"}), "VALIDATION_ERROR"),
    (json.dumps({"type": "prompt", "request": {"prompt": "x", "max_tokens": 5, "temperature": 9}}),
     "VALIDATION_ERROR"),
])
async def test_bad_frames_get_coded_errors_and_node_keeps_serving(node: NodeServer, frame: str | bytes,
                                                                   code: str) -> None:
    client = await WireClient.open(node.ws_url)
    await client.send(frame)
    error, end = await client.recv(), await client.recv()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert end == {"type": "stream_end", "reason": "error", "tokens_used": 0}
    await client.send(prompt("still there?", rid="after"))
    assert (await client.until_end())[-1]["reason"] == "complete"
    await client.close()


async def test_oversized_frame(node_factory: object) -> None:
    node: NodeServer = await node_factory(max_frame_bytes=4096)  # type: ignore[operator]
    client = await WireClient.open(node.ws_url)
    await client.send(json.dumps({"type": "prompt", "id": "big", "prompt": "x" * 10_000}))
    error = await client.recv()
    assert error["code"] == "FRAME_TOO_LARGE" and "4096" in error["message"]
    assert (await client.recv())["reason"] == "error"
    await client.send(prompt("small", rid="ok"))
    assert (await client.until_end())[-1]["reason"] == "complete"
    # far beyond the hard limit: this connection is closed (1009), others are unaffected
    other = await WireClient.open(node.ws_url)
    await client.send("y" * (4096 * 5))
    with pytest.raises(ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await other.send(prompt("other", rid="o"))
    assert (await other.until_end())[-1]["reason"] == "complete"
    await other.close()


async def test_prompt_over_context_window(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.send(prompt("word " * 2000, rid="long"))
    error, end = await client.recv(), await client.recv()
    assert error["code"] == "TOKEN_LIMIT_EXCEEDED" and error["id"] == "long"
    assert error["prompt_tokens"] > 512 and error["context_window_size"] == 512
    assert end["reason"] == "error" and end["id"] == "long"
    await client.close()


async def test_request_while_streaming_is_rejected_and_stream_completes(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.send(prompt("a long answer", rid="one", max_tokens=300))
    first = await client.recv()
    assert first["type"] == "stream_chunk"
    await client.send(prompt("me too", rid="two"))
    frames = await client.until_end()
    busy = [f for f in frames if f.get("id") == "two"]
    assert busy[0]["type"] == "error" and busy[0]["code"] == "REQUEST_IN_PROGRESS"
    assert busy[1]["type"] == "stream_end" and busy[1]["reason"] == "error" and busy[1]["tokens_used"] == 0
    # the first request's stream still ends normally
    if frames[-1].get("id") == "two":
        frames = await client.until_end()
    assert frames[-1]["id"] == "one" and frames[-1]["reason"] == "complete"
    assert frames[-1]["usage"]["completion_tokens"] == 300
    await client.close()


async def test_cancel_mid_stream(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.init("c1")
    await client.send(prompt("tell me everything", rid="long", max_tokens=400))
    assert (await client.recv())["type"] == "stream_chunk"
    await client.send({"type": "stream_cancel", "session_id": "c1", "reason": "user_cancelled"})
    frames = await client.until_end()
    end = frames[-1]
    assert end["reason"] == "cancelled" and end["finish_reason"] == "cancelled"
    assert 1 <= end["usage"]["completion_tokens"] < 400
    assert end["tokens_used"] == 1 + sum(f["tokens"] for f in frames[:-1])
    assert not any(f["type"] == "stream_chunk" and f["content"] == "" for f in frames), "no sentinel on cancel"
    await client.send(prompt("next", rid="n"))
    assert (await client.until_end())[-1]["reason"] == "complete"
    await client.close()


async def test_cancel_when_idle_is_ignored(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.send({"type": "stream_cancel", "session_id": "nobody"})
    await client.send(prompt("hi", rid="x"))
    assert (await client.until_end())[-1]["reason"] == "complete"
    await client.close()


async def test_two_connections_stream_at_once(node: NodeServer) -> None:
    a, b = await WireClient.open(node.ws_url), await WireClient.open(node.ws_url)
    await a.send(prompt("first", rid="a", max_tokens=300))
    await b.send(prompt("second", rid="b", max_tokens=300))
    first_a, first_b = await a.recv(), await b.recv()
    assert first_a["type"] == first_b["type"] == "stream_chunk"
    # both have started before either has finished
    rest_a, rest_b = await asyncio.gather(a.until_end(), b.until_end())
    assert rest_a[-1]["usage"]["completion_tokens"] == rest_b[-1]["usage"]["completion_tokens"] == 300
    await a.close()
    await b.close()


async def test_message_index_gap_and_repeat(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.init("idx")
    await client.send(prompt("zero", rid="0", message_index=0))
    assert (await client.until_end())[-1]["message_index"] == 0
    for bad in (0, 2):
        await client.send(prompt("bad", rid=f"bad{bad}", message_index=bad))
        error, end = await client.recv(), await client.recv()
        assert error["code"] == "INVALID_MESSAGE_INDEX" and error["expected_message_index"] == 1
        assert end["reason"] == "error"
    await client.send(prompt("one", rid="1", message_index=1))
    assert (await client.until_end())[-1]["message_index"] == 1
    await client.close()


async def test_server_side_context_grows_and_survives_reconnect(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    secret = (await client.init("ctx"))["session_secret"]
    sizes = []
    for index in range(3):
        await client.send(prompt(f"turn {index}", rid=str(index), message_index=index))
        sizes.append((await client.until_end())[-1]["usage"]["prompt_tokens"])
    assert sizes[0] < sizes[1] < sizes[2]
    await client.close()
    stranger = await WireClient.open(node.ws_url)  # knows the session id, not the secret: a context of its own
    assert (await stranger.init("ctx"))["message_index"] == 0
    await stranger.send({"type": "get_history", "session_id": "ctx", "id": "h"})
    assert (await stranger.recv())["conversation_context"] == []
    await stranger.close()
    again = await WireClient.open(node.ws_url)
    ack = await again.init("ctx", session_secret=secret)
    assert ack["message_index"] == 3 and ack["session_secret"] == secret
    await again.send(prompt("turn 3", rid="3", message_index=3))
    assert (await again.until_end())[-1]["usage"]["prompt_tokens"] > sizes[2]
    await again.close()


async def test_session_resume_loads_client_history(node: NodeServer) -> None:
    history = []
    for index in range(40):
        history += [{"role": "user", "content": f"question number {index} about things"},
                    {"role": "assistant", "content": f"answer number {index} with some detail"}]
    client = await WireClient.open(node.ws_url)
    await client.send({"type": "session_resume", "session_id": "res", "job_id": 5, "id": "rs",
                       "conversation_context": history, "last_message_index": 39})
    resumed = await client.recv()
    assert resumed["type"] == "session_resumed" and resumed["id"] == "rs"
    assert resumed["message_index"] == 40
    assert resumed["kept_messages"] + resumed["dropped_messages"] == 80
    assert 0 < resumed["kept_messages"] < 80, "a 512-token window cannot hold 80 messages"
    await client.send(prompt("what next?", rid="n", message_index=40, max_tokens=4))
    end = (await client.until_end())[-1]
    assert end["message_index"] == 40 and end["usage"]["prompt_tokens"] <= 512 - 1
    await client.close()


async def test_disconnect_mid_stream_frees_the_engine(node: NodeServer) -> None:
    for _ in range(3):  # more disconnects than engines: each must release its engine
        client = await WireClient.open(node.ws_url)
        await client.send(prompt("go", max_tokens=400))
        await client.recv()
        await client.close()
    client = await WireClient.open(node.ws_url)
    await client.send(prompt("still serving", rid="ok", max_tokens=4))
    assert (await client.until_end(timeout=30))[-1]["reason"] == "complete"
    await client.close()


async def test_ping_is_answered(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    pong = await client.ws.ping(b"are you there")
    assert await asyncio.wait_for(pong, 5) >= 0
    await client.close()


def test_text_of_helper() -> None:
    assert text_of([{"type": "stream_chunk", "content": "a"}, {"type": "stream_end"}]) == "a"


async def test_bad_frame_while_streaming_does_not_end_the_stream(node: NodeServer) -> None:
    client = await WireClient.open(node.ws_url)
    await client.send(prompt("stream on", rid="main", max_tokens=300))
    assert (await client.recv())["type"] == "stream_chunk"
    await client.send("{broken")
    await client.send('{"type":"prompt","id":"bad","prompt":""}')
    frames = await client.until_end()
    while frames[-1].get("id") != "main":
        frames += await client.until_end()
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["INVALID_JSON", "VALIDATION_ERROR"]
    assert "id" not in errors[0] and errors[1]["id"] == "bad"
    ends = [f for f in frames if f["type"] == "stream_end"]
    assert [e.get("id") for e in ends] == ["bad", "main"], "only the frame with an id gets its own stream_end"
    assert ends[-1]["reason"] == "complete" and ends[-1]["usage"]["completion_tokens"] == 300
    await client.close()
