"""One WebSocket to one host: thin I/O glue around the protocol core.

A reader task parses every frame with :func:`parse_server_message` and puts
the typed message in an inbox; request code takes messages from the inbox
with a deadline. When the socket closes, the inbox gets a
:class:`ConnectionClosedError`, so a waiting request fails at once instead of
hanging. Third-party exceptions are translated to the fabstir tree here.

Sessions reach hosts only through the small :class:`Transport` interface, opened by a
:data:`Connector` (``FabstirSDK(connector=...)``); :func:`connect_host` (a real
WebSocket, :class:`HostConnection`) is the default. Tests, failover and a gateway can
inject another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import websockets
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect

from fabstir.errors import ConnectError, ConnectionClosedError, FabstirError, RemoteProtocolError, RequestTimeoutError
from fabstir.protocol import ClientMessage, Connected, ServerMessage, encode_message, parse_server_message
from fabstir.protocol.signing import sign_message

__all__ = ["Connector", "HostConnection", "Transport", "connect_host", "ws_url_for"]

_CLOSED = object()


def ws_url_for(host_url: str) -> str:
    """``http(s)://host[:port]`` (as published on chain) becomes ``ws(s)://…/v1/ws``; ws URLs pass through."""
    url = host_url.rstrip("/")
    if url.startswith(("ws://", "wss://")):
        return url if url.endswith("/v1/ws") else url + "/v1/ws"
    if url.startswith("https://"):
        return "wss://" + url[len("https://"):] + "/v1/ws"
    if url.startswith("http://"):
        return "ws://" + url[len("http://"):] + "/v1/ws"
    return "ws://" + url + "/v1/ws"


class Transport(Protocol):
    """What a session needs from its connection to a host."""

    connected: Connected | None
    """The node's greeting (``None`` if it sent none)."""

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        ...

    @property
    def features(self) -> frozenset[str]:
        """Extensions the node advertised in its greeting."""
        ...

    async def send(self, message: ClientMessage) -> None:
        """Send one message. Raises ConnectionClosedError."""
        ...

    async def receive(self, timeout: float | None) -> ServerMessage:
        """The next message. Raises RequestTimeoutError, ConnectionClosedError, RemoteProtocolError."""
        ...

    def drain(self) -> None:
        """Forget messages already received."""
        ...

    async def aclose(self) -> None:
        """Close the connection."""
        ...


class Connector(Protocol):
    """Opens a :class:`Transport` to a host URL (``http://…``, ``ws://…``)."""

    def __call__(self, host_url: str, *, timeout: float | None, compression: bool,
                 signing_key: SigningKey | None) -> Awaitable[Transport]:
        ...


async def connect_host(host_url: str, *, timeout: float | None, compression: bool,
                       signing_key: SigningKey | None) -> Transport:
    """The default :class:`Connector`: a WebSocket to the host's ``/v1/ws``.

    Raises:
        ConnectError: the host refused, did not answer in time, or is not a node.
    """
    return await HostConnection.open(host_url, timeout=timeout, compression=compression, signing_key=signing_key)


class HostConnection:
    """An open WebSocket to a host's ``/v1/ws``."""

    def __init__(self, ws: ClientConnection, url: str, signing_key: SigningKey | None = None) -> None:
        self._ws = ws
        self.url = url
        self._signing_key = signing_key
        self.connected: Connected | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_loop())
        self.closed = False

    @classmethod
    async def open(cls, host_url: str, *, timeout: float | None, compression: bool,
                   max_size: int = 64 << 20, signing_key: SigningKey | None = None) -> HostConnection:
        """Connect to ``host_url`` and wait briefly for the node's ``connected`` greeting.

        Raises:
            ConnectError: the host refused, did not answer in time, or is not a node.
        """
        url = ws_url_for(host_url)
        try:
            ws = await connect(url, open_timeout=timeout, compression="deflate" if compression else None,
                               max_size=max_size, ping_interval=20, ping_timeout=20, close_timeout=2)
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise ConnectError(f"cannot connect to {url}: {_describe(exc)}") from None
        connection = cls(ws, url, signing_key)
        await connection._await_greeting(timeout=2.0)
        return connection

    async def _await_greeting(self, timeout: float) -> None:
        """Take the ``connected`` message if the node sends one (the public node does)."""
        try:
            first = await self.receive(timeout)
        except RequestTimeoutError:
            return
        if isinstance(first, Connected):
            self.connected = first
        else:
            self._inbox.put_nowait(first)

    @property
    def features(self) -> frozenset[str]:
        if self.connected is None or self.connected.features is None:
            return frozenset()
        return frozenset(self.connected.features)

    async def _read_loop(self) -> None:
        try:
            async for frame in self._ws:
                try:
                    self._inbox.put_nowait(parse_server_message(frame))
                except RemoteProtocolError as exc:
                    self._inbox.put_nowait(exc)
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._inbox.put_nowait(_CLOSED)

    async def send(self, message: ClientMessage) -> None:
        """Send one message (signed with Ed25519 when the connection has a signing key).

        Raises:
            ConnectionClosedError: the socket is closed.
        """
        if self._signing_key is None:
            text = encode_message(message)
        else:
            signed = sign_message(message.to_wire(), self._signing_key, int(time.time() * 1000))
            text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
        try:
            await self._ws.send(text)
        except websockets.exceptions.ConnectionClosed as exc:
            raise ConnectionClosedError(f"connection to {self.url} closed: {_describe(exc)}") from None

    async def receive(self, timeout: float | None) -> ServerMessage:
        """The next message from the node.

        Raises:
            RequestTimeoutError: nothing arrived within ``timeout`` seconds.
            ConnectionClosedError: the socket closed.
            RemoteProtocolError: the node sent a malformed frame.
        """
        if not self._inbox.empty():  # fast path: no timer when a frame is already here
            item = self._inbox.get_nowait()
        else:
            try:
                async with asyncio.timeout(timeout):
                    item = await self._inbox.get()
            except TimeoutError:
                raise RequestTimeoutError(f"no answer from {self.url} within {timeout} s") from None
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later receive fails too
            raise ConnectionClosedError(f"connection to {self.url} closed")
        if isinstance(item, FabstirError):
            raise item
        message: ServerMessage = item
        return message

    def drain(self) -> None:
        """Forget messages already received (leftovers of an abandoned request)."""
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is _CLOSED:
                self._inbox.put_nowait(_CLOSED)
                break

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        self.closed = True


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the node running?)"
    return text
