"""``compression``: bytes on the wire with and without permessage-deflate (RFC 7692), in one run.

A byte-counting TCP relay on 127.0.0.1 sits between the SDK and an in-process
node, so the counts are the real TCP payload (WebSocket framing included).
Two workloads, each measured with compression off and on:

- ``resume``: restoring a 50-turn conversation with ``session_resume``
  (client → node bytes). The conversation is real model output: 50 answers of
  stories260K to 50 different prompts.
- ``stream``: one long streamed answer (node → client bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from common import Settings, log, rounded
from fabstir.node.config import NodeConfig
from fabstir.node.server import serve_node
from fabstir.protocol import ChatTurn
from fabstir.sdk import FabstirSDK, PromptOptions

TURNS = 50


@dataclasses.dataclass
class Counter:
    up: int = 0
    down: int = 0


@contextlib.asynccontextmanager
async def byte_counting_relay(target_port: int, counter: Counter) -> AsyncIterator[int]:
    """A TCP relay on 127.0.0.1 that forwards to ``target_port`` and counts bytes each way."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    counter.up += len(data)
                else:
                    counter.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _conversation(url: str, settings: Settings) -> list[ChatTurn]:
    """50 real turns: each prompt answered by the model (fresh session each, so answers differ)."""
    history: list[ChatTurn] = []
    subjects = ["a dog", "the sea", "a red ball", "a little bird", "the park", "a big tree", "a cat", "the sun",
                "a boat", "a cake"]
    async with FabstirSDK(default_options=PromptOptions(max_tokens=96, temperature=0.8)) as sdk:
        for turn in range(TURNS):
            prompt = f"Once upon a time, there was {subjects[turn % len(subjects)]} that"
            await sdk.inference.connect_to_session(f"gen-{turn}", url)
            result = await sdk.inference.send_prompt(prompt)
            await sdk.inference.close()
            history += [ChatTurn("user", prompt), ChatTurn("assistant", result.text)]
    return history


async def _measure_resume(port: int, history: list[ChatTurn], compression: bool) -> int:
    counter = Counter()
    async with byte_counting_relay(port, counter) as relay, FabstirSDK(compression=compression) as sdk:
        await sdk.inference.connect_to_session("resume", f"http://127.0.0.1:{relay}", conversation_context=history)
        await sdk.inference.close()
    return counter.up


async def _measure_stream(port: int, settings: Settings, compression: bool) -> tuple[int, int]:
    counter = Counter()
    async with byte_counting_relay(port, counter) as relay, FabstirSDK(compression=compression) as sdk:
        await sdk.inference.connect_to_session("stream", f"http://127.0.0.1:{relay}")
        before = counter.down
        result = await sdk.inference.send_prompt(settings.prompt, PromptOptions(max_tokens=400, temperature=0.0))
        await sdk.inference.close()
    return counter.down - before, result.completion_tokens


async def run_compression(settings: Settings) -> dict[str, object]:
    """Measure and return the ``compression`` JSON object."""
    config = NodeConfig(port=0, model_path=str(settings.model), template=settings.template, context_window=2048,
                        parallel=1, threads=settings.threads, repeat_penalty=1.0,
                        max_frame_bytes=8 << 20)
    async with serve_node(config) as node:
        log("compression: generating a 50-turn conversation with the model")
        history = await _conversation(node.url, settings)
        resume = {flag: await _measure_resume(node.port, history, flag) for flag in (False, True)}
        stream = {flag: await _measure_stream(node.port, settings, flag) for flag in (False, True)}
    text_bytes = sum(len(turn.content.encode()) for turn in history)
    log(f"compression: resume {resume[False]} -> {resume[True]} bytes; stream {stream[False][0]} -> "
        f"{stream[True][0]} bytes")
    return {
        "resume_plain_bytes": resume[False],
        "resume_compressed_bytes": resume[True],
        "resume_reduction": rounded(1 - resume[True] / resume[False], 3),
        "stream_plain_bytes": stream[False][0],
        "stream_compressed_bytes": stream[True][0],
        "stream_reduction": rounded(1 - stream[True][0] / stream[False][0], 3),
        "stream_tokens": stream[False][1],
        "turns": TURNS,
        "conversation_text_bytes": text_bytes,
        **settings.model_info(),
    }
