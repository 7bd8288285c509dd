"""Automatic mid-answer failover and ``switch_host`` between real nodes.

The serving host is ``fabstir node serve`` in its own process, killed with SIGKILL (it dies) or frozen with
SIGSTOP (it stalls, its socket open) while an answer streams; the other host is a node in this process.
Discovery is a static list of the two hosts (free nodes: no chain; the paid version runs on anvil in
tests/anvil). The answer is checked against the same prompt answered by the surviving host without
interruption: with greedy decoding on stories260K (coherent text) they must be identical, token for token.
Every process is stopped by its PID; every wait has a generous deadline.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fabstir.discovery.selection import HostCandidate, SelectionError
from fabstir.discovery.sources import StaticSource
from fabstir.errors import ConnectionClosedError, SessionError
from fabstir.protocol import ChatTurn
from fabstir.sdk import FabstirSDK, InferenceResult, PromptOptions, Timeouts
from fabstir.storage import SqliteBackend, StorageKey
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.conftest import NodeFactory
from tests.processes import NodeProcess

PROMPT = "Once upon a time"
ANSWER = PromptOptions(max_tokens=420, temperature=0.0)
CUT_AFTER = 30
"""Tokens the client has received when it stops the serving host."""
TEST_BOUND_S = 300


def hosts_sdk(first: str, second: str, tmp_path: Path, **settings: object) -> FabstirSDK:
    """An SDK whose discovery knows the two hosts (by the names ``a`` and ``b``), storing to SQLite."""
    source = StaticSource([HostCandidate(address="host-a", api_url=first),
                           HostCandidate(address="host-b", api_url=second)])
    return FabstirSDK(discovery_sources=[source], storage=SqliteBackend(tmp_path / "conversations.db"),
                      storage_key=StorageKey.from_secret(b"failover test secret".ljust(32, b".")), **settings)  # type: ignore[arg-type]


async def uninterrupted(url: str) -> str:
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("reference", url)
        return (await sdk.inference.send_prompt(PROMPT, ANSWER)).text


async def stream_and_stop(sdk: FabstirSDK, victim: NodeProcess, stop: str) -> tuple[list[str], int, InferenceResult]:
    """Stream the answer, stopping ``victim`` (``kill`` or ``freeze``) after CUT_AFTER tokens; returns the
    pieces the user saw, the tokens received when it was stopped and the result."""
    pieces: list[str] = []
    stopped_at = -1
    async with sdk.inference.stream(PROMPT, ANSWER) as stream:
        async for piece in stream:
            pieces.append(piece)
            if stopped_at < 0 and stream.tokens_received >= CUT_AFTER:
                getattr(victim, stop)()
                stopped_at = stream.tokens_received
    return pieces, stopped_at, stream.result


async def run_failover(stop: str, node_factory: NodeFactory, model: Path, tmp_path: Path,
                       node_processes: list[NodeProcess], timeouts: Timeouts | None = None,
                       encryption: bool | None = None, exact: bool = True) -> None:
    """``exact``: the answer must equal the uninterrupted one (stories260K); else (the random-weight tiny model,
    whose output need not be in its tokenizer's canonical form) it must continue it: same start, same length."""
    async with asyncio.timeout(TEST_BOUND_S):
        survivor = await node_factory(model_path=str(model), template="raw", parallel=1)
        victim = NodeProcess.start(model, tmp_path / "a", "a", extra=("--template", "raw"))
        node_processes.append(victim)
        first = await victim.url()
        expected = await uninterrupted(survivor.url)

        async with hosts_sdk(first, survivor.url, tmp_path, timeouts=timeouts or Timeouts(),
                             encryption=encryption) as sdk:
            await sdk.inference.connect_to_session("story", first)
            assert sdk.inference.is_encrypted() is bool(encryption)
            pieces, stopped_at, result = await stream_and_stop(sdk, victim, stop)
            answer = await sdk.inference.load_conversation("story")
            session = sdk.inference.session()
            switched = session.switches
            turns = list(session.history)
            blocked = sdk.discovery.peers.is_blocked("host-a", time.monotonic())
            follow_up = await sdk.inference.send_prompt("Then", PromptOptions(max_tokens=8, temperature=0.0))
            assert sdk.inference.is_encrypted() is bool(encryption), "the new host is encrypted to as well"
            # an encrypted session's history is its signer's; a free node answers plaintext get_history per connection
            host_history = turns if encryption else await sdk.inference.get_history()
    assert stopped_at >= CUT_AFTER, "the host was stopped mid-answer"
    assert result.text == "".join(pieces), "the user saw every piece once"
    if not exact:
        assert result.parts[0].text == expected[:len(result.parts[0].text)], "the first host's part is the start"
        expected = result.text
    assert "".join(pieces) == expected, "the user saw one uninterrupted answer, identical to the reference"
    assert result.text == expected and result.finish_reason == "length"
    assert result.hosts == (first, survivor.url)
    offset = result.switch_offsets[0]
    assert offset >= stopped_at and result.parts[0].tokens == offset and result.parts[0].receipt is None
    assert sum(part.tokens for part in result.parts) == result.tokens_used == ANSWER.max_tokens, "no token lost"
    assert "".join(part.text for part in result.parts) == expected
    assert len(result.receipts) == 1 and result.receipts[0].tokens == ANSWER.max_tokens - offset
    assert turns == [ChatTurn("user", PROMPT), ChatTurn("assistant", expected)]
    assert [s.to_host for s in switched] == [survivor.url] and switched[0].reason == "failed"
    assert blocked, "the failed host is banned"
    assert follow_up.hosts == (survivor.url,)
    assert host_history[:2] == turns, "the new host holds the conversation, the continued answer whole"
    stored = answer.messages
    assert [m.role for m in stored] == ["user", "assistant"] and stored[1].content == expected
    assert not stored[1].partial


async def test_host_killed_mid_answer_the_next_host_continues_it(
        node_factory: NodeFactory, tmp_path: Path, node_processes: list[NodeProcess]) -> None:
    """Any model (here the suite's own random-weight GGUF): the answer is continued, nothing lost or repeated."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf", seed=0, context_length=512)
    await run_failover("kill", node_factory, model, tmp_path, node_processes, exact=False)


async def test_host_killed_mid_answer_the_next_host_continues_it_identically(
        node_factory: NodeFactory, stories_model: Path, tmp_path: Path, node_processes: list[NodeProcess]) -> None:
    await run_failover("kill", node_factory, stories_model, tmp_path, node_processes)


async def test_encrypted_session_fails_over_encrypted(
        node_factory: NodeFactory, stories_model: Path, tmp_path: Path, node_processes: list[NodeProcess]) -> None:
    await run_failover("kill", node_factory, stories_model, tmp_path, node_processes, encryption=True)


async def test_host_frozen_mid_answer_the_next_host_continues_it_identically(
        node_factory: NodeFactory, stories_model: Path, tmp_path: Path, node_processes: list[NodeProcess]) -> None:
    await run_failover("freeze", node_factory, stories_model, tmp_path, node_processes,
                       Timeouts(between_frames=3.0))


# --- switch_host, and what happens when no host can take over (the tiny model: no text is compared) -------


async def test_switch_host_moves_the_session_with_its_history(node_factory: NodeFactory, tmp_path: Path) -> None:
    first, second = await node_factory(), await node_factory()
    async with hosts_sdk(first.url, second.url, tmp_path) as sdk:
        await sdk.inference.connect_to_session("moving", first.url)
        session = sdk.inference.session()
        one = await sdk.inference.send_prompt("first question", PromptOptions(max_tokens=5, temperature=0.0))
        switch = await sdk.inference.switch_host()  # no host named: discovery picks the other one
        assert sdk.inference.session("moving") is session, "the user's session object stays the same"
        assert (switch.from_host, switch.to_host, switch.reason) == (first.url, second.url, "requested")
        two = await sdk.inference.send_prompt("second question", PromptOptions(max_tokens=5, temperature=0.0))
        history = await sdk.inference.get_history()
        back = await sdk.inference.switch_host(new_host=first.url)
        stored = await sdk.inference.load_conversation("moving")
    assert two.hosts == (second.url,) and two.message_index == 1
    assert history == [ChatTurn("user", "first question"), ChatTurn("assistant", one.text),
                       ChatTurn("user", "second question"), ChatTurn("assistant", two.text)]
    assert back.to_host == first.url and [s.to_host for s in session.switches] == [second.url, first.url]
    assert [m.content for m in stored.messages] == ["first question", one.text, "second question", two.text]
    assert not sdk.discovery.peers.is_blocked("host-a", time.monotonic()), "a requested switch is no failure"


async def test_switch_host_refusals(node_factory: NodeFactory, tmp_path: Path) -> None:
    only = await node_factory()
    async with FabstirSDK(discovery_sources=[StaticSource([HostCandidate("host-a", only.url)])]) as sdk:
        await sdk.inference.connect_to_session("alone", only.url)
        with pytest.raises(SelectionError) as refused:
            await sdk.inference.switch_host()
        assert refused.value.code == "NO_HOST_AVAILABLE"
        with pytest.raises(SessionError) as missing:
            await sdk.inference.switch_host("no-such-session")
        assert missing.value.code == "SESSION_NOT_FOUND"
        async with sdk.inference.stream("a long one", PromptOptions(max_tokens=200)) as stream:
            async for _ in stream:
                with pytest.raises(SessionError) as busy:
                    await sdk.inference.switch_host(new_host=only.url)
                assert busy.value.code == "REQUEST_IN_PROGRESS"
                break


async def test_no_failover_without_another_host_or_when_turned_off(
        tiny_model: Path, tmp_path: Path, node_processes: list[NodeProcess]) -> None:
    """The host dies mid-answer: with nowhere to go (or failover off) the answer fails as a lost connection."""
    for failover in (True, False):
        victim = NodeProcess.start(tiny_model, tmp_path / f"a-{failover}", "a")
        node_processes.append(victim)
        url = await victim.url()
        source = StaticSource([HostCandidate("host-a", url)])
        async with FabstirSDK(discovery_sources=[source], failover=failover) as sdk:
            await sdk.inference.connect_to_session("doomed", url)
            with pytest.raises(ConnectionClosedError) as lost:
                async with sdk.inference.stream("go on", PromptOptions(max_tokens=400)) as stream:
                    async for _ in stream:
                        if stream.tokens_received >= 5:
                            victim.kill()
            assert "mid-answer" in lost.value.message
            turns = sdk.inference.session().history  # what the user saw stays in the conversation
            assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content
            if failover:
                assert "no other host took over" in lost.value.message
