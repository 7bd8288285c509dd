"""Any prompt text, through WebSocket and HTTP, ends in an answer or a coded error; never a 500, never silence.

A real node (llama.cpp over the tiny model) runs on its own event loop in a thread, so hypothesis can drive it
with synchronous clients (httpx, websockets.sync) over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from fabstir.node.config import NodeConfig
from fabstir.node.server import NodeServer, serve_node
from tests.conftest import NodeFactory
from tests.helpers import WireClient, prompt

CODED = {"INVALID_PROMPT", "TOKEN_LIMIT_EXCEEDED", "VALIDATION_ERROR"}
"""What a prompt's text alone may be refused with."""

AWKWARD = st.sampled_from(["\ud800", "a\udfffb", "\x00", "nul\x00inside", "\ufffe\uffff", "\U0010ffff",
                           "😀" * 300, "\u202e\u200b", "é" * 3000, " ", "\r\n\t"])
PROMPTS = st.one_of(AWKWARD, st.text(st.characters(exclude_categories=()), max_size=60),
                    st.lists(AWKWARD, min_size=1, max_size=4).map("".join))


@pytest.fixture(scope="module")
def threaded_node(tiny_model: Path) -> Iterator[NodeServer]:
    """A node on a loop of its own (hypothesis runs each example synchronously)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        config = NodeConfig(port=0, model_path=str(tiny_model), context_window=512, parallel=1, threads=1,
                            rate_limit_per_minute=0, session_rate_limit_per_minute=0)
        async with serve_node(config) as server:
            holder["server"], holder["stop"] = server, stop
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(120), "the node did not start"
    try:
        yield holder["server"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(60)
        loop.close()


def ws_exchange(ws: ClientConnection, frame: dict[str, Any]) -> list[dict[str, Any]]:
    ws.send(json.dumps(frame))
    frames = []
    while True:
        message = json.loads(ws.recv(timeout=60))
        frames.append(message)
        if message["type"] == "stream_end":
            return frames


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=PROMPTS)
def test_any_prompt_text_ends_in_an_answer_or_a_coded_error(threaded_node: NodeServer, text: str) -> None:
    request = {"prompt": text, "max_tokens": 2, "temperature": 0.0}
    with httpx.Client(base_url=threaded_node.url, timeout=60) as http:
        for stream in (False, True):
            response = http.post("/v1/inference", content=json.dumps({**request, "stream": stream}),
                                 headers={"content-type": "application/json"})
            assert response.status_code in (200, 400), (text, response.status_code, response.text)
            if response.status_code == 400:
                assert response.json()["details"]["code"] in CODED, response.text
            elif stream:
                assert response.text.endswith("data: [DONE]\n\n") and '"finish_reason"' in response.text
            else:
                assert response.json()["tokens_used"] <= 2
    with connect(threaded_node.ws_url, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "connected"
        frames = ws_exchange(ws, {"type": "prompt", "request": request, "id": "p"})
        end = frames[-1]
        if end["reason"] == "error":
            assert frames[-2]["type"] == "error" and frames[-2]["code"] in CODED and frames[-2]["id"] == "p", frames
        else:
            assert end["reason"] == "complete" and end["id"] == "p", frames
        again = ws_exchange(ws, {"type": "prompt", "request": {**request, "prompt": "still there?"}, "id": "q"})
        assert again[-1]["reason"] == "complete", "the connection keeps serving"


async def test_lone_surrogate_is_invalid_prompt_on_both_paths(node: NodeServer) -> None:
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        response = await http.post("/v1/inference", content=b'{"prompt":"\\ud800","max_tokens":2}',
                                   headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["details"]["code"] == "INVALID_PROMPT"
    client = await WireClient.open(node.ws_url)
    await client.send('{"type":"prompt","request":{"prompt":"\\ud800","max_tokens":2},"id":"s"}')
    error, end = await client.recv(), await client.recv()
    assert (error["code"], error["id"], end["reason"], end["id"]) == ("INVALID_PROMPT", "s", "error", "s")
    await client.close()


async def test_json_ping_is_ignored_idle_and_mid_stream(node: NodeServer) -> None:
    """The public TypeScript SDK sends {"type":"ping"} every 30 s; a prompt overlapping it must not fail."""
    client = await WireClient.open(node.ws_url)
    await client.send({"type": "ping"})
    await client.send({"type": "session_init", "session_id": "p", "id": "i"})
    assert (await client.recv())["type"] == "session_init_ack", "the ping got no answer"
    await client.send(prompt("long answer", rid="long", max_tokens=60))
    assert (await client.recv())["type"] == "stream_chunk"
    await client.send({"type": "ping", "timestamp": 1})
    frames = await client.until_end()
    assert [f for f in frames if f["type"] == "error"] == [] and frames[-1]["reason"] == "complete"
    await client.close()


async def test_an_unexpected_failure_while_serving_still_ends_the_request(node_factory: NodeFactory,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake at one seam: the engine stream raises a plain Python error (a bug, not an EngineError)."""
    node: NodeServer = await node_factory()

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(node.runtime.inference, "open_stream", broken)
    client = await WireClient.open(node.ws_url)
    await client.send(prompt("hello", rid="b"))
    error, end = await client.recv(), await client.recv()
    assert (error["code"], error["id"], end["reason"], end["id"]) == ("INTERNAL_ERROR", "b", "error", "b")
    await client.close()
    async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
        for stream in (False, True):
            response = await http.post("/v1/inference", json={"prompt": "hi", "max_tokens": 2, "stream": stream})
            assert response.status_code == 500 and response.json()["details"]["code"] == "INTERNAL_ERROR"
