"""Serving the gateway with uvicorn on a socket bound here (``port=0`` picks a free one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Iterator

import uvicorn

from fabstir._net import bind_socket
from fabstir.gateway.app import build_gateway_app
from fabstir.gateway.keys import KeyStore
from fabstir.gateway.service import Gateway

__all__ = ["GatewayServer", "serve_gateway"]


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the embedding program owns Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GatewayServer:
    """A running gateway: its :attr:`url` (``…/v1`` is the OpenAI ``base_url``)."""

    def __init__(self, server: _Server, task: asyncio.Task[None], host: str, port: int) -> None:
        self._server, self._task = server, task
        self.url = f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return self.url + "/v1"

    async def serve_forever(self) -> None:
        await self._task


@contextlib.asynccontextmanager
async def serve_gateway(gateway: Gateway, *, host: str = "127.0.0.1", port: int = 0,
                        api_keys: Collection[str] | KeyStore = ()) -> AsyncIterator[GatewayServer]:
    """Serve ``gateway`` until the block exits; its sessions are closed then.

    Raises:
        ConfigError: the port is in use or cannot be bound.
    """
    sock = bind_socket(host, port)
    config = uvicorn.Config(build_gateway_app(gateway, api_keys=api_keys), log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=5)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield GatewayServer(server, task, host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
        await gateway.aclose()
