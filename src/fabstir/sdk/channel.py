"""``Channel``: one transport and the :class:`ClientConnection` that speaks over it.

The read-feed-write loop of the SDK (as python-websockets' asyncio client around its
sans-I/O ``protocol.py``): the session acts on the connection (``send_*``), :meth:`Channel.flush`
writes the frames it queued, and :meth:`Channel.receive` reads one text frame, feeds it and
returns the events it produced. :meth:`Channel.request` does both for a request that awaits
one reply. The connection reads no clock: each frame is fed with ``time.perf_counter()``.
"""

from __future__ import annotations

import contextlib
import time
from typing import TypeVar

from fabstir.errors import FabstirError, RequestTimeoutError
from fabstir.protocol.client_connection import ClientConnection
from fabstir.protocol.events import ClientEvent, RequestRefused
from fabstir.sdk.connection import Transport

__all__ = ["Channel", "GREETING_WAIT_S"]

GREETING_WAIT_S = 2.0
"""How long a new connection waits for the node's ``connected`` greeting (the public node sends one)."""

_R = TypeVar("_R")


class Channel:
    """One open transport and its protocol state; see the module docstring."""

    __slots__ = ("transport", "protocol")

    def __init__(self, transport: Transport, protocol: ClientConnection) -> None:
        self.transport = transport
        self.protocol = protocol

    @property
    def closed(self) -> bool:
        return self.transport.closed or self.protocol.closed

    async def flush(self) -> None:
        """Write every frame the connection queued. Raises ConnectionClosedError."""
        send = self.transport.send
        for frame in self.protocol.frames_to_send():
            await send(frame)

    async def receive(self, timeout: float | None) -> list[ClientEvent]:
        """Read one frame, feed it, return its events.

        Raises:
            RequestTimeoutError, ConnectionClosedError: from the transport.
            RemoteProtocolError, E2EError: the frame is malformed or does not open (Rule C7).
        """
        text = await self.transport.receive(timeout)
        protocol = self.protocol
        protocol.receive_frame(text, now=time.perf_counter())
        return protocol.events_received()

    async def greet(self, timeout: float = GREETING_WAIT_S) -> None:
        """Take the node's ``connected`` greeting (its features and keys), if it sends one in time."""
        with contextlib.suppress(RequestTimeoutError):
            await self.receive(timeout)

    def settle(self) -> None:
        """Before a new request: feed the frames already received (leftovers of an abandoned request; bad
        ones are dropped) and give up on a request still awaiting its answer."""
        protocol = self.protocol
        for text in self.transport.drain():
            with contextlib.suppress(FabstirError):
                protocol.receive_frame(text, now=time.perf_counter())
        if protocol.busy:
            protocol.abandon()
        protocol.events_received()

    async def request(self, kind: type[_R], request_id: str, timeout: float | None) -> _R:
        """Write the queued request ``request_id`` and wait for its reply of type ``kind``.

        Raises:
            NodeError: the node refused the request.
            RequestTimeoutError, ConnectionClosedError: no reply (the request is abandoned).
            RemoteProtocolError: a malformed frame.
        """
        await self.flush()
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                for event in await self.receive(remaining):
                    if isinstance(event, RequestRefused) and event.request_id in (None, request_id):
                        raise event.error
                    if isinstance(event, kind) and getattr(event, "request_id", None) in (None, request_id):
                        return event
        finally:
            if self.protocol.busy and self.protocol.awaiting == request_id:
                self.protocol.abandon()

    async def aclose(self) -> None:
        """Zero the keys and close the transport."""
        self.protocol.close()
        await self.transport.aclose()
