"""Run a node in-process with uvicorn, on a socket we bind ourselves.

Binding the socket first gives a clear error for a busy port and lets
``port=0`` pick a free one whose number is then known (tests, the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from fabstir._net import bind_socket
from fabstir.errors import ConfigError
from fabstir.node.announce import NodeAnnouncer
from fabstir.node.app import Progress, build_app, build_billing, build_runtime, load_engines
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.deflate import SmallMessagesUncompressedFactory
from fabstir.node.engines.pool import EnginePool
from fabstir.node.guards import guarded_protocols
from fabstir.node.models import DEFAULT_MODEL_FILE
from fabstir.node.runtime import NodeRuntime

__all__ = ["EmbeddedServer", "NodeServer", "bind_socket", "check_before_loading", "serve_node", "server_config"]

WS_HARD_LIMIT_FACTOR = 4
"""Frames up to this multiple of ``max_frame_bytes`` are read and answered with FRAME_TOO_LARGE;
larger ones close the connection (1009)."""


def check_before_loading(config: NodeConfig) -> None:
    """Check what a node needs besides its model, before the model loads: a paid node's key and network file.

    Raises:
        ConfigError: a network without ``host_key`` (``HOST_KEY_REQUIRED``), or a network file that cannot be
            read or has the wrong shape (``INVALID_NETWORK_FILE``).
    """
    if config.network is None:
        return
    if not config.host_key:
        raise ConfigError("a paid node needs the host's private key: set FABSTIR_NODE_HOST_KEY",
                          code="HOST_KEY_REQUIRED")
    from fabstir.chain.network import NetworkConfig

    NetworkConfig.load(config.network)


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the embedding program owns Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _small_messages_uncompressed(protocol: type[WebSocketsSansIOProtocol]) -> type[WebSocketsSansIOProtocol]:
    """``protocol`` whose permessage-deflate leaves messages under :data:`COMPRESS_MIN_BYTES` uncompressed
    (same negotiation and settings as uvicorn's; see :mod:`fabstir.node.deflate`)."""

    class SmallMessagesUncompressedProtocol(protocol):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.conn.available_extensions:
                self.conn.available_extensions = [SmallMessagesUncompressedFactory(
                    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5})]

    return SmallMessagesUncompressedProtocol


def server_config(app: Starlette, config: NodeConfig) -> uvicorn.Config:
    """uvicorn settings for serving ``app`` as a node: frame limits, permessage-deflate for all but small
    messages, and the protocols of :func:`fabstir.node.guards.guarded_protocols` counting into
    ``app.state.connections``."""
    http_protocol, ws_protocol = guarded_protocols(app.state.connections, config.request_read_timeout)
    ws_protocol = _small_messages_uncompressed(ws_protocol)
    return uvicorn.Config(
        app,
        log_level="warning",
        http=http_protocol,
        ws=ws_protocol,
        ws_max_size=config.max_frame_bytes * WS_HARD_LIMIT_FACTOR,
        ws_per_message_deflate=config.ws_compression,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )


class NodeServer:
    """A running node: ``url`` and ``ws_url`` are valid between :meth:`start` and :meth:`aclose`."""

    def __init__(self, runtime: NodeRuntime, sock: socket.socket | None = None) -> None:
        self.runtime = runtime
        self.announcer: NodeAnnouncer | None = None
        """Announces the node to discovery sources, when its config names any (see NodeConfig.discovery_url)."""
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket = sock
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (kept after the server stops, for messages and restarts)."""
        if self._port is None:
            assert self._socket is not None, "server not started"
            self._port = int(self._socket.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        host = self.runtime.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/v1/ws"

    async def start(self) -> None:
        """Bind and start serving; returns once the server accepts connections."""
        config = self.runtime.config
        if self._socket is None:
            self._socket = bind_socket(config.host, config.port)
        self._port = int(self._socket.getsockname()[1])
        self._server = EmbeddedServer(server_config(build_app(self.runtime), config))
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ConfigError("the node stopped while starting")
            await asyncio.sleep(0.01)

    async def serve_forever(self) -> None:
        """Wait until the server stops (Ctrl-C in the CLI)."""
        assert self._task is not None
        await self._task

    async def aclose(self) -> None:
        """Stop accepting, close connections and free the engines."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()
        self.runtime.inference.pool.close()


@contextlib.asynccontextmanager
async def serve_node(
    config: NodeConfig,
    *,
    pool: EnginePool | None = None,
    billing: BillingService | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[NodeServer]:
    """Bind the port, load the model (unless ``pool`` is given), serve, and stop on exit.

    A paid node bills through ``billing``, or through one built from ``config.network``.

    Raises:
        ConfigError: the port is busy, or the chain settings are incomplete (checked before anything slow).
        ModelNotFoundError, EngineError: the model cannot be loaded.
    """
    check_before_loading(config)
    sock = bind_socket(config.host, config.port)
    try:
        if pool is None:
            pool = await asyncio.to_thread(load_engines, config, progress)
        if billing is None and config.network is not None:
            model_file = Path(config.model_path).name if config.model_path else DEFAULT_MODEL_FILE
            billing = await asyncio.to_thread(build_billing, config, model_file, progress)
    except BaseException:
        sock.close()
        if pool is not None:
            pool.close()
        raise
    if billing is not None:
        billing.watch_engines(pool.quiet_for)
    server = NodeServer(build_runtime(config, pool, billing), sock)
    announcer: NodeAnnouncer | None = None
    try:
        if billing is not None:
            await billing.start()
        await server.start()
        if NodeAnnouncer.wanted(server.runtime):
            announcer = server.announcer = NodeAnnouncer(server.runtime, server.url)
            await announcer.start()
        yield server
    finally:
        if announcer is not None:
            await announcer.aclose()
        await server.aclose()
        if billing is not None:
            await billing.aclose()
