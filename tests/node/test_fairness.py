"""Fair engine scheduling (round robin over clients) and the per-client cap on answers in flight.

The pool tests run the real :class:`EnginePool` and :class:`InferenceService` over ``StepEngine``, a
deterministic fake engine at the pool seam (the :class:`Engine` protocol): it records the order in which
answers start generating and emits fixed tokens, so the order of service is exact and no timing matters.
The node tests run a real node (llama.cpp over the tiny model, one engine) over real WebSockets and HTTP;
its engine is wrapped in ``Recorded``, which notes each answer's start and holds the first one until the
test has queued everything, so they assert the order of service, never time. Clients are told apart by
address: the hog connects from 127.0.0.2, the victim from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fabstir.errors import ConfigError, NodeError
from fabstir.node.config import NodeConfig
from fabstir.node.context import FittedPrompt
from fabstir.node.engines.base import Engine, Finished, GenerationEvent, GenerationParams, TokenPiece
from fabstir.node.engines.llama import LlamaCppEngine
from fabstir.node.engines.pool import EnginePool
from fabstir.node.engines.templates import TEMPLATES
from fabstir.node.fairness import ConcurrencyCap, TooManyRequestsError
from fabstir.node.inference import InferenceService, PreparedPrompt
from fabstir.node.server import NodeServer, serve_node
from fabstir.protocol import ErrorCode
from tests.helpers import WireClient, prompt

DEADLINE = 60.0


class StepEngine:
    """A fake engine: records each prompt as it starts, waits for ``gate``, then yields ``max_tokens`` tokens."""

    model_id = "step"
    context_window = 512

    def __init__(self, started: list[str], gate: threading.Event | None = None) -> None:
        self.started = started
        self.gate = gate or threading.Event()
        if gate is None:
            self.gate.set()

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    def generate(self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]) -> Iterator[
            GenerationEvent]:
        self.started.append(prompt)
        assert self.gate.wait(DEADLINE)
        for n in range(params.max_tokens):
            if cancelled():
                yield Finished("cancelled", n)
                return
            yield TokenPiece("x", 1)
        yield Finished("length", params.max_tokens)

    def close(self) -> None:
        pass


async def until(condition: Callable[[], bool]) -> None:
    """Wait (yielding to the loop) until ``condition`` holds, failing after a generous deadline."""
    async with asyncio.timeout(DEADLINE):
        while not condition():
            await asyncio.sleep(0.001)


async def serve_in_turns(pool: EnginePool, requests: list[tuple[str, str]]) -> list[str]:
    """Queue every ``(client, name)`` behind a held engine, in order; returns the names in order of service."""
    served: list[str] = []

    async def one(client: str, name: str) -> None:
        async with pool.acquire(client):
            served.append(name)
            await asyncio.sleep(0)

    blockers = [pool.acquire("blocker") for _ in range(pool.size)]
    for blocker in blockers:
        await blocker.__aenter__()
    tasks = []
    for client, name in requests:
        tasks.append(asyncio.create_task(one(client, name)))
        await until(lambda: pool.waiting == len(tasks))  # each request is queued before the next arrives
    for blocker in blockers:
        await blocker.__aexit__(None, None, None)
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*tasks)
    return served


async def test_a_victim_behind_a_hog_of_ten_queued_answers_is_served_within_two_turns() -> None:
    started: list[str] = []
    pool = EnginePool([StepEngine(started)])
    hog = [("hog", f"hog{n}") for n in range(10)]
    served = await serve_in_turns(pool, [*hog, ("victim", "victim")])
    assert served.index("victim") <= 1, served
    assert [name for name in served if name != "victim"] == [name for _, name in hog], "each client stays FIFO"


async def test_waiting_clients_take_turns() -> None:
    pool = EnginePool([StepEngine([])])
    requests = [(client, f"{client}{n}") for client in "abc" for n in range(3)]
    served = await serve_in_turns(pool, requests)
    assert served == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]


async def test_a_client_that_went_idle_comes_first_again() -> None:
    pool = EnginePool([StepEngine([])])
    served = await serve_in_turns(pool, [("hog", "hog0"), ("hog", "hog1"), ("late", "late0")])
    assert served == ["hog0", "late0", "hog1"]
    served = await serve_in_turns(pool, [("hog", "hog2"), ("hog", "hog3"), ("late", "late1")])
    assert served == ["hog2", "late1", "hog3"], "rotation state of finished clients is forgotten"


async def test_open_stream_serves_a_victim_within_two_engine_turns_with_two_engines() -> None:
    started: list[str] = []
    gate = threading.Event()
    pool = EnginePool([StepEngine(started, gate), StepEngine(started, gate)])
    service = InferenceService(pool, TEMPLATES["raw"])

    async def answer(client: str, name: str) -> int:
        prepared = PreparedPrompt(FittedPrompt(name, 1, 20, 0, 0), GenerationParams(max_tokens=20))
        async with service.open_stream(prepared, threading.Event(), client=client) as events:
            return sum(1 for event in [e async for e in events] if isinstance(event, TokenPiece))

    hog = [asyncio.create_task(answer("hog", f"hog{n}")) for n in range(10)]
    await until(lambda: pool.waiting == 8 and len(started) == 2)
    victim = asyncio.create_task(answer("victim", "victim"))
    await until(lambda: pool.waiting == 9)
    gate.set()
    async with asyncio.timeout(DEADLINE):
        counts = await asyncio.gather(*hog, victim)
    assert counts == [20] * 11
    assert set(started[:2]) == {"hog0", "hog1"}, started
    assert started.index("victim") == 2, f"the victim takes the first engine that frees: {started}"


async def test_a_waiter_cancelled_in_the_queue_leaves_it_and_no_engine_leaks() -> None:
    pool = EnginePool([StepEngine([])])
    entered = asyncio.Event()

    async def wait_for_engine() -> None:
        async with pool.acquire("x"):
            entered.set()

    async with pool.acquire("holder"):
        waiter = asyncio.create_task(wait_for_engine())
        await until(lambda: pool.waiting == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.waiting == 0
    assert not entered.is_set()
    async with asyncio.timeout(DEADLINE), pool.acquire("y"):
        assert pool.quiet_for() == 0.0


async def test_a_waiter_cancelled_as_it_is_handed_an_engine_passes_it_on() -> None:
    pool = EnginePool([StepEngine([])])
    served: list[str] = []

    async def take(name: str) -> None:
        async with pool.acquire(name):
            served.append(name)

    holder = pool.acquire("holder")
    await holder.__aenter__()
    first, second = asyncio.create_task(take("first")), asyncio.create_task(take("second"))
    await until(lambda: pool.waiting == 2)
    await holder.__aexit__(None, None, None)  # hands the engine to "first", which has not run yet
    first.cancel()
    async with asyncio.timeout(DEADLINE):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert served == ["second"] and pool.waiting == 0
    async with asyncio.timeout(DEADLINE), pool.acquire("again"):
        pass


def test_the_cap_refuses_one_answer_past_the_limit_with_retry_after() -> None:
    now = [100.0]
    cap = ConcurrencyCap(2, clock=lambda: now[0])
    with cap.hold("hog"), cap.hold("hog"):
        with pytest.raises(TooManyRequestsError) as refused, cap.hold("hog"):
            pass
        assert isinstance(refused.value, NodeError) and refused.value.code == ErrorCode.TOO_MANY_REQUESTS
        assert refused.value.details["retry_after"] == 0.5 and refused.value.details["limit"] == 2
        with cap.hold("other"):
            assert cap.in_flight("other") == 1, "another client is not affected"
        assert cap.in_flight("hog") == 2
        now[0] += 10.0
    with cap.hold("hog"):
        assert cap.in_flight("hog") == 1, "a finished answer frees its slot"
    assert cap.in_flight("hog") == 0


def test_retry_after_follows_the_typical_answer_duration() -> None:
    now = [0.0]
    cap = ConcurrencyCap(1, clock=lambda: now[0], min_retry=0.5, max_retry=30.0)
    for _ in range(20):
        with cap.hold("c"):
            now[0] += 10.0
    with cap.hold("c"):
        now[0] += 4.0
        with pytest.raises(TooManyRequestsError) as refused, cap.hold("c"):
            pass
    assert 5.0 <= float(str(refused.value.details["retry_after"])) <= 6.0, "about 10 s typical, 4 s gone"


def test_a_limit_of_zero_turns_the_cap_off() -> None:
    cap = ConcurrencyCap(0)
    holds = [cap.hold("c") for _ in range(100)]
    for hold in holds:
        hold.__enter__()
    assert cap.in_flight("c") == 100
    for hold in holds:
        hold.__exit__(None, None, None)
    assert cap.in_flight("c") == 0


def test_config_default_and_validation() -> None:
    assert NodeConfig().max_concurrent_per_client == 4
    assert NodeConfig(max_concurrent_per_client=0).max_concurrent_per_client == 0
    with pytest.raises(ConfigError, match="max_concurrent_per_client"):
        NodeConfig(max_concurrent_per_client=-1)


# --- a real node over WebSockets and HTTP ---------------------------------------------------------------------

HOG = "127.0.0.2"


class Recorded:
    """A real engine that records which prompt starts generating, in order; the first waits for ``gate``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started: list[str] = []
        self.gate = threading.Event()
        self.model_id, self.context_window = engine.model_id, engine.context_window

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def generate(self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]) -> Iterator[
            GenerationEvent]:
        self.started.append(prompt)
        assert self.gate.wait(DEADLINE)
        yield from self.engine.generate(prompt, params, cancelled)

    def close(self) -> None:
        self.engine.close()


@pytest.fixture
async def one_engine_node(tiny_model: Path) -> AsyncIterator[tuple[NodeServer, Recorded]]:
    """A node with one recorded llama.cpp engine and a cap of 10 answers per client."""
    engine = Recorded(LlamaCppEngine(tiny_model, context_window=512, threads=1))
    config = NodeConfig(port=0, model_path=str(tiny_model), context_window=512, parallel=1, threads=1,
                        max_concurrent_per_client=10)
    async with serve_node(config, pool=EnginePool([engine])) as node:
        yield node, engine


def service_order(engine: Recorded) -> list[str]:
    """Who each started answer was for (the prompts are named ``hog<n>`` and ``victim``)."""
    return [next(word for word in text.split() if word.startswith(("hog", "victim"))) for text in engine.started]


async def test_a_victim_is_served_within_two_engine_turns_of_a_hog_with_ten_queued_answers(
        one_engine_node: tuple[NodeServer, Recorded]) -> None:
    node, engine = one_engine_node
    pool = node.runtime.inference.pool
    hogs = [await WireClient.open(node.ws_url, local_addr=(HOG, 0)) for _ in range(10)]
    victim = await WireClient.open(node.ws_url)
    for n, hog in enumerate(hogs):
        await hog.send(prompt(f"hog{n} tell a long story", rid=f"h{n}", max_tokens=24))
    await until(lambda: len(engine.started) == 1 and pool.waiting == 9)
    await victim.send(prompt("victim says hi", rid="v", max_tokens=4))
    await until(lambda: pool.waiting == 10)
    engine.gate.set()
    ends = [frames[-1] for frames in await asyncio.gather(*(c.until_end() for c in [*hogs, victim]))]
    assert [end["reason"] for end in ends] == ["complete"] * 11, ends
    order = service_order(engine)
    assert order.index("victim") <= 2, f"the victim waited more than two engine turns: {order}"
    assert [who for who in order if who != "victim"] == [f"hog{n}" for n in range(10)], order
    for client in [*hogs, victim]:
        await client.close()


async def test_one_answer_past_the_cap_is_refused_with_retry_after_on_both_paths(
        one_engine_node: tuple[NodeServer, Recorded]) -> None:
    node, engine = one_engine_node
    pool = node.runtime.inference.pool
    hogs = [await WireClient.open(node.ws_url, local_addr=(HOG, 0)) for _ in range(11)]
    for n, hog in enumerate(hogs[:10]):
        await hog.send(prompt(f"hog{n} again", rid=f"h{n}", max_tokens=4))
    await until(lambda: len(engine.started) == 1 and pool.waiting == 9)
    await hogs[10].send(prompt("hog10 one too many", rid="h10", max_tokens=4))
    error, end = await hogs[10].until_end()
    assert error["type"] == "error" and error["code"] == ErrorCode.TOO_MANY_REQUESTS, error
    assert 0 < error["retry_after"] <= 30 and error["id"] == "h10", error
    assert end["reason"] == "error" and end["tokens_used"] == 0, end
    transport = httpx.AsyncHTTPTransport(local_address=HOG)
    async with httpx.AsyncClient(base_url=node.url, transport=transport, timeout=DEADLINE) as http:
        refused = await http.post("/v1/inference", json={"prompt": "hog http", "max_tokens": 2, "stream": False})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1, refused.text
    assert ErrorCode.TOO_MANY_REQUESTS in refused.text
    async with httpx.AsyncClient(base_url=node.url, timeout=DEADLINE) as http:
        other = asyncio.create_task(http.post("/v1/inference", json={"prompt": "victim", "max_tokens": 2}))
        await until(lambda: pool.waiting == 10)  # another address is not capped: it queues
        engine.gate.set()
        assert (await other).status_code == 200
    assert [frames[-1]["reason"] for frames in await asyncio.gather(*(h.until_end() for h in hogs[:10]))] == [
        "complete"] * 10
    await hogs[10].send(prompt("hog10 now there is room", rid="h10b", max_tokens=4))
    assert (await hogs[10].until_end())[-1]["reason"] == "complete"
    for hog in hogs:
        await hog.close()
