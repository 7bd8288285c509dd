"""Limits on what one client can hold: request bodies, stalled reads, idle sockets, connections per address.

Three layers, each cheap where the attack is:

- :func:`read_body` reads a request body piece by piece and stops at the size limit (a chunked body has no
  ``Content-Length`` to check first) or at its deadline (a stalled body).
- :func:`guarded_protocols` gives uvicorn HTTP and WebSocket protocol classes that count every TCP connection
  per client address (from the moment it is accepted, before any byte) and close a connection whose request
  head does not arrive within the read timeout (slowloris, a stalled WebSocket handshake).
- :class:`ConnectionGuard`, an ASGI middleware, answers connections over the per-address cap with a coded
  refusal (HTTP 503 ``TOO_MANY_CONNECTIONS``; WebSocket close 1013), closes WebSockets on which no message
  went either way for the idle limit (close 1001 ``IDLE_TIMEOUT``), and closes an HTTP connection whose
  response went out before its request body was read whole (so an unread body is not drained).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import h11
from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from fabstir.errors import RemoteProtocolError

__all__ = [
    "BodyTimeoutError",
    "ConnectionGuard",
    "ConnectionTracker",
    "PayloadTooLargeError",
    "RequestLimitError",
    "TOO_MANY_CONNECTIONS",
    "IDLE_TIMEOUT",
    "guarded_protocols",
    "read_body",
]

TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
"""Code of the refusal of a connection over the per-address cap."""
IDLE_TIMEOUT = "IDLE_TIMEOUT"
"""Code in the close reason of a WebSocket closed for idleness."""
WS_CLOSE_TRY_AGAIN_LATER = 1013
WS_CLOSE_GOING_AWAY = 1001

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Client = tuple[str, int]


class RequestLimitError(RemoteProtocolError):
    """A request broke a server limit; ``status`` is the HTTP status to answer with."""

    status = 400


class PayloadTooLargeError(RequestLimitError):
    """The request body is larger than allowed (declared or streamed)."""

    default_code = "PAYLOAD_TOO_LARGE"
    status = 413


class BodyTimeoutError(RequestLimitError):
    """The request body did not arrive whole before its deadline."""

    default_code = "REQUEST_TIMEOUT"
    status = 408


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """Read ``request``'s body, refusing more than ``max_bytes`` or a body slower than ``timeout`` seconds.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked body is read only up to
    the first piece that crosses the limit. ``timeout`` is the deadline for the whole body (a body sent a byte
    at a time is as stalled as one not sent). The body stream is consumed either way.

    Raises:
        PayloadTooLargeError: the body is (or says it is) over ``max_bytes`` (HTTP 413).
        BodyTimeoutError: the body did not arrive whole within ``timeout`` seconds (HTTP 408).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the limit of {max_bytes}")
    pieces: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for piece in request.stream():
                size += len(piece)
                if size > max_bytes:
                    raise PayloadTooLargeError(f"body exceeds the limit of {max_bytes} bytes")
                pieces.append(piece)
    except TimeoutError:
        raise BodyTimeoutError(f"request body not received within {timeout:g} s") from None
    return b"".join(pieces)


class ConnectionTracker:
    """Open TCP connections per client address; the first ``max_per_address`` of an address are admitted.

    ``max_per_address`` 0 admits every connection. A connection the tracker never saw (another server, a test
    client) counts as admitted.
    """

    def __init__(self, max_per_address: int) -> None:
        self.max_per_address = max_per_address
        self._admitted: dict[str, set[Client]] = {}
        self._refused: set[Client] = set()

    def opened(self, client: Client) -> bool:
        """Record a new connection; ``False`` when it is over its address's cap."""
        admitted = self._admitted.setdefault(client[0], set())
        if self.max_per_address and len(admitted) >= self.max_per_address:
            self._refused.add(client)
            return False
        admitted.add(client)
        return True

    def closed(self, client: Client) -> None:
        """Forget a connection (idempotent)."""
        self._refused.discard(client)
        admitted = self._admitted.get(client[0])
        if admitted is not None:
            admitted.discard(client)
            if not admitted:
                del self._admitted[client[0]]

    def admitted(self, client: Client) -> bool:
        return client not in self._refused

    def count(self, address: str) -> int:
        """Admitted connections now open from ``address``."""
        return len(self._admitted.get(address, ()))


def _client(value: Any) -> Client | None:
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def guarded_protocols(tracker: ConnectionTracker, read_timeout: float
                      ) -> tuple[type[H11Protocol], type[WebSocketsSansIOProtocol]]:
    """uvicorn protocol classes (``http=``, ``ws=``) that count connections and time out stalled heads.

    A connection must deliver its request head (or WebSocket handshake request) within ``read_timeout``
    seconds of opening or of its previous response ending; otherwise it gets 408 ``REQUEST_TIMEOUT`` and is
    closed.
    """

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _upgraded = False
        _lingering: _LingeringClose | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(cast(asyncio.Transport, _LingeringTransport(transport, self)))
            if self.client is not None:
                tracker.opened(self.client)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            if self._lingering is not None:
                self._lingering.cancel()
            if self.client is not None and not self._upgraded:
                tracker.closed(self.client)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._lingering is not None:
                self._lingering.discard(len(data))
            else:
                super().data_received(data)

        def eof_received(self) -> None:
            if self._lingering is not None:
                self._lingering.finish()

        def body_unread(self) -> bool:
            """Whether the peer is still sending a request body the server will not read."""
            return not self._upgraded and self.conn.their_state is h11.SEND_BODY

        def linger(self, transport: asyncio.Transport) -> None:
            self._cancel_head_timer()
            self._lingering = _LingeringClose(transport, self.loop)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()  # a kept-alive connection owes the next head within the timeout

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._cancel_head_timer()
            self._upgraded = True  # from here the WebSocket protocol owns the connection (and its count)
            super().handle_websocket_upgrade(event)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(read_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return  # a head arrived: the request (and read_body) take it from here
            body = json.dumps({"error_type": "request_timeout", "details": {"code": "REQUEST_TIMEOUT"},
                               "message": f"request head not received within {read_timeout:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                tracker.closed(self.client)
            super().connection_lost(exc)

    return GuardedH11Protocol, GuardedWebSocketProtocol


LINGER_SECONDS = 5.0
"""Longest a connection closed with its request body unread keeps reading (and dropping) what the client sends,
so that the client reads the response instead of losing it to a reset."""
LINGER_BYTES = 4 << 20
"""Most bytes dropped while lingering; then the connection is closed at once."""


class _LingeringClose:
    """Half-closes a connection and drops incoming data until EOF, ``LINGER_BYTES`` or ``LINGER_SECONDS``."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.dropped = 0
        if transport.can_write_eof():
            transport.write_eof()  # after the response is flushed: the client sees it, then EOF
        transport.resume_reading()
        self._timer = loop.call_later(LINGER_SECONDS, self.finish)

    def discard(self, size: int) -> None:
        self.dropped += size
        if self.dropped > LINGER_BYTES:
            self.finish()

    def finish(self) -> None:
        self._timer.cancel()
        self.transport.close()

    def cancel(self) -> None:
        self._timer.cancel()


class _LingeringTransport:
    """A transport whose ``close()`` lingers while the client is still sending a body that will not be read.

    Closing a socket with unread data makes the kernel send a reset, and the client then loses the response
    (a 413, say) that was just written. Everything else goes straight to the real transport.
    """

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closing = False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._protocol.body_unread() and not self._transport.is_closing():
            self._protocol.linger(self._transport)
        else:
            self._transport.close()

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ConnectionGuard:
    """ASGI middleware: refuses connections over the per-address cap and closes idle WebSockets.

    ``ws_idle_timeout`` 0 keeps idle WebSockets open forever.
    """

    def __init__(self, app: ASGIApp, *, tracker: ConnectionTracker, ws_idle_timeout: float) -> None:
        self.app = app
        self.tracker = tracker
        self.ws_idle_timeout = ws_idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = _client(scope.get("client"))
        if client is not None and not self.tracker.admitted(client):
            await self._refuse(scope, receive, send)
        elif scope["type"] == "http":
            await _HttpCloser(self.app, scope, receive, send).run()
        elif self.ws_idle_timeout > 0:
            await _IdleWebSocket(self.app, scope, receive, send, self.ws_idle_timeout).run()
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.tracker.max_per_address
        message = f"more than {limit} connections from this address; close some and try again"
        if scope["type"] == "websocket":
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": WS_CLOSE_TRY_AGAIN_LATER,
                            "reason": f"{TOO_MANY_CONNECTIONS}: more than {limit} connections"})
            return
        body = json.dumps({"error_type": "too_many_connections", "message": message, "request_id": None,
                           "details": {"code": TOO_MANY_CONNECTIONS, "limit": limit}}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                                (b"connection", b"close"), (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})


class _HttpCloser:
    """Adds ``connection: close`` to a response sent before its request body was read whole."""

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app, self.scope, self._receive, self._send = app, scope, receive, send
        headers = dict(scope.get("headers") or [])
        self.body_done = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0"

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self.body_done:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await self._send(message)


class _IdleWebSocket:
    """Closes the WebSocket (1001, ``IDLE_TIMEOUT``) after ``limit`` seconds with no message either way."""

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: float) -> None:
        self.app, self.scope, self._receive, self._send, self.limit = app, scope, receive, send, limit
        self.last_activity = time.monotonic()
        self.closed_by_us = False

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.closed_by_us:
            return {"type": "websocket.disconnect", "code": WS_CLOSE_GOING_AWAY}
        pending = asyncio.ensure_future(self._receive())
        try:
            while True:
                left = self.last_activity + self.limit - time.monotonic()
                if left <= 0:
                    return await self._close_idle()
                done, _ = await asyncio.wait({pending}, timeout=left)
                if done:
                    self.last_activity = time.monotonic()
                    return pending.result()
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending

    async def send(self, message: Message) -> None:
        if self.closed_by_us:
            return  # the socket is closed: a late answer has nowhere to go
        self.last_activity = time.monotonic()
        await self._send(message)

    async def _close_idle(self) -> Message:
        self.closed_by_us = True
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": WS_CLOSE_GOING_AWAY,
                              "reason": f"{IDLE_TIMEOUT}: no message for {self.limit:g} s"})
        return {"type": "websocket.disconnect", "code": WS_CLOSE_GOING_AWAY}
