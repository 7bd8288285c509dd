"""Test helpers: a raw WebSocket client for wire-level tests (JSON in and out, nothing from the SDK), free ports."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


class WireClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, *, expect_connected: bool = True, **kwargs: Any) -> WireClient:
        client = cls(await connect(url, **kwargs))
        if expect_connected:
            hello = await client.recv()
            assert hello["type"] == "connected", hello
        return client

    async def send(self, obj: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = json.loads(frame)
        return message

    async def until_end(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Every frame up to and including the next ``stream_end``."""
        frames = []
        while True:
            frame = await self.recv(timeout)
            frames.append(frame)
            if frame["type"] == "stream_end":
                return frames

    async def init(self, session_id: str = "1", **extra: Any) -> dict[str, Any]:
        await self.send({"type": "session_init", "session_id": session_id, **extra})
        ack = await self.recv()
        assert ack["type"] == "session_init_ack", ack
        return ack

    async def close(self) -> None:
        await self.ws.close()


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["content"] for f in frames if f["type"] == "stream_chunk")


def prompt(text: str, *, rid: str = "r", max_tokens: int = 8, temperature: float = 0.0,
           **extra: Any) -> dict[str, Any]:
    return {"type": "prompt", "id": rid, "prompt": text,
            "request": {"model": "", "prompt": text, "max_tokens": max_tokens, "temperature": temperature},
            **extra}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on right now (TCP by default; ``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_port_url() -> str:
    """An ``http://127.0.0.1:<port>`` URL where nothing answers: a dead host or service."""
    return f"http://127.0.0.1:{free_port()}"
