"""Shared fixtures: real models on disk and real nodes on 127.0.0.1 port 0."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# no per-example deadline (a loaded 2-core machine must not turn slowness into failures); in CI the
# examples are derived from the test, so a run is reproducible
settings.register_profile("fabstir", deadline=None, derandomize=bool(os.environ.get("CI")))
settings.load_profile("fabstir")

from fabstir.node.config import NodeConfig
from fabstir.node.server import NodeServer, serve_node
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.processes import node_processes  # noqa: F401 (a fixture for every test)

SHARED_MODELS = Path(os.environ.get("FABSTIR_SHARED_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
STORIES = SHARED_MODELS / "stories260K.gguf"
TEST_ENGINE = os.environ.get("FABSTIR_TEST_ENGINE", "llama")


@pytest.fixture(scope="session", autouse=True)
def private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Files the SDK and node keep by default (usage log, ledgers, conversations) go to a folder of this run,
    never the home folder of whoever runs the tests."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight llama GGUF written by the test suite itself (no external files)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=0, context_length=512)


@pytest.fixture(scope="session")
def stories_model() -> Path:
    """stories260K from ../shared/models (coherent text with a known greedy output)."""
    if not STORIES.is_file():
        pytest.skip(f"{STORIES} not present (tests of coherent text need ../shared/models)")
    return STORIES


NodeFactory = Callable[..., Any]


@pytest.fixture
async def node_factory(tiny_model: Path) -> AsyncIterator[NodeFactory]:
    """Start real nodes (llama.cpp over the tiny model unless told otherwise); all stopped at the end.

    ``$FABSTIR_TEST_ENGINE`` picks the in-process engine of every node a test does not give one
    (``llama``, the default, or ``llama-batch``: CI runs the node tests once more with it)."""
    stack: list[Any] = []

    async def start(**overrides: Any) -> NodeServer:
        settings: dict[str, Any] = {"port": 0, "model_path": str(tiny_model), "context_window": 512,
                                    "parallel": 2, "threads": 1, "engine": TEST_ENGINE}
        billing = overrides.pop("billing", None)
        settings.update(overrides)
        manager = serve_node(NodeConfig(**settings), billing=billing)
        server = await manager.__aenter__()
        stack.append(manager)
        return server

    yield start
    for manager in reversed(stack):
        await manager.__aexit__(None, None, None)


def batching_nodes(node_factory: NodeFactory) -> NodeFactory:
    """``node_factory`` with the batching engine (4 sequences) unless a test names other settings."""

    async def start(**overrides: Any) -> NodeServer:
        overrides.setdefault("engine", "llama-batch")
        overrides.setdefault("parallel", 4)
        server: NodeServer = await node_factory(**overrides)
        if overrides["engine"] == "llama-batch":
            assert type(server.runtime.inference.pool.primary).__name__ == "_Slot"
        return server

    return start


@pytest.fixture
async def node(node_factory: NodeFactory) -> NodeServer:
    server: NodeServer = await node_factory()
    return server
