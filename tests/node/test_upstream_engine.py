"""``--engine openai``: our node in front of an OpenAI-compatible server the host already runs.

The upstream is a real ``python -m llama_cpp.server`` over the suite's tiny GGUF, in its own process on
127.0.0.1 (stopped by PID); our node forwards to it, free and then paid and encrypted on the embedded chain.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fabstir.errors import EngineError
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.host_chain import HostChain
from fabstir.node.server import serve_node
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.helpers import closed_port_url, free_port
from tests.paid.conftest import PaidWorld, add_host, world  # noqa: F401 (a fixture)

GREEDY = PromptOptions(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama_cpp.server over the tiny model; its base URL."""
    from fabstir.testing.tiny_gguf import write_tiny_gguf

    folder = tmp_path_factory.mktemp("upstream")
    model = write_tiny_gguf(folder / "tiny.gguf", seed=0, context_length=512)
    port = free_port()
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                                "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "NO_PROXY": "127.0.0.1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llama_cpp.server did not come up"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def upstream_answer(url: str, prompt: str, max_tokens: int) -> str:
    """The same prompt asked of the upstream directly."""
    body = {"model": "tiny.gguf", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 0.9,
            "seed": 0, "repeat_penalty": 1.1}
    return str(httpx.post(url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"])


async def test_a_free_node_streams_what_the_upstream_generates(upstream: str, node_factory: NodeFactory) -> None:
    node = await node_factory(engine="openai", upstream=upstream, model_path="tiny.gguf", template="raw",
                              parallel=1)
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("up", node.url)
        result = await sdk.inference.send_prompt("Once upon a time")
        async with sdk.inference.stream("a long one", PromptOptions(max_tokens=200, temperature=0.0)) as stream:
            async for _ in stream:
                if stream.tokens_received >= 3:
                    await sdk.inference.cancel()
        cancelled = stream.result
    assert result.tokens_used == 12 and result.receipt is not None and result.receipt.tokens == 12
    assert result.text == await asyncio.to_thread(upstream_answer, upstream, "Once upon a time", 12)
    assert result.usage is not None and result.usage.prompt_tokens > 0
    assert cancelled.finish_reason == "cancelled" and cancelled.tokens_used < 200


async def test_a_dead_upstream_is_a_coded_error(node_factory: NodeFactory) -> None:
    with pytest.raises(EngineError) as dead:
        await node_factory(engine="openai", upstream=closed_port_url(), model_path="tiny.gguf")
    assert dead.value.code == "UPSTREAM_UNAVAILABLE"
    with pytest.raises(Exception) as missing:
        NodeConfig(engine="openai", model_path="tiny.gguf")
    assert getattr(missing.value, "code", None) == "UPSTREAM_REQUIRED"


async def test_paid_and_encrypted_in_front_of_the_upstream(upstream: str, world: PaidWorld,  # noqa: F811
                                                           tmp_path: Path) -> None:
    billing = BillingService(HostChain(world.market, world.host, world.model), tmp_path / "ledger.db",
                             retry_delay=0.25)
    config = NodeConfig(port=0, engine="openai", upstream=upstream, model_path=world.model_file, template="raw",
                        parallel=1, context_window=512)
    async with serve_node(config, billing=billing) as node:
        await add_host(world, world.host, node.url, 2_000_000, signing_key=node.runtime.signing_public_key,
                       encryption_key=node.runtime.e2e_public_key)
        async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                              default_options=GREEDY) as sdk:
            opened = await sdk.sessions.open_session(world.model, 10**15, host=world.host.address)
            await opened.connect()
            assert sdk.inference.is_encrypted(opened.session_id)
            result = await opened.send_prompt("Once upon a time")
            await opened.close()
    assert result.tokens_used == 12 and result.receipt is not None and result.receipt.price_per_token == 2_000_000
