"""The node's HTTP API against a real node (llama.cpp over the tiny model) on 127.0.0.1: JSON and SSE."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabstir.node.engines.templates import TEMPLATES
from fabstir.node.server import NodeServer
from fabstir.protocol import ChatTurn
from tests.conftest import TEST_ENGINE, NodeFactory

FINGERPRINTS = ["activation-fingerprint"] if TEST_ENGINE in ("llama", "llama-batch") else []
"""Both llama.cpp engines fingerprint their answers."""

GOLDEN = ", there was a little girl named Lily. She loved to play outside in the park."


def client_for(node: NodeServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, timeout=60.0)


def body(prompt: str = "hello there", **fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": prompt, "max_tokens": 5, "temperature": 0.0, "stream": False}
    request.update(fields)
    return request


def prompt_tokens_of(node: NodeServer, prompt: str) -> int:
    """What the node must report as prompt_tokens: the plain template's rendering, by the model's tokenizer."""
    service = node.runtime.inference
    return service.pool.primary.count_tokens(service.template.render([ChatTurn("user", prompt)]))


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order; every event must be exactly one data line."""
    assert text.endswith("\n\n"), text[-50:]
    events = text[:-2].split("\n\n")
    payloads = []
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, event
        payloads.append(event.removeprefix("data: "))
    return payloads


async def assert_still_serving(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/inference", json=body("still there?", max_tokens=3))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["tokens_used"] == 3 and answer["finish_reason"] == "length" and answer["content"]


# --- informational endpoints -----------------------------------------------------------------------


async def test_health(node: NodeServer) -> None:
    async with client_for(node) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "healthy", "model": "tiny", "sessions": 0}


async def test_version(node: NodeServer) -> None:
    async with client_for(node) as client:
        response = await client.get("/v1/version")
    assert response.status_code == 200
    info = response.json()
    assert set(info) == {"version", "build", "date", "features", "chains", "breaking_changes", "signing_key",
                         "public_key"}
    assert info["signing_key"] == node.runtime.signing_public_key
    assert info["public_key"] == node.runtime.e2e_public_key and len(info["public_key"]) == 66
    assert info["version"] == "0.1.0"
    assert info["build"] == "fabstir-py-0.1.0"
    assert info["date"] == "2026-11-26"
    assert info["features"] == ["server-context", "message-index", "session-resume", "stream-cancel",
                                "http-sse", "signed-receipts", "rate-limits", "signed-messages", "continue-from",
                                "permessage-deflate", "e2e-v1", "e2e-compression", *FINGERPRINTS]
    assert info["chains"] == [] and info["breaking_changes"] == []


async def test_version_without_extensions_or_compression(node_factory: NodeFactory) -> None:
    bare = await node_factory(extensions=False)
    plain_ws = await node_factory(ws_compression=False)
    async with client_for(bare) as client:
        assert (await client.get("/v1/version")).json()["features"] == []
    async with client_for(plain_ws) as client:
        assert (await client.get("/v1/version")).json()["features"] == [
            "server-context", "message-index", "session-resume", "stream-cancel", "http-sse", "signed-receipts",
            "rate-limits", "signed-messages", "continue-from", "e2e-v1", "e2e-compression", *FINGERPRINTS]


async def test_models(node: NodeServer) -> None:
    async with client_for(node) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.json() == {"models": [{"id": "tiny", "name": "tiny", "context_window": 512,
                                           "template": "plain"}]}


async def test_model_id_from_config(node_factory: NodeFactory) -> None:
    named = await node_factory(model_id="my-model", template="chatml")
    async with client_for(named) as client:
        assert (await client.get("/health")).json()["model"] == "my-model"
        assert (await client.get("/v1/models")).json()["models"][0] == {
            "id": "my-model", "name": "my-model", "context_window": 512, "template": "chatml"}


async def test_unknown_path_and_wrong_method(node: NodeServer) -> None:
    async with client_for(node) as client:
        assert (await client.get("/v1/nothing")).status_code == 404
        assert (await client.get("/v1/inference")).status_code == 405
        assert (await client.post("/health")).status_code == 405
        await assert_still_serving(client)


# --- POST /v1/inference, JSON --------------------------------------------------------------------------


async def test_inference_json(node: NodeServer) -> None:
    async with client_for(node) as client:
        response = await client.post("/v1/inference", json=body("hello there", request_id="req-1", model="m",
                                                                chain_id=84532))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) == {"model", "content", "tokens_used", "finish_reason", "request_id", "chain_id", "usage"}
    assert answer["model"] == "m"
    assert answer["request_id"] == "req-1"
    assert answer["chain_id"] == 84532
    assert isinstance(answer["content"], str) and answer["content"]
    assert answer["finish_reason"] == "length"
    assert answer["tokens_used"] == 5
    prompt_tokens = prompt_tokens_of(node, "hello there")
    assert answer["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5,
                               "total_tokens": prompt_tokens + 5, "context_window_size": 512}


async def test_inference_json_defaults(node: NodeServer) -> None:
    """No model, no request_id: the node's model id and a fresh UUID4 per request."""
    async with client_for(node) as client:
        first = (await client.post("/v1/inference", json=body(max_tokens=2))).json()
        second = (await client.post("/v1/inference", json=body(max_tokens=2))).json()
        # a request_id that is not a string is not echoed either
        third = (await client.post("/v1/inference", json=body(max_tokens=2, request_id=7))).json()
    assert first["model"] == "tiny" and first["chain_id"] is None
    ids = [first["request_id"], second["request_id"], third["request_id"]]
    assert [uuid.UUID(i).version for i in ids] == [4, 4, 4]
    assert [str(uuid.UUID(i)) for i in ids] == ids
    assert len(set(ids)) == 3
    assert first["tokens_used"] == first["usage"]["completion_tokens"] == 2


async def test_greedy_is_deterministic_and_max_tokens_exact(node: NodeServer) -> None:
    async with client_for(node) as client:
        answers = [(await client.post("/v1/inference", json=body("once upon a time", max_tokens=n))).json()
                   for n in (1, 4, 4)]
    assert [a["tokens_used"] for a in answers] == [1, 4, 4]
    assert [a["finish_reason"] for a in answers] == ["length"] * 3
    assert answers[1]["content"] == answers[2]["content"]
    assert answers[1]["content"].startswith(answers[0]["content"])


async def test_max_tokens_clamped_to_room_left(node: NodeServer) -> None:
    prompt = " ".join(["the"] * 150)
    prompt_tokens = prompt_tokens_of(node, prompt)
    assert prompt_tokens < 511
    async with client_for(node) as client:
        response = await client.post("/v1/inference", json=body(prompt, max_tokens=5000))
    answer = response.json()
    assert response.status_code == 200
    assert answer["finish_reason"] == "length"
    assert answer["tokens_used"] == 512 - prompt_tokens
    assert answer["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 512 - prompt_tokens,
                               "total_tokens": 512, "context_window_size": 512}


async def test_conversation_context_counts_in_prompt_tokens(node: NodeServer) -> None:
    context = [{"role": "user", "content": "what is the sun"}, {"role": "assistant", "content": "a star"}]
    expected = node.runtime.inference.pool.primary.count_tokens(TEMPLATES["plain"].render(
        [ChatTurn("user", "what is the sun"), ChatTurn("assistant", "a star"), ChatTurn("user", "and the moon")]))
    async with client_for(node) as client:
        answer = (await client.post("/v1/inference", json=body("and the moon", conversation_context=context))).json()
    assert answer["usage"]["prompt_tokens"] == expected
    assert expected > prompt_tokens_of(node, "and the moon")


# --- POST /v1/inference, SSE ---------------------------------------------------------------------------


async def test_inference_sse(node: NodeServer) -> None:
    async with client_for(node) as client:
        response = await client.post("/v1/inference", json=body("hello there", stream=True, max_tokens=6,
                                                                request_id="sse-1"))
        reference = (await client.post("/v1/inference", json=body("hello there", max_tokens=6))).json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    payloads = sse_events(response.text)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    pieces, final = events[:-1], events[-1]
    assert pieces, "at least one content event before the final one"
    for piece in pieces:
        assert set(piece) == {"content", "tokens", "request_id"}
        assert piece["request_id"] == "sse-1"
        assert isinstance(piece["content"], str) and piece["content"]
        assert isinstance(piece["tokens"], int) and piece["tokens"] >= 1
    assert sum(p["tokens"] for p in pieces) == final["tokens_used"] == 6
    assert "".join(p["content"] for p in pieces) == final["content"]
    assert final["request_id"] == "sse-1" and final["finish_reason"] == "length"
    prompt_tokens = prompt_tokens_of(node, "hello there")
    assert final["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 6,
                              "total_tokens": prompt_tokens + 6, "context_window_size": 512}
    # greedy: streaming and non-streaming give the same text
    assert final["content"] == reference["content"]


async def test_json_is_the_default(node: NodeServer) -> None:
    """As on the public node's HTTP API, a request that does not ask for ``stream`` gets one JSON answer."""
    request = body(max_tokens=2)
    del request["stream"]
    async with client_for(node) as client:
        response = await client.post("/v1/inference", json=request)
    assert response.headers["content-type"] == "application/json"
    final = response.json()
    assert final["tokens_used"] == 2 and uuid.UUID(final["request_id"]).version == 4


async def test_sse_read_incrementally(node: NodeServer) -> None:
    """A client that reads the stream line by line sees the same events."""
    lines: list[str] = []
    async with client_for(node) as client:
        async with client.stream("POST", "/v1/inference", json=body(stream=True, max_tokens=4)) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
        await assert_still_serving(client)
    data = [line.removeprefix("data: ") for line in lines if line]
    assert all(line.startswith("data: ") for line in lines if line)
    assert data[-1] == "[DONE]"
    final = json.loads(data[-2])
    assert "".join(json.loads(d)["content"] for d in data[:-2]) == final["content"]
    assert final["usage"]["completion_tokens"] == 4


# --- bad requests ----------------------------------------------------------------------------------------


MALFORMED: list[bytes] = [
    b"{bad",
    b"",
    b"\xff\xfe\x00",
    b'{"prompt": "x", "max_tokens": 5',
    b"[" * 100_000,  # nesting deeper than the JSON parser's recursion limit
    b"[" * 5_000 + b"]" * 5_000,
]

INVALID: list[tuple[Any, str, str]] = [
    ({"max_tokens": 5}, "Prompt cannot be empty", "VALIDATION_ERROR"),
    ({"prompt": "", "max_tokens": 5}, "Prompt cannot be empty", "VALIDATION_ERROR"),
    ({"prompt": 3.5, "max_tokens": 5}, "field 'prompt' must be a string", "VALIDATION_ERROR"),
    ({"prompt": "x"}, "request needs max_tokens > 0", "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": 0}, "field 'max_tokens' must be an integer >= 1", "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": -3}, "field 'max_tokens' must be an integer >= 1", "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": 2.5}, "field 'max_tokens' must be an integer >= 1", "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": 5, "temperature": 5}, "temperature must be between 0 and 2",
     "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": 5, "temperature": -0.1}, "temperature must be between 0 and 2",
     "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": 5, "temperature": "hot"}, "field 'temperature' must be a number",
     "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": 5, "stream": "yes"}, "field 'stream' must be a boolean", "VALIDATION_ERROR"),
    ({"prompt": "x", "max_tokens": 5, "conversation_context": [{"role": "robot", "content": "hi"}]},
     "conversation turns need a role (system|user|assistant) and string content", "VALIDATION_ERROR"),
    ([1, 2, 3], "field 'request' must be an object", "VALIDATION_ERROR"),
    ("just a string", "field 'request' must be an object", "VALIDATION_ERROR"),
    (None, "inference needs a 'request' object", "VALIDATION_ERROR"),
]


async def test_malformed_json(node: NodeServer) -> None:
    """Each malformed body gets a 400 validation_error, and the node then answers a good request."""
    async with client_for(node) as client:
        for raw in MALFORMED:
            response = await client.post("/v1/inference", content=raw,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, raw[:40]
            assert response.json() == {"error_type": "validation_error", "message": "body is not valid JSON",
                                       "request_id": None, "details": {"code": "INVALID_JSON"}}, raw[:40]
            await assert_still_serving(client)


async def test_invalid_request_fields(node: NodeServer) -> None:
    """Each invalid request gets a 400 naming the problem, and the node then answers a good request."""
    async with client_for(node) as client:
        for request_body, message, code in INVALID:
            response = await client.post("/v1/inference", content=json.dumps(request_body).encode(),
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, request_body
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"error_type": "validation_error", "message": message,
                                       "request_id": None, "details": {"code": code}}, request_body
            await assert_still_serving(client)


async def test_body_over_max_frame_bytes(node_factory: NodeFactory) -> None:
    small = await node_factory(max_frame_bytes=2048)
    good = json.dumps(body("hello", max_tokens=2)).encode()
    at_limit = good + b" " * (2048 - len(good))  # trailing whitespace is valid JSON
    over = at_limit + b" "
    assert (len(at_limit), len(over)) == (2048, 2049)
    headers = {"content-type": "application/json"}
    async with client_for(small) as client:
        accepted = await client.post("/v1/inference", content=at_limit, headers=headers)
        assert accepted.status_code == 200 and accepted.json()["tokens_used"] == 2
        rejected = await client.post("/v1/inference", content=over, headers=headers)
        assert rejected.status_code == 413
        assert rejected.json() == {"error_type": "payload_too_large",
                                   "message": "body of 2049 bytes exceeds the limit of 2048",
                                   "request_id": None, "details": {"code": "PAYLOAD_TOO_LARGE"}}
        huge = await client.post("/v1/inference", json=body("word " * 5000))
        assert huge.status_code == 413
        await assert_still_serving(client)


@pytest.mark.parametrize("stream", [False, True])
async def test_prompt_over_context_window(node: NodeServer, stream: bool) -> None:
    prompt = " ".join(["the"] * 600)
    prompt_tokens = prompt_tokens_of(node, prompt)
    assert prompt_tokens > 512
    async with client_for(node) as client:
        response = await client.post("/v1/inference", json=body(prompt, stream=stream, request_id="big"))
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"  # an error, never an event stream
        assert response.json() == {
            "error_type": "invalid_request",
            "message": f"Prompt ({prompt_tokens} tokens) exceeds context window (512 tokens) "
                       f"by {prompt_tokens + 1 - 512} tokens",
            "request_id": "big",
            "details": {"code": "TOKEN_LIMIT_EXCEEDED", "prompt_tokens": prompt_tokens, "context_window_size": 512},
        }
        await assert_still_serving(client)


async def test_prompt_that_fills_the_window_exactly_is_refused(node: NodeServer) -> None:
    """A prompt of 512 tokens leaves no room for one completion token; 511 leaves room for exactly one."""
    service = node.runtime.inference
    words = 1
    while prompt_tokens_of(node, " ".join(["the"] * words)) < 511:
        words += 1
    fits = " ".join(["the"] * words)
    assert prompt_tokens_of(node, fits) == 511, "each 'the' must be one token for this test"
    too_long = fits + " the"
    assert service.pool.primary.count_tokens(service.template.render([ChatTurn("user", too_long)])) == 512
    async with client_for(node) as client:
        answer = (await client.post("/v1/inference", json=body(fits, max_tokens=50))).json()
        assert answer["tokens_used"] == 1 and answer["usage"]["total_tokens"] == 512
        refused = await client.post("/v1/inference", json=body(too_long, max_tokens=50))
        assert refused.status_code == 400
        assert refused.json()["details"] == {"code": "TOKEN_LIMIT_EXCEEDED", "prompt_tokens": 512,
                                             "context_window_size": 512}


# --- golden output ------------------------------------------------------------------------------------------


async def test_golden_stories(node_factory: NodeFactory, stories_model: Path) -> None:
    stories = await node_factory(model_path=str(stories_model), template="raw", repeat_penalty=1.0,
                                 context_window=512)
    request = {"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "stream": False}
    async with client_for(stories) as client:
        answer = (await client.post("/v1/inference", json=request)).json()
        streamed = (await client.post("/v1/inference", json={**request, "stream": True})).text
    assert answer["content"].startswith(GOLDEN)
    assert answer["model"] == "stories260K"
    assert answer["tokens_used"] == 30 and answer["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35,
                               "context_window_size": 512}
    payloads = sse_events(streamed)
    assert payloads[-1] == "[DONE]"
    assert "".join(json.loads(p)["content"] for p in payloads[:-2]) == answer["content"]
    assert json.loads(payloads[-2])["content"] == answer["content"]


async def test_json_answers_carry_the_signed_receipt_in_a_header(node: NodeServer) -> None:
    from fabstir.protocol.signing import Receipt, text_digest, verify_receipt

    async with client_for(node) as client:
        response = await client.post("/v1/inference", json=body("hello there", session_id="s-1"))
    answer = response.json()
    receipt = Receipt.from_wire(json.loads(response.headers["x-fabstir-receipt"]))
    verify_receipt(receipt, text=answer["content"], tokens=answer["tokens_used"],
                   expected_key=node.runtime.signing_public_key)
    assert receipt.session_id == "s-1" and receipt.text_sha256 == text_digest(answer["content"])
