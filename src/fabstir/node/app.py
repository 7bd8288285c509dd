"""Build the node: engines, inference service, sessions, and the Starlette app."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from fabstir.errors import ConfigError
from fabstir.keys import load_or_create_signing_key
from fabstir.node import http
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.engines.base import Engine
from fabstir.node.engines.pool import EnginePool
from fabstir.node.engines.templates import get_template
from fabstir.node.guards import ConnectionGuard, ConnectionTracker
from fabstir.node.host_chain import HostChain
from fabstir.node.inference import InferenceService
from fabstir.node.models import resolve_model_path
from fabstir.node.runtime import NodeRuntime
from fabstir.node.sessions import SessionStore
from fabstir.node.ws import WebSocketConnection

__all__ = ["build_app", "build_billing", "build_runtime", "default_ledger_path", "load_engines"]

log = logging.getLogger("fabstir.node")

Progress = Callable[[str], None]


def load_engines(config: NodeConfig, progress: Progress | None = None) -> EnginePool:
    """Load ``config.parallel`` llama.cpp engines over the configured model.

    Raises:
        ModelNotFoundError: the model file (or default model package) is missing.
        EngineError: llama.cpp is not installed or cannot load the file.
    """
    say = progress or (lambda _text: None)
    if config.engine == "openai":
        return _upstream_engines(config, say)
    if config.engine == "llama-batch":
        return _batching_engine(config, say)
    from fabstir.node.engines.llama import LlamaCppEngine

    path = resolve_model_path(config.model_path, progress=say)
    engines: list[Engine] = []
    for number in range(1, config.parallel + 1):
        say(f"loading model {path.name} (engine {number}/{config.parallel}, context {config.context_window})")
        engines.append(
            LlamaCppEngine(path, model_id=config.model_id, context_window=config.context_window,
                           threads=config.threads, seed=config.seed)
        )
    return EnginePool(engines)


def _batching_engine(config: NodeConfig, say: Progress) -> EnginePool:
    """One llama.cpp context decoding ``config.parallel`` answers together; the pool hands out its seats."""
    from fabstir.node.engines.batching import BatchingEngine

    path = resolve_model_path(config.model_path, progress=say)
    say(f"loading model {path.name} (batching engine: {config.parallel} sequences, context {config.context_window}"
        " each)")
    engine = BatchingEngine(path, model_id=config.model_id, context_window=config.context_window,
                            sequences=config.parallel, threads=config.threads, seed=config.seed,
                            flash_attention=config.flash_attention)
    return EnginePool(engine.slots())


def _upstream_engines(config: NodeConfig, say: Progress) -> EnginePool:
    """``config.parallel`` connections to the OpenAI-compatible server at ``config.upstream``.

    Raises:
        EngineError: UPSTREAM_UNAVAILABLE, UPSTREAM_NO_TOKENIZER.
    """
    from fabstir.node.engines.upstream import UpstreamEngine

    assert config.upstream is not None and config.model_path is not None
    say(f"forwarding to {config.upstream} (model {config.model_path}, {config.parallel} at once)")
    engines: list[Engine] = [
        UpstreamEngine(config.upstream, config.model_path, context_window=config.context_window,
                       model_id=config.model_id) for _ in range(config.parallel)]
    return EnginePool(engines)


def build_runtime(config: NodeConfig, pool: EnginePool, billing: BillingService | None = None) -> NodeRuntime:
    service = InferenceService(pool, get_template(config.template), seed=config.seed,
                               repeat_penalty=config.repeat_penalty)
    runtime = NodeRuntime(config=config, inference=service, sessions=SessionStore(config.max_sessions),
                          billing=billing)
    _ = runtime.admission  # built now, so an insecure setting is shouted about at start
    if config.signing_key_file:
        runtime.signing_key = load_or_create_signing_key(config.signing_key_file,
                                                         os.environ.get("FABSTIR_NODE_KEY_PASSWORD"))
    return runtime


def build_billing(config: NodeConfig, model_file: str, progress: Progress | None = None) -> BillingService | None:
    """Billing on the chain of ``config.network``, as the host ``config.host_key``; ``None`` without a network.

    Raises:
        ConfigError: no host key, or an unreadable network file.
        ChainConnectionError: the chain is unreachable.
    """
    if config.network is None:
        return None
    from eth_account import Account

    from fabstir.chain.contracts import Marketplace, model_id
    from fabstir.chain.network import NetworkConfig

    if not config.host_key:
        raise ConfigError("a paid node needs the host's private key: set FABSTIR_NODE_HOST_KEY")
    network = NetworkConfig.load(config.network)
    chain = network.connect()
    account = Account.from_key(config.host_key)
    host = HostChain(Marketplace(chain, network.deployment), account, model_id(config.model_repo, model_file))
    ledger = config.ledger_path or str(default_ledger_path(account.address))
    if progress:
        progress(f"billing on {network.name} (chain {chain.chain_id}) as host {account.address}; ledger {ledger}")
    proofs = None
    if config.checkpoint_proofs:
        from fabstir.zk.service import ProofService

        proofs = ProofService(host.market, account, Path(ledger).parent / f"proofs-{account.address.lower()}",
                              keys_dir=config.zk_cache, progress=progress)
    return BillingService(host, ledger, checkpoint_tokens=config.checkpoint_tokens, proofs=proofs)


def default_ledger_path(address: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fabstir" / f"ledger-{address.lower()}.db"


def build_app(runtime: NodeRuntime) -> Starlette:
    """The ASGI app serving HTTP and ``/v1/ws`` for ``runtime``."""

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await WebSocketConnection(websocket, runtime).run()

    connections = ConnectionTracker(runtime.config.max_connections_per_address)
    app = Starlette(routes=[
        Route("/health", http.health),
        Route("/v1/version", http.version),
        Route("/v1/models", http.models),
        Route("/v1/checkpoints/{session_id}", http.checkpoints),
        Route("/v1/inference", http.inference, methods=["POST"]),
        Route("/v1/usage", http.usage, methods=["POST"]),
        WebSocketRoute("/v1/ws", websocket_endpoint),
    ], middleware=[Middleware(ConnectionGuard, tracker=connections, ws_idle_timeout=runtime.config.ws_idle_timeout)])
    app.state.runtime = runtime
    app.state.connections = connections  # counted by the server's protocols (see fabstir.node.guards)
    return app
