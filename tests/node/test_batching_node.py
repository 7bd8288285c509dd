"""The node's main WebSocket, HTTP, SDK and continuation flows, served by the batching engine.

The tests are the existing ones (imported here); this module's ``node_factory`` starts every node with
``engine = "llama-batch"`` (4 sequences), so each runs again against one batched llama.cpp context.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fabstir.errors import ConfigError
from fabstir.node.config import NodeConfig, load_node_config
from fabstir.node.engines.pool import EnginePool
from fabstir.node.server import NodeServer
from tests.conftest import NodeFactory, batching_nodes
from tests.node.test_http import (  # noqa: F401  (collected again here, against the batching engine)
    test_golden_stories,
    test_greedy_is_deterministic_and_max_tokens_exact,
    test_inference_json,
    test_inference_sse,
    test_json_answers_carry_the_signed_receipt_in_a_header,
    test_prompt_over_context_window,
)
from tests.node.test_ws_protocol import (  # noqa: F401
    test_cancel_mid_stream,
    test_disconnect_mid_stream_frees_the_engine,
    test_max_tokens_is_exact_and_finish_reason_length,
    test_server_side_context_grows_and_survives_reconnect,
    test_stream_shape,
    test_two_connections_stream_at_once,
)
from tests.sdk.test_continuation import (  # noqa: F401
    test_continuation_goes_into_the_server_side_history,
    test_continuation_over_http_is_the_rest_of_the_answer,
)


@pytest.fixture
async def node_factory(node_factory: NodeFactory) -> NodeFactory:
    """The suite's node factory, with the batching engine unless a test names another."""
    return batching_nodes(node_factory)


async def test_the_node_runs_one_batching_engine(node: NodeServer) -> None:
    pool = node.runtime.inference.pool
    assert isinstance(pool, EnginePool) and pool.size == 4
    assert type(pool.primary).__name__ == "_Slot"


@pytest.mark.parametrize("flash_attention", [False, True])
async def test_many_http_answers_at_once_match_their_answers_alone(node_factory: NodeFactory,
                                                                   flash_attention: bool) -> None:
    """More requests than sequences: each greedy answer is the one it gets alone."""
    server = await node_factory(template="raw", max_concurrent_per_client=0, flash_attention=flash_attention)
    prompts = [f"story number {i} begins" for i in range(10)]

    async def ask(client: httpx.AsyncClient, prompt: str) -> tuple[str, int]:
        response = await client.post("/v1/inference", json={"prompt": prompt, "max_tokens": 12,
                                                             "temperature": 0.0, "stream": False})
        assert response.status_code == 200, response.text
        body = response.json()
        return body["content"], body["tokens_used"]

    async with httpx.AsyncClient(base_url=server.url, timeout=120.0) as client:
        alone = [await ask(client, prompt) for prompt in prompts]
        together = await asyncio.gather(*(ask(client, prompt) for prompt in prompts))
    assert list(together) == alone
    assert all(tokens == 12 for _, tokens in alone)


async def test_per_client_cap_decides_who_joins_the_batch(node_factory: NodeFactory) -> None:
    server = await node_factory(template="raw", max_concurrent_per_client=1)
    long = {"prompt": "a long one", "max_tokens": 400, "temperature": 0.0, "stream": True}
    async with httpx.AsyncClient(base_url=server.url, timeout=120.0) as client:
        async with client.stream("POST", "/v1/inference", json=long) as first:
            assert first.status_code == 200
            async for _ in first.aiter_bytes():
                break  # the first answer is generating
            second = await client.post("/v1/inference", json={**long, "stream": False, "max_tokens": 4})
    assert second.status_code == 429, second.text
    assert second.json()["details"]["code"] == "TOO_MANY_REQUESTS"


def test_engine_setting_names_the_batching_engine() -> None:
    config = load_node_config(env={"FABSTIR_NODE_ENGINE": "llama-batch", "FABSTIR_NODE_FLASH_ATTENTION": "1"})
    assert config.engine == "llama-batch" and config.flash_attention is True
    with pytest.raises(ConfigError, match="llama-batch"):
        NodeConfig(engine="batched")
