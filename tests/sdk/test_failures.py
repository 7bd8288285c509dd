"""The SDK against hosts that misbehave.

These hosts are scripted WebSocket servers (the real ``websockets`` server on 127.0.0.1, port 0) that
play a dead, silent or crashing node: a real node never misbehaves this way on purpose, so this is the
seam where a scripted peer stands in for a broken one.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from fabstir.errors import ConnectionClosedError, NodeError, RemoteProtocolError, RequestTimeoutError
from fabstir.protocol import ChatTurn
from fabstir.sdk import FabstirSDK, PromptOptions, RetryPolicy, Timeouts, backoff

Script = Callable[[ServerConnection], Awaitable[None]]


async def _hello_and_ack(ws: ServerConnection) -> dict[str, object]:
    await ws.send(json.dumps({"type": "connected", "message": "WebSocket connected successfully"}))
    init = json.loads(await ws.recv())
    await ws.send(json.dumps({"type": "session_init_ack", "status": "success", "session_id": init["session_id"],
                              "job_id": None, "chain_id": None, "message": "ok", "id": init.get("id")}))
    return dict(json.loads(await ws.recv()))


@pytest.fixture
async def scripted_host() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    servers: list[Server] = []

    async def start(script: Script) -> str:
        server = await serve(script, "127.0.0.1", 0)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_silent_host_times_out(scripted_host: Callable[[Script], Awaitable[str]]) -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    url = await scripted_host(silent)
    async with FabstirSDK(timeouts=Timeouts(handshake=0.3)) as sdk:
        with pytest.raises(RequestTimeoutError):
            await sdk.inference.connect_to_session("1", url)


async def test_host_dies_mid_answer(scripted_host: Callable[[Script], Awaitable[str]]) -> None:
    async def crash(ws: ServerConnection) -> None:
        prompt = await _hello_and_ack(ws)
        await ws.send(json.dumps({"type": "stream_chunk", "content": "half an", "tokens": 1, "id": prompt["id"]}))
        await ws.close()

    url = await scripted_host(crash)
    async with FabstirSDK(retry=RetryPolicy(attempts=1, initial_delay=0.01)) as sdk:
        await sdk.inference.connect_to_session("1", url)
        pieces: list[str] = []
        with pytest.raises(ConnectionClosedError):
            await sdk.inference.send_prompt("hi", on_token=pieces.append)
        assert pieces == ["half an"]
        assert sdk.inference.get_conversation() == [ChatTurn("user", "hi"), ChatTurn("assistant", "half an")], \
            "what the user saw of the unfinished answer stays in the conversation"


async def test_host_stalls_mid_answer(scripted_host: Callable[[Script], Awaitable[str]]) -> None:
    async def stall(ws: ServerConnection) -> None:
        prompt = await _hello_and_ack(ws)
        await ws.send(json.dumps({"type": "stream_chunk", "content": "x", "tokens": 1, "id": prompt["id"]}))
        await ws.wait_closed()

    url = await scripted_host(stall)
    async with FabstirSDK(timeouts=Timeouts(between_frames=0.3)) as sdk:
        await sdk.inference.connect_to_session("1", url)
        with pytest.raises(RequestTimeoutError):
            await sdk.inference.send_prompt("hi")


async def test_public_error_shape_and_empty_overflow_stream(scripted_host: Callable[[Script], Awaitable[str]]) -> None:
    """The public node's uncoded error, and its empty stream for an over-long prompt (PROTOCOL.md §3.4)."""
    async def public(ws: ServerConnection) -> None:
        prompt = await _hello_and_ack(ws)
        await ws.send(json.dumps({"type": "error", "error": "Rate limit exceeded, retry after 60 seconds",
                                  "id": prompt["id"]}))
        await ws.send(json.dumps({"type": "stream_end", "reason": "error", "tokens_used": 0, "id": prompt["id"]}))
        prompt = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "stream_chunk", "content": "", "tokens": 0, "id": prompt["id"]}))
        await ws.send(json.dumps({"type": "stream_end", "reason": "complete", "tokens_used": 0, "id": prompt["id"]}))
        await ws.wait_closed()

    url = await scripted_host(public)
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("1", url)
        with pytest.raises(NodeError) as info:
            await sdk.inference.send_prompt("hi")
        assert "Rate limit" in info.value.message and info.value.code == "NODE_ERROR"
        empty = await sdk.inference.send_prompt("very long")
        assert empty.text == "" and empty.usage is None and empty.completion_tokens == 0


async def test_malformed_frame_from_host(scripted_host: Callable[[Script], Awaitable[str]]) -> None:
    async def garbage(ws: ServerConnection) -> None:
        await _hello_and_ack(ws)
        await ws.send("{this is not json")
        await ws.wait_closed()

    url = await scripted_host(garbage)
    async with FabstirSDK(retry=RetryPolicy(attempts=0)) as sdk:
        await sdk.inference.connect_to_session("1", url)
        with pytest.raises((RemoteProtocolError, ConnectionClosedError)):
            await sdk.inference.send_prompt("hi", PromptOptions(max_tokens=4))


def test_backoff_grows_and_caps() -> None:
    policy = RetryPolicy(attempts=6, initial_delay=0.1, max_delay=0.5, factor=2.0, jitter=False)
    assert list(backoff(policy)) == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    jittered = list(backoff(RetryPolicy(attempts=4, initial_delay=1.0, max_delay=4.0), random.Random(1)))
    assert len(jittered) == 4 and all(c / 2 <= d <= c for d, c in zip(jittered, [1, 2, 4, 4]))


async def test_forged_receipt_is_an_error_the_user_sees(scripted_host: Callable[[Script], Awaitable[str]]) -> None:
    from nacl.signing import SigningKey

    from fabstir.protocol.signing import Receipt, SignatureError, sign_receipt, text_digest

    host_key, forger = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)

    async def forging(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connected", "message": "ok", "features": ["signed-receipts"],
                                  "signing_key": host_key.verify_key.encode().hex()}))
        init = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "session_init_ack", "session_id": "1", "id": init["id"],
                                  "features": ["signed-receipts"]}))
        for claimed_tokens in (1, 50):
            prompt = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "stream_chunk", "content": "hi", "tokens": 1, "id": prompt["id"]}))
            receipt = sign_receipt(Receipt(host="", model="m", session_id="1", message_index=0, tokens=claimed_tokens,
                                           price_per_token=None, text_sha256=text_digest("hi"), key=""), forger)
            await ws.send(json.dumps({"type": "stream_end", "reason": "complete", "tokens_used": 1,
                                      "id": prompt["id"], "receipt": receipt.to_wire()}))
        await ws.wait_closed()

    url = await scripted_host(forging)
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("1", url)
        with pytest.raises(SignatureError) as info:
            await sdk.inference.send_prompt("hi")
        assert info.value.code == "RECEIPT_INVALID"
        with pytest.raises(SignatureError):
            await sdk.inference.send_prompt("again")
        assert sdk.inference.get_conversation() == [], "an answer with a bad receipt is not recorded"
