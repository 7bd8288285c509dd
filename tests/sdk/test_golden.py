"""Coherent text: stories260K's known greedy output, through SDK + WebSocket + node and in-process."""

from __future__ import annotations

from pathlib import Path

from fabstir.node.engines.base import GenerationParams, TokenPiece
from fabstir.node.engines.llama import LlamaCppEngine
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory

GOLDEN = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."


async def test_golden_through_the_sdk_matches_in_process(node_factory: NodeFactory, stories_model: Path) -> None:
    node = await node_factory(model_path=str(stories_model), template="raw", repeat_penalty=1.0)
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("golden", node.url)
        result = await sdk.inference.send_prompt("Once upon a time", PromptOptions(max_tokens=40, temperature=0.0))
    assert result.text.startswith(GOLDEN), result.text
    engine = LlamaCppEngine(stories_model, context_window=512, threads=1)
    try:
        events = engine.generate("Once upon a time", GenerationParams(max_tokens=40, temperature=0.0,
                                                                     repeat_penalty=1.0), lambda: False)
        local = "".join(e.text for e in events if isinstance(e, TokenPiece))
    finally:
        engine.close()
    assert local == result.text
    assert result.completion_tokens == 40 and result.usage is not None and result.usage.prompt_tokens == 5
