"""A host dies while the gateway streams its answer to an OpenAI client: the answer goes on from another host.

The serving host is ``fabstir node serve`` in its own process (SIGKILL); the other is a node in this process;
the gateway chooses by ``round_robin`` from a static list of the two, the dead one first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai

from fabstir.discovery.selection import HostCandidate
from fabstir.discovery.sources import StaticSource
from fabstir.gateway import Gateway, serve_gateway
from fabstir.sdk import FabstirSDK
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.conftest import NodeFactory
from tests.processes import NodeProcess

KEY = "sk-failover"
ANSWER_TOKENS = 400


async def test_openai_stream_survives_its_host_dying(node_factory: NodeFactory, tmp_path: Path,
                                                     node_processes: list[NodeProcess]) -> None:
    # a window with room for the plain template's preamble and the whole answer
    model = write_tiny_gguf(tmp_path / "tiny.gguf", seed=0, context_length=2048)
    survivor = await node_factory(model_path=str(model), parallel=1, context_window=2048)
    victim = NodeProcess.start(model, tmp_path / "a", "a", extra=("--context-window", "2048"))
    node_processes.append(victim)
    first = await victim.url()
    source = StaticSource([HostCandidate("0x01", first), HostCandidate("0x02", survivor.url)])
    async with asyncio.timeout(180):
        async with serve_gateway(Gateway(FabstirSDK(discovery_sources=[source]), strategy="round_robin"),
                                 api_keys=[KEY]) as server:
            async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120) as client:
                stream = await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "a long one"}], max_tokens=ANSWER_TOKENS,
                    temperature=0, stream=True, stream_options={"include_usage": True})
                text, chunks = "", []
                async for chunk in stream:
                    chunks.append(chunk)
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                    if len(text) > 40 and victim.process.poll() is None:
                        victim.kill()
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    fabstir = final.model_extra["x_fabstir"] if final.model_extra else {}
    assert fabstir["hosts"] == [first, survivor.url], "the answer moved to the other host"
    assert fabstir["tokens"] == ANSWER_TOKENS and chunks[-1].usage is not None, (fabstir, chunks[-1].usage)
    assert chunks[-1].usage.completion_tokens == ANSWER_TOKENS, "no token lost"
    assert len(fabstir["switch_offsets"]) == 1 and text
