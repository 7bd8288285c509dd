"""Request and connection limits of a real node on 127.0.0.1: bodies, stalled reads, idle sockets, per-address caps.

Every wait has a generous deadline and waits on the condition it asserts; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fabstir.node.config import NodeConfig
from fabstir.node.guards import ConnectionGuard, ConnectionTracker, RequestLimitError, read_body
from fabstir.node.server import EmbeddedServer, NodeServer, bind_socket, server_config
from tests.conftest import NodeFactory
from tests.helpers import WireClient

DEADLINE = 60.0
"""Seconds any single wait may take on a loaded machine before the test fails."""


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: status, headers (lower-case), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), DEADLINE)
    return int(status_line.split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return await asyncio.wait_for(reader.read(65536), DEADLINE) == b""
    except ConnectionError:
        return True


def code_of(body: bytes) -> str:
    details: dict[str, Any] = json.loads(body)["details"]
    return str(details["code"])


async def open_raw(node: NodeServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", node.port)


# --- request bodies: read_body behind the node's server layer, on a tiny app ---------------------------------------


@contextlib.asynccontextmanager
async def serve_body_app(config: NodeConfig) -> AsyncIterator[int]:
    """A one-route app (``POST /body`` answers the body's length) served exactly as a node is; yields its port."""

    async def body(request: Request) -> Response:
        try:
            data = await read_body(request, config.max_frame_bytes, config.request_read_timeout)
        except RequestLimitError as exc:
            return JSONResponse({"details": {"code": exc.code}}, status_code=exc.status)
        return JSONResponse({"length": len(data)})

    tracker = ConnectionTracker(config.max_connections_per_address)
    app = Starlette(routes=[Route("/body", body, methods=["POST"])],
                    middleware=[Middleware(ConnectionGuard, tracker=tracker, ws_idle_timeout=config.ws_idle_timeout)])
    app.state.connections = tracker
    sock = bind_socket("127.0.0.1", 0)
    server = EmbeddedServer(server_config(app, config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        assert await wait_until(lambda: asyncio.sleep(0, server.started or task.done())) and not task.done()
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


async def send_chunked_until_refused(port: int, path: str, piece_size: int, offered: int
                                     ) -> tuple[int, int, dict[str, str], bytes, bool]:
    """Send a chunked body of up to ``offered`` bytes while reading the answer.

    Returns the body bytes that left the client, the answer (status, headers, body) and whether the server
    then closed the connection.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 "transfer-encoding: chunked\r\n\r\n".encode())
    piece = b"%x\r\n%s\r\n" % (piece_size, b" " * piece_size)
    response = asyncio.ensure_future(read_response(reader))
    sent = 0

    async def send() -> None:
        nonlocal sent
        try:
            while sent < offered and not response.done():
                writer.write(piece)
                await writer.drain()
                sent += piece_size
        except ConnectionError:
            pass  # the server closed the connection: the rest of the body was never read

    await asyncio.wait_for(send(), DEADLINE)
    status, headers, body = await asyncio.wait_for(response, DEADLINE)
    closed = await closed_by_server(reader)
    writer.close()
    return sent, status, headers, body, closed


async def test_chunked_body_over_the_limit_is_refused_without_reading_it_all() -> None:
    """A chunked body has no Content-Length: reading must stop at the limit, not buffer the whole body."""
    limit, offered = 64 * 1024, 256 * 1024 * 1024
    async with serve_body_app(NodeConfig(max_frame_bytes=limit)) as port:
        sent, status, headers, body, closed = await send_chunked_until_refused(port, "/body", limit, offered)
    assert status == 413 and code_of(body) == "PAYLOAD_TOO_LARGE"
    assert headers.get("connection") == "close" and closed
    # what left the client is at most the limit, a bounded linger and the socket buffers: far from what it offered
    assert sent < offered // 4, f"the client got {sent} bytes of the body out; the server kept reading"


async def test_declared_length_over_the_limit_is_refused_before_the_body() -> None:
    async with serve_body_app(NodeConfig(max_frame_bytes=1024)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 300000000\r\n\r\n")  # and no body
        status, headers, body = await read_response(reader)
        assert status == 413 and code_of(body) == "PAYLOAD_TOO_LARGE" and headers.get("connection") == "close"
        assert await closed_by_server(reader)
        writer.close()


async def test_stalled_body_gets_a_request_timeout() -> None:
    async with serve_body_app(NodeConfig(request_read_timeout=1.0)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"prompt\": ")  # stalls
        status, headers, body = await read_response(reader)
        assert status == 408 and code_of(body) == "REQUEST_TIMEOUT" and headers.get("connection") == "close"
        assert await closed_by_server(reader)
        writer.close()


async def test_a_body_within_the_limits_is_read_whole_and_the_connection_kept() -> None:
    async with serve_body_app(NodeConfig(max_frame_bytes=1000)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # the same connection serves both: a body read whole does not close it
            writer.write(b"POST /body HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"200\r\n" + b"a" * 512 + b"\r\n1e8\r\n" + b"b" * 488 + b"\r\n0\r\n\r\n")
            status, headers, body = await read_response(reader)
            assert status == 200 and json.loads(body) == {"length": 1000} and headers.get("connection") != "close"
        writer.close()


async def test_node_refuses_a_huge_chunked_inference_body_without_reading_it(node_factory: NodeFactory) -> None:
    """The node's own POST /v1/inference reads its body through read_body (the issue's 300 MiB request)."""
    limit, offered = 64 * 1024, 256 * 1024 * 1024
    node = await node_factory(max_frame_bytes=limit)
    sent, status, headers, body, closed = await send_chunked_until_refused(node.port, "/v1/inference", limit, offered)
    assert status == 413 and code_of(body) == "PAYLOAD_TOO_LARGE"
    assert headers.get("connection") == "close" and closed
    assert sent < offered // 4, f"the client got {sent} bytes of the body out; the node kept reading"
    async with httpx.AsyncClient(timeout=DEADLINE) as client:  # and it keeps serving
        assert (await client.get(f"{node.url}/health")).status_code == 200


# --- stalled heads and handshakes --------------------------------------------------------------------------------


@pytest.mark.parametrize("partial", [
    b"",  # connects and sends nothing
    b"POST /v1/inference HTTP/1.1\r\nhost: x\r\n",  # slowloris: a head that never ends
    b"GET /v1/ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",  # a stalled WS handshake
], ids=["silent", "partial-head", "partial-ws-handshake"])
async def test_stalled_request_head_is_timed_out_and_closed(node_factory: NodeFactory, partial: bytes) -> None:
    node = await node_factory(request_read_timeout=1.0)
    reader, writer = await open_raw(node)
    writer.write(partial)
    status, headers, body = await read_response(reader)
    assert status == 408 and code_of(body) == "REQUEST_TIMEOUT" and headers.get("connection") == "close"
    assert await closed_by_server(reader)
    writer.close()


async def test_kept_alive_connection_owes_its_next_head_in_time(node_factory: NodeFactory) -> None:
    node = await node_factory(request_read_timeout=1.0)
    reader, writer = await open_raw(node)
    writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers.get("connection") != "close"  # a complete request keeps the connection
    writer.write(b"GET /health HTTP/1.1\r\n")  # the second head stalls
    status, _, body = await read_response(reader)
    assert status == 408 and code_of(body) == "REQUEST_TIMEOUT"
    assert await closed_by_server(reader)
    writer.close()


# --- idle WebSockets ---------------------------------------------------------------------------------------------


async def test_idle_websocket_is_closed_after_the_idle_limit(node_factory: NodeFactory) -> None:
    node = await node_factory(ws_idle_timeout=1.0)
    client = await WireClient.open(node.ws_url)
    await asyncio.wait_for(client.ws.wait_closed(), DEADLINE)
    assert client.ws.close_code == 1001
    assert (client.ws.close_reason or "").startswith("IDLE_TIMEOUT")


# --- connections per address -------------------------------------------------------------------------------------


async def test_connections_over_the_per_address_cap_are_refused(node_factory: NodeFactory) -> None:
    cap = 3
    node = await node_factory(max_connections_per_address=cap, request_read_timeout=60.0)
    # idle TCP connections that never send a byte count as much as WebSockets do
    silent = [await open_raw(node) for _ in range(cap - 1)]
    first = await WireClient.open(node.ws_url)

    over = await connect(node.ws_url)  # the handshake completes, then a coded close (1013: try again later)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(over.recv(), DEADLINE)
    assert over.close_code == 1013 and (over.close_reason or "").startswith("TOO_MANY_CONNECTIONS")

    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        refused = await client.get(f"{node.url}/health")
    assert refused.status_code == 503 and refused.json()["details"]["code"] == "TOO_MANY_CONNECTIONS"

    # closing one frees its place: a new connection is admitted once the server has seen the close
    _, writer = silent.pop()
    writer.close()

    async def admitted() -> bool:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            return (await client.get(f"{node.url}/health")).status_code == 200

    assert await wait_until(admitted)
    await first.ws.close()
    for _, writer in silent:
        writer.close()


async def test_cap_is_per_address_and_zero_means_none() -> None:
    tracker = ConnectionTracker(2)
    assert tracker.opened(("10.0.0.1", 1)) and tracker.opened(("10.0.0.1", 2))
    assert not tracker.opened(("10.0.0.1", 3))
    assert tracker.opened(("10.0.0.2", 1)), "another address has its own allowance"
    assert not tracker.admitted(("10.0.0.1", 3)) and tracker.admitted(("10.0.0.1", 1))
    assert tracker.admitted(("10.0.0.9", 5)), "a connection the tracker never saw is not refused"
    tracker.closed(("10.0.0.1", 1))
    tracker.closed(("10.0.0.1", 1))  # idempotent
    assert tracker.count("10.0.0.1") == 1 and tracker.opened(("10.0.0.1", 4))
    unlimited = ConnectionTracker(0)
    assert all(unlimited.opened(("10.0.0.1", port)) for port in range(1000))
