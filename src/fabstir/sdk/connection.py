"""One WebSocket to one host: a text-frame pipe, nothing more.

The protocol (parsing, matching answers to requests, encryption, signing) lives in the
sans-I/O :class:`~fabstir.protocol.client_connection.ClientConnection`; a
:class:`~fabstir.sdk.session.Session` feeds it the frames this pipe receives and writes the
frames it returns. A reader task puts every received text frame in an inbox; request code
takes frames from the inbox with a deadline. When the socket closes, a waiting request fails at
once (after the frames that came before the close) instead of hanging. Third-party exceptions are
translated to the fabstir tree here.

Sessions reach hosts only through the small :class:`Transport` interface, opened by a
:data:`Connector` (``FabstirSDK(connector=...)``); :func:`connect_host` (a real
WebSocket, :class:`HostConnection`) is the default. Tests, failover and a gateway can
inject another one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable
from typing import Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from fabstir.errors import ConnectError, ConnectionClosedError, RequestTimeoutError

__all__ = ["Connector", "HostConnection", "Transport", "connect_host", "ws_url_for"]

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
    """An open WebSocket to a host's ``/v1/ws``, as a :class:`Transport` (one receiver at a time)."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self._ws = ws
        self.url = url
        self._inbox: deque[str] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self._reader = asyncio.create_task(self._read_loop())

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

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _read_loop(self) -> None:
        append = self._inbox.append
        try:
            async for frame in self._ws:
                append(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))
                if self._waiter is not None:
                    self._wake()
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._wake()

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
        """The next text frame from the node (those received before a close come first).

        Raises:
            RequestTimeoutError: nothing arrived within ``timeout`` seconds.
            ConnectionClosedError: the socket closed.
        """
        inbox = self._inbox
        if not inbox and not self.closed:
            await self._wait(timeout)
        if inbox:
            return inbox.popleft()
        if self.closed:
            raise ConnectionClosedError(f"connection to {self.url} closed")
        raise RequestTimeoutError(f"no answer from {self.url} within {timeout} s")

    async def _wait(self, timeout: float | None) -> None:
        """Until the reader appends a frame or sees the close, or ``timeout`` passes (a bare timer: this is
        the per-token path when the SDK is ahead of the node)."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def drain(self) -> list[str]:
        """Take the frames already received."""
        frames = list(self._inbox)
        self._inbox.clear()
        return frames

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        self.closed = True
        self._wake()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the node running?)"
    return text
