"""Chaos: a host killed with SIGKILL mid-answer bills, once restarted, exactly what it served.

The node runs as ``fabstir node serve`` in its own process over a data folder, on anvil (a chain
that outlives it). The client counts the tokens of every piece it receives and kills the node
while an answer streams; the node is restarted over the same ledger, and settles on its own.
Every wait has a generous deadline and the whole test a bound; every process is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from fabstir.chain.anvil import AnvilProcess
from fabstir.chain.backend import Chain
from fabstir.chain.network import NetworkConfig
from fabstir.errors import ConnectionClosedError
from fabstir.node.billing import FLUSH_TOKENS
from fabstir.protocol import ServerMessage, StreamAccumulator, StreamChunk, TextDelta
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.anvil.conftest import wait_completed
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, build_world, register
from tests.processes import NodeProcess

TEST_BOUND_S = 420
"""The whole test, start to settlement, on a loaded machine."""
FIRST_ANSWER = 60
LONG_ANSWER = 3000
"""Tokens asked for in the answer that is cut: far more than stream before the kill lands."""
KILL_AFTER = 200
"""Tokens of the long answer the client has received when it kills the node."""
_PAID = ("--context-window", "4096")


class PieceCounter:
    """Counts the tokens of every piece the client receives, and kills the node after ``kill_after``."""

    def __init__(self) -> None:
        self.tokens = 0
        self.kill_after: int | None = None
        self.node: NodeProcess | None = None
        self.killed_at: int | None = None

    def seen(self, message: ServerMessage) -> None:
        if isinstance(message, StreamChunk) and message.content:
            self.tokens += message.tokens
            if self.kill_after is not None and self.tokens >= self.kill_after and self.killed_at is None:
                assert self.node is not None
                self.node.kill()
                self.killed_at = self.tokens


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> PieceCounter:
    """A spy on the SDK's stream accumulator (what the client received), frame by frame."""
    spy = PieceCounter()
    feed = StreamAccumulator.feed

    def counting_feed(self: StreamAccumulator, message: ServerMessage, now: float) -> TextDelta | None:
        delta = feed(self, message, now)
        if delta is not None:
            spy.seen(message)
        return delta

    monkeypatch.setattr(StreamAccumulator, "feed", counting_feed)
    return spy


async def test_host_killed_mid_answer_bills_what_it_served_once(anvil: AnvilProcess, anvil_chain: Chain,
                                                                 tmp_path: Path, counter: PieceCounter,
                                                                 node_processes: list[NodeProcess]) -> None:
    async with asyncio.timeout(TEST_BOUND_S):
        model = write_tiny_gguf(tmp_path / "long.gguf", seed=0, context_length=4096)
        world = await build_world(anvil_chain, model.name)
        network = tmp_path / "network.json"
        NetworkConfig(name="anvil", rpc_url=anvil.rpc_url, deployment=world.market.deployment).save(network)
        data = tmp_path / "data"
        data.mkdir()
        host_key = world.host.key.hex()

        first = NodeProcess.start(model, data, "first", network=network, host_key=host_key, extra=_PAID)
        node_processes.append(first)
        url = await first.url()
        await register(world, url)
        received, job_id = await _serve_until_killed(world, url, first, counter)

        restarted = NodeProcess.start(model, data, "restarted", network=network, host_key=host_key, extra=_PAID)
        node_processes.append(restarted)
        await restarted.url()
        settled = await wait_completed(world, job_id)
        await restarted.stop()

    billed = settled.tokens_used
    print(f"\nkill -9 mid-answer: client received {received} tokens, the chain settled {billed}")
    assert abs(billed - received) <= FLUSH_TOKENS, (received, billed)
    proofs = await world.chain.call(world.market.marketplace.functions.getProofCount(job_id))
    # the restarted node's checkpoint, after the first node's countersigned one for the whole answer when that one
    # landed before the kill (the countersignature comes after the answer; the kill cuts the next one)
    assert proofs in (1, 2)
    with contextlib.closing(sqlite3.connect(data / "ledger.db")) as ledger:
        row = ledger.execute("SELECT generated, submitted, done FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    assert row == (billed, billed, 1), "the ledger's served count is what was billed, and the job is done"


async def _serve_until_killed(world: PaidWorld, url: str, node: NodeProcess,
                              counter: PieceCounter) -> tuple[int, int]:
    """One whole answer, then a long one cut by SIGKILL; returns (tokens received, job id)."""
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                          default_options=PromptOptions(max_tokens=FIRST_ANSWER, temperature=0.0)) as sdk:
        job = await sdk.sessions.create_session(world.host.address, world.model, 10**15, HOST_PRICE_NATIVE,
                                                max_duration=3600, proof_interval=100)
        await sdk.inference.connect_to_session(str(job.job_id), url, job_id=job.job_id)
        whole = await sdk.inference.send_prompt("a short one")
        assert whole.receipt is not None and whole.receipt.tokens == counter.tokens == FIRST_ANSWER
        counter.node, counter.kill_after = node, FIRST_ANSWER + KILL_AFTER
        with pytest.raises(ConnectionClosedError):
            await sdk.inference.send_prompt("a long one", PromptOptions(max_tokens=LONG_ANSWER, temperature=0.0))
        assert counter.killed_at is not None and counter.tokens < FIRST_ANSWER + LONG_ANSWER, "killed mid-answer"
        await sdk.inference.close()
    return counter.tokens, job.job_id
