"""``FabstirSDK.sync()``: the blocking face over the async SDK, on the same flows as the async tests.

The blocking code runs in a worker thread (as a script without an event loop would), while the real node
serves from this test's loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fabstir.errors import SessionError
from fabstir.node.server import NodeServer
from fabstir.protocol import ChatTurn
from fabstir.sdk import FabstirSDK, InferenceResult, PromptOptions
from fabstir.sdk.sync import SyncSDK
from tests.conftest import NodeFactory
from tests.paid.conftest import PaidWorld, world  # noqa: F401 (a fixture)
from tests.paid.test_open_session import start_host

GREEDY = PromptOptions(max_tokens=6, temperature=0.0)


def chat(url: str) -> dict[str, object]:
    """A whole blocking chat: connect, answer with a callback, stream, history, refusals."""
    seen: list[str] = []
    with FabstirSDK(default_options=GREEDY).sync() as sdk:
        assert isinstance(sdk, SyncSDK)
        sdk.inference.connect_to_session("sync", url)
        first = sdk.inference.send_prompt("hello", on_token=seen.append)
        with sdk.inference.stream("and then") as stream:
            pieces = list(stream)
        second = stream.result
        with pytest.raises(SessionError):
            sdk.inference.session("nope")
        session = sdk.inference.session()
        return {"first": first, "seen": seen, "pieces": pieces, "second": second,
                "history": list(session.history), "features": session.features,
                "conversation": sdk.inference.get_conversation()}


async def test_a_blocking_chat(node: NodeServer) -> None:
    done = await asyncio.to_thread(chat, node.url)
    first, second = done["first"], done["second"]
    assert isinstance(first, InferenceResult) and isinstance(second, InferenceResult)
    assert first.completion_tokens == 6 and "".join(done["seen"]) == first.text  # type: ignore[arg-type]
    assert "".join(done["pieces"]) == second.text and second.message_index == 1  # type: ignore[arg-type]
    assert done["history"] == done["conversation"] == [
        ChatTurn("user", "hello"), ChatTurn("assistant", first.text),
        ChatTurn("user", "and then"), ChatTurn("assistant", second.text)]


async def test_a_blocking_paid_session(world: PaidWorld, node_factory: NodeFactory,  # noqa: F811
                                       tmp_path: Path) -> None:
    node = await start_host(world, node_factory, tmp_path, world.host, 2_000_000)

    def paid() -> tuple[InferenceResult, int, str]:
        sdk = FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                         default_options=GREEDY).sync()
        try:
            opened = sdk.sessions.open_session(world.model, 10**15)
            opened.connect()
            result = opened.send_prompt("hello")
            job = sdk.sessions.get_session(opened.job.job_id)
            opened.close()
            return result, job.deposit, opened.host.api_url
        finally:
            sdk.close()

    result, deposit, url = await asyncio.to_thread(paid)
    assert result.completion_tokens == 6 and result.receipt is not None
    assert deposit == 10**15 and url == node.url
