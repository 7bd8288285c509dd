"""Build the node: engines, inference service, sessions, and the Starlette app."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from fabstir.node import http
from fabstir.node.config import NodeConfig
from fabstir.node.engines.base import Engine
from fabstir.node.engines.pool import EnginePool
from fabstir.node.engines.templates import get_template
from fabstir.node.inference import InferenceService
from fabstir.node.models import resolve_model_path
from fabstir.node.runtime import NodeRuntime
from fabstir.node.sessions import SessionStore
from fabstir.node.ws import WebSocketConnection

__all__ = ["build_app", "build_runtime", "load_engines"]

log = logging.getLogger("fabstir.node")

Progress = Callable[[str], None]


def load_engines(config: NodeConfig, progress: Progress | None = None) -> EnginePool:
    """Load ``config.parallel`` llama.cpp engines over the configured model.

    Raises:
        ModelNotFoundError: the model file (or default model package) is missing.
        EngineError: llama.cpp is not installed or cannot load the file.
    """
    from fabstir.node.engines.llama import LlamaCppEngine

    say = progress or (lambda _text: None)
    path = resolve_model_path(config.model_path, progress=say)
    engines: list[Engine] = []
    for number in range(1, config.parallel + 1):
        say(f"loading model {path.name} (engine {number}/{config.parallel}, context {config.context_window})")
        engines.append(
            LlamaCppEngine(path, model_id=config.model_id, context_window=config.context_window,
                           threads=config.threads, seed=config.seed)
        )
    return EnginePool(engines)


def build_runtime(config: NodeConfig, pool: EnginePool) -> NodeRuntime:
    service = InferenceService(pool, get_template(config.template), seed=config.seed,
                               repeat_penalty=config.repeat_penalty)
    return NodeRuntime(config=config, inference=service, sessions=SessionStore(config.max_sessions))


def build_app(runtime: NodeRuntime) -> Starlette:
    """The ASGI app serving HTTP and ``/v1/ws`` for ``runtime``."""

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await WebSocketConnection(websocket, runtime).run()

    app = Starlette(routes=[
        Route("/health", http.health),
        Route("/v1/version", http.version),
        Route("/v1/models", http.models),
        Route("/v1/inference", http.inference, methods=["POST"]),
        WebSocketRoute("/v1/ws", websocket_endpoint),
    ])
    app.state.runtime = runtime
    return app
