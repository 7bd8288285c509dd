"""The ``continue-from`` extension: a host continues an answer another host started, token for token.

Real node, real llama.cpp. The exactness tests use stories260K (coherent text from ../shared/models):
with greedy decoding, the answer a node gives when told the first k tokens' text must be the rest of the
answer it gives uninterrupted, for cuts anywhere in it.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from fabstir.node.server import NodeServer
from fabstir.protocol import Feature
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.helpers import WireClient, prompt, text_of

PROMPT = "Once upon a time"
ANSWER_TOKENS = 96


async def answer_pieces(url: str, prompt: str, max_tokens: int) -> tuple[str, list[tuple[str, int]]]:
    """The whole answer and its pieces with the token count reached after each, through the SDK."""
    pieces: list[tuple[str, int]] = []
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("whole", url)
        async with sdk.inference.stream(prompt, PromptOptions(max_tokens=max_tokens, temperature=0.0)) as stream:
            async for piece in stream:
                pieces.append((piece, stream.tokens_received))
        assert stream.result.tokens_used == max_tokens
        return stream.result.text, pieces


async def test_continuation_over_http_is_the_rest_of_the_answer(node_factory: NodeFactory,
                                                                 stories_model: Path) -> None:
    node = await node_factory(model_path=str(stories_model), template="raw")
    assert Feature.CONTINUE_FROM in node.runtime.features
    whole, pieces = await answer_pieces(node.url, PROMPT, ANSWER_TOKENS)
    # cut after the piece that reaches each of these token counts (pieces may carry several tokens)
    cuts = sorted({next(i + 1 for i, (_, reached) in enumerate(pieces) if reached >= target)
                   for target in (1, 2, 7, 20, 33, 50, 71, 90)})
    cuts = [cut for cut in cuts if pieces[cut - 1][1] < ANSWER_TOKENS]
    assert len(cuts) >= 4, pieces
    async with httpx.AsyncClient(base_url=node.url, timeout=60.0) as client:
        for cut in cuts:
            prefix = "".join(text for text, _ in pieces[:cut])
            tokens = pieces[cut - 1][1]
            response = await client.post("/v1/inference", json={
                "prompt": PROMPT, "max_tokens": ANSWER_TOKENS - tokens, "temperature": 0.0, "stream": False,
                "continue_from": prefix})
            assert response.status_code == 200, response.text
            answer = response.json()
            assert prefix + answer["content"] == whole, f"cut after {tokens} tokens"
            assert answer["tokens_used"] == ANSWER_TOKENS - tokens


async def test_continuation_goes_into_the_server_side_history(node: NodeServer) -> None:
    """Over the WebSocket: the node streams only the rest, and records the whole answer in the session's history."""
    client = await WireClient.open(node.ws_url)
    ack = await client.init("continued")
    assert Feature.CONTINUE_FROM in ack["features"]
    request = prompt("tell me", rid="c", max_tokens=4, message_index=0)
    request["request"]["continue_from"] = "already said: "
    await client.send(request)
    frames = await client.until_end()
    served = text_of(frames)
    assert frames[-1]["tokens_used"] == 4 and not served.startswith("already said")
    await client.send({"type": "get_history", "session_id": "continued", "id": "h"})
    history = (await client.recv())["conversation_context"]
    await client.close()
    assert history == [{"role": "user", "content": "tell me"},
                       {"role": "assistant", "content": "already said: " + served}]


async def test_an_empty_continuation_is_a_plain_answer(node_factory: NodeFactory) -> None:
    server = await node_factory(template="raw")
    request = {"prompt": "hello", "max_tokens": 4, "temperature": 0.0, "stream": False}
    async with httpx.AsyncClient(base_url=server.url, timeout=60.0) as client:
        plain = (await client.post("/v1/inference", json=request)).json()
        empty = (await client.post("/v1/inference", json={**request, "continue_from": ""})).json()
        bad = await client.post("/v1/inference", json={**request, "continue_from": 7.5})
    assert plain["content"] == empty["content"]
    assert bad.status_code == 400 and bad.json()["details"]["code"] == "VALIDATION_ERROR"
