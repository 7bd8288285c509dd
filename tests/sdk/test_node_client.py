"""``LLMNodeClient`` against real nodes: health, version, models, inference as JSON and SSE, checkpoints, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabstir.errors import ConnectError, NodeError
from fabstir.node.server import NodeServer
from fabstir.protocol import Feature
from fabstir.protocol.signing import Receipt, verify_receipt
from fabstir.sdk import RetryPolicy
from fabstir.sdk.node_client import LLMNodeClient
from tests.conftest import NodeFactory
from tests.helpers import closed_port_url
from tests.paid.conftest import world  # noqa: F401 (a fixture: the embedded chain with contracts)

FAST = RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.05)


async def test_reads_and_inference(node: NodeServer) -> None:
    async with LLMNodeClient(node.url) as client:
        assert (await client.health())["status"] == "healthy"
        assert Feature.HTTP_SSE in await client.features()
        assert [m["id"] for m in await client.models()] == [node.runtime.inference.model_id]
        answer = await client.inference("hello there", max_tokens=6, temperature=0.0)
        pieces = [piece async for piece in client.stream_inference("hello there", max_tokens=6, temperature=0.0)]
    assert answer.tokens_used == 6 and answer.finish_reason == "length" and answer.text
    assert "".join(pieces) == answer.text, "the same greedy answer, streamed"
    assert answer.receipt is not None
    verify_receipt(Receipt.from_wire(answer.receipt), text=answer.text, tokens=6,
                   expected_key=node.runtime.signing_public_key)


async def test_errors_are_coded(node_factory: NodeFactory) -> None:
    node = await node_factory()
    async with LLMNodeClient(node.url, retry=FAST) as client:
        with pytest.raises(NodeError) as bad:
            await client.inference("", max_tokens=4)
        assert bad.value.code == "VALIDATION_ERROR"
        with pytest.raises(NodeError) as too_long:
            [p async for p in client.stream_inference("word " * 2000, max_tokens=4)]
        assert too_long.value.code == "TOKEN_LIMIT_EXCEEDED"
        with pytest.raises(NodeError) as free:
            await client.checkpoints(1)
        assert free.value.code == "CHECKPOINTS_UNAVAILABLE", "a free node keeps no checkpoints"
    async with LLMNodeClient(closed_port_url(), retry=FAST) as dead:
        with pytest.raises(ConnectError):
            await dead.health()
        with pytest.raises(ConnectError):
            await dead.inference("hi")


async def test_a_paid_node_wants_a_job(world: object, node_factory: NodeFactory, tmp_path: Path) -> None:  # noqa: F811
    from tests.paid.conftest import PaidWorld
    from tests.paid.test_open_session import start_host

    assert isinstance(world, PaidWorld)
    node = await start_host(world, node_factory, tmp_path, world.host, 2_000_000)
    async with LLMNodeClient(node.url, retry=FAST) as client:
        with pytest.raises(NodeError) as refused:
            await client.inference("hi", max_tokens=4)
        assert refused.value.code in ("AUTH_REQUIRED", "JOB_REQUIRED")
        with pytest.raises(NodeError) as none:
            await client.checkpoints(12345)
        assert none.value.code == "CHECKPOINTS_NOT_FOUND"
