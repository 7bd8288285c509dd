"""The SDK's I/O glue: the text-frame transport, the Channel around a ClientConnection, and the per-token fast path.

A :class:`MemoryTransport` stands in for the socket where only the glue is under test; the
HostConnection tests use a real ``websockets`` server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from fabstir.errors import ConnectionClosedError, NodeError, RequestTimeoutError
from fabstir.protocol import (
    ChunkReceived,
    ClientConnection,
    Feature,
    InferenceRequest,
    SessionInitAck,
    SessionState,
    StreamEnded,
)
from fabstir.sdk.channel import Channel
from fabstir.sdk.connection import HostConnection


class MemoryTransport:
    """A :class:`~fabstir.sdk.connection.Transport` fed by the test (``push``); ``sent`` holds what went out."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self._inbox: deque[str] = deque()
        self._arrived = asyncio.Event()
        self.closed = False

    def push(self, **frame: object) -> None:
        self._inbox.append(json.dumps(frame))
        self._arrived.set()

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def receive(self, timeout: float | None) -> str:
        if not self._inbox:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                raise RequestTimeoutError("nothing") from None
        return self._inbox.popleft()

    def drain(self) -> list[str]:
        frames = list(self._inbox)
        self._inbox.clear()
        return frames

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def channel() -> Channel:
    return Channel(MemoryTransport(), ClientConnection("s1", job_id=7))


def pipe(channel: Channel) -> MemoryTransport:
    assert isinstance(channel.transport, MemoryTransport)
    return channel.transport


async def test_greeting_then_a_request_and_its_reply(channel: Channel) -> None:
    pipe(channel).push(type="connected", message="hi", features=[Feature.SERVER_CONTEXT.value])
    await channel.greet(1.0)
    assert Feature.SERVER_CONTEXT in channel.protocol.features
    rid = channel.protocol.send_init(request_id="i1")
    pipe(channel).push(type="session_init_ack", status="success", session_id="s1", id="other", message="x")
    pipe(channel).push(type="session_init_ack", status="success", session_id="s1", id=rid, message="ok")
    ack = await channel.request(SessionInitAck, rid, 1.0)
    assert ack.request_id == "i1" and channel.protocol.state is SessionState.READY
    assert [frame["type"] for frame in pipe(channel).sent] == ["session_init"]


async def test_a_refusal_raises_and_a_silent_node_abandons_the_request(channel: Channel) -> None:
    rid = channel.protocol.send_init(request_id="i1")
    pipe(channel).push(type="error", code="JOB_NOT_FOUND", message="no such job", id=rid)
    pipe(channel).push(type="stream_end", reason="error", tokens_used=0, id=rid)
    with pytest.raises(NodeError) as refused:
        await channel.request(SessionInitAck, rid, 1.0)
    assert refused.value.code == "JOB_NOT_FOUND" and not channel.protocol.busy
    rid = channel.protocol.send_init(request_id="i2")
    with pytest.raises(RequestTimeoutError):
        await channel.request(SessionInitAck, rid, 0.05)
    assert not channel.protocol.busy, "a timed-out request no longer blocks the next one"
    pipe(channel).push(type="session_init_ack", status="success", session_id="s1", id="i2", message="late")
    channel.settle()  # the late reply is a leftover, not an answer to anything
    assert not channel.protocol.busy and channel.protocol.events_received() == []


def test_plain_chunks_take_the_fast_path_with_the_same_events() -> None:
    """A plaintext chunk of the prompt in progress: its id or none is taken, another id dropped (Rule C3)."""
    protocol = ClientConnection("s1")
    rid = protocol.send_prompt(InferenceRequest(prompt="hi"), request_id="p1", now=1.0)
    for frame in ({"content": "a", "tokens": 1, "id": rid}, {"content": "b", "tokens": 2},
                  {"content": "x", "tokens": 5, "id": "someone-else"}, {"content": "", "tokens": 0, "id": rid}):
        protocol.receive_frame(json.dumps({"type": "stream_chunk", **frame}), now=2.0)
    assert protocol.events_received() == [ChunkReceived("a", 1, "p1"), ChunkReceived("b", 2, "p1")]
    position = protocol.position
    assert position is not None and (position.text, position.tokens, position.done) == ("ab", 3, False)
    protocol.receive_frame(json.dumps({"type": "stream_end", "reason": "complete", "tokens_used": 3}), now=3.0)
    [ended] = protocol.events_received()
    assert isinstance(ended, StreamEnded) and ended.snapshot.text == "ab" and ended.snapshot.ttft_s == 1.0
    protocol.receive_frame(json.dumps({"type": "stream_chunk", "content": "late", "tokens": 1, "id": rid}))
    assert protocol.events_received() == [] and protocol.state is SessionState.CONNECTED


@pytest.fixture
async def host() -> AsyncIterator[str]:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("one")
        await ws.send(b'"two"')
        await ws.recv()
        await ws.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"


async def test_host_connection_is_a_text_pipe(host: str) -> None:
    connection = await HostConnection.open(host, timeout=5.0, compression=False)
    assert await connection.receive(5.0) == "one" and await connection.receive(5.0) == '"two"'
    with pytest.raises(RequestTimeoutError):
        await connection.receive(0.05)
    await connection.send("bye")
    with pytest.raises(ConnectionClosedError):
        await connection.receive(5.0)
    assert connection.closed and connection.drain() == []
    with pytest.raises(ConnectionClosedError):
        await connection.receive(None)
    await connection.aclose()


async def test_settle_gives_up_on_a_request_left_behind(channel: Channel) -> None:
    """A stream dropped without aclose leaves its prompt awaited; the next request starts from a clean slate."""
    channel.protocol.send_prompt(InferenceRequest(prompt="dropped"), request_id="p1")
    pipe(channel).push(type="stream_chunk", content="late", tokens=1, id="p1")
    channel.settle()
    assert not channel.protocol.busy and channel.protocol.state is SessionState.CONNECTED
    assert channel.protocol.events_received() == []
    channel.protocol.send_prompt(InferenceRequest(prompt="next"), request_id="p2")
