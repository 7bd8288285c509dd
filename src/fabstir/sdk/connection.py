"""One WebSocket to one host: a text-frame pipe, nothing more.

The protocol (parsing, matching answers to requests, encryption, signing) lives in the
sans-I/O :class:`~fabstir.protocol.client_connection.ClientConnection`; a
:class:`~fabstir.sdk.session.Session` feeds it the frames this pipe receives and writes the
frames it returns. A reader task puts every received text frame in an inbox; request code
takes frames from the inbox with a deadline. When the socket closes, the inbox gets a
marker, so a waiting request fails at once instead of hanging. Third-party exceptions are
translated to the fabstir tree here.

Sessions reach hosts only through the small :class:`Transport` interface, opened by a
:data:`Connector` (``FabstirSDK(connector=...)``); :func:`connect_host` (a real
WebSocket, :class:`HostConnection`) is the default. Tests, failover and a gateway can
inject another one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from fabstir.errors import ConnectError, ConnectionClosedError, RequestTimeoutError

__all__ = ["Connector", "HostConnection", "Transport", "connect_host", "ws_url_for"]

_CLOSED = object()
"""The inbox marker for a closed socket (stays in the inbox so every later receive fails too)."""


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
    """What a session needs from its connection to a host: text frames in and out."""

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        ...

    async def send(self, text: str) -> None:
        """Send one text frame. Raises ConnectionClosedError."""
        ...

    async def receive(self, timeout: float | None) -> str:
        """The next text frame. Raises RequestTimeoutError, ConnectionClosedError."""
        ...

    def drain(self) -> list[str]:
        """Take the frames already received, without waiting."""
        ...

    async def aclose(self) -> None:
        """Close the connection."""
        ...


class Connector(Protocol):
    """Opens a :class:`Transport` to a host URL (``http://…``, ``ws://…``)."""

    def __call__(self, host_url: str, *, timeout: float | None, compression: bool) -> Awaitable[Transport]:
        ...


async def connect_host(host_url: str, *, timeout: float | None, compression: bool) -> Transport:
    """The default :class:`Connector`: a WebSocket to the host's ``/v1/ws``.

    Raises:
        ConnectError: the host refused or did not answer in time.
    """
    return await HostConnection.open(host_url, timeout=timeout, compression=compression)


class HostConnection:
    """An open WebSocket to a host's ``/v1/ws``, as a :class:`Transport`."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self._ws = ws
        self.url = url
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_loop())
        self.closed = False

    @classmethod
    async def open(cls, host_url: str, *, timeout: float | None, compression: bool,
                   max_size: int = 64 << 20) -> HostConnection:
        """Connect to ``host_url``.

        Raises:
            ConnectError: the host refused or did not answer in time.
        """
        url = ws_url_for(host_url)
        try:
            ws = await connect(url, open_timeout=timeout, compression="deflate" if compression else None,
                               max_size=max_size, ping_interval=20, ping_timeout=20, close_timeout=2)
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise ConnectError(f"cannot connect to {url}: {_describe(exc)}") from None
        return cls(ws, url)

    async def _read_loop(self) -> None:
        put = self._inbox.put_nowait
        try:
            async for frame in self._ws:
                put(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.closed = True
            put(_CLOSED)

    async def send(self, text: str) -> None:
        """Send one text frame.

        Raises:
            ConnectionClosedError: the socket is closed.
        """
        try:
            await self._ws.send(text)
        except websockets.exceptions.ConnectionClosed as exc:
            raise ConnectionClosedError(f"connection to {self.url} closed: {_describe(exc)}") from None

    async def receive(self, timeout: float | None) -> str:
        """The next text frame from the node.

        Raises:
            RequestTimeoutError: nothing arrived within ``timeout`` seconds.
            ConnectionClosedError: the socket closed.
        """
        inbox = self._inbox
        if not inbox.empty():  # fast path: no timer when a frame is already here
            item = inbox.get_nowait()
        else:
            try:
                async with asyncio.timeout(timeout):
                    item = await inbox.get()
            except TimeoutError:
                raise RequestTimeoutError(f"no answer from {self.url} within {timeout} s") from None
        if isinstance(item, str):
            return item
        inbox.put_nowait(_CLOSED)  # every later receive fails too
        raise ConnectionClosedError(f"connection to {self.url} closed")

    def drain(self) -> list[str]:
        """Take the frames already received (the closed marker stays)."""
        frames: list[str] = []
        inbox = self._inbox
        while not inbox.empty():
            item = inbox.get_nowait()
            if not isinstance(item, str):
                inbox.put_nowait(_CLOSED)
                break
            frames.append(item)
        return frames

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
