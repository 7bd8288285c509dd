"""The gateway's HTTP face: the OpenAI API routes over a :class:`~fabstir.gateway.service.Gateway`.

Routes: ``POST /v1/chat/completions`` (JSON, or Server-Sent Events with ``"stream": true``), ``POST
/v1/completions`` (one prompt, same forms), ``GET /v1/models``
(the models discovery finds, with their hosts and prices), ``GET /openapi.json`` and ``GET /health``. With API
keys configured, every ``/v1`` route needs ``Authorization: Bearer <key>`` (401 otherwise). Each answer names
its host, model, tokens, price and receipt: in the ``x_fabstir`` field of the body (the final chunk when
streaming) and, when known before the body starts, in ``X-Fabstir-*`` headers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fabstir.discovery.selection import Requirements
from fabstir.gateway import wire
from fabstir.gateway.keys import ApiKey, KeyStore
from fabstir.gateway.service import Gateway, Reply
from fabstir.gateway.wire import GatewayError
from fabstir.sdk import InferenceResult, Session

__all__ = ["build_gateway_app"]

log = logging.getLogger("fabstir.gateway")

MAX_BODY_BYTES = 4 * 1024 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def build_gateway_app(gateway: Gateway, *, api_keys: Collection[str] | KeyStore = ()) -> Starlette:
    """The ASGI app; ``api_keys`` (when given: fixed tokens, or a :class:`KeyStore` with spending caps) are the
    bearer tokens ``/v1`` accepts."""
    store = api_keys if isinstance(api_keys, KeyStore) else None
    keys: frozenset[str] = frozenset() if isinstance(api_keys, KeyStore) else frozenset(api_keys)

    def guarded(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            token = token if scheme.lower() == "bearer" else ""
            try:
                if store is not None:
                    request.state.api_key = store.admit(token)
                elif keys and token not in keys:
                    raise GatewayError("invalid or missing API key", status=401, type="authentication_error",
                                       code="invalid_api_key")
                return await handler(request)
            except GatewayError as exc:
                return _error(exc)

        return check

    def charge(request: Request, reply: Reply) -> None:
        """Add the answer's cost to what the caller's key spent."""
        record: ApiKey | None = getattr(request.state, "api_key", None)
        if store is not None and record is not None and reply.result is not None:
            store.charge(record, Gateway.cost(reply.session, reply.result))

    async def chat(request: Request) -> Response:
        return await answer(request, wire.parse_chat_request(await _json(request)))

    async def completions(request: Request) -> Response:
        return await answer(request, wire.parse_completion_request(await _json(request)))

    async def answer(request: Request, chat_request: wire.ChatRequest) -> Response:
        if strategy := request.headers.get("x-fabstir-strategy"):
            chat_request = wire.ChatRequest(**{**_fields(chat_request), "strategy": strategy})
        record: ApiKey | None = getattr(request.state, "api_key", None)
        session = await gateway.session_for(chat_request, budget=record.left if record is not None else None)
        reply = gateway.reply(session, chat_request)
        headers = {"X-Fabstir-Host": session.host_url, "X-Fabstir-Session": session.session_id}
        if chat_request.stream:
            return StreamingResponse(_events(gateway, reply, chat_request, lambda: charge(request, reply)),
                                     media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        try:
            text = "".join([piece async for piece in gateway.pieces(reply)])
        finally:
            charge(request, reply)
        result = reply.result
        assert result is not None
        render = wire.text_completion if chat_request.stateless else wire.completion
        body_out = render(wire.new_completion_id(), chat_request.model or _served_model(result), text,
                          wire.finish_reason(result.finish_reason), _usage(result), _fabstir(session, result))
        if result.receipt is not None:
            headers["X-Fabstir-Receipt"] = json.dumps(result.receipt.to_wire(), separators=(",", ":"))
        headers["X-Fabstir-Tokens"] = str(result.tokens_used)
        return JSONResponse(body_out, headers=headers)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": await _models(gateway)})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    return Starlette(routes=[
        Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
        Route("/v1/completions", guarded(completions), methods=["POST"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])


async def _events(gateway: Gateway, reply: Reply, request: wire.ChatRequest,
                  charge: Callable[[], None]) -> AsyncIterator[str]:
    """The answer as ``chat.completion.chunk`` events (``text_completion`` for a completion), then ``[DONE]``;
    a failure mid-way is an ``error`` event."""
    completion_id, created, model = wire.new_completion_id(), int(time.time()), request.model
    text = request.stateless
    if not text:
        yield _sse(wire.chunk(completion_id, created, model, role=True, content=""))
    try:
        async for piece in gateway.pieces(reply):
            yield _sse(wire.text_chunk(completion_id, created, model, piece) if text
                       else wire.chunk(completion_id, created, model, content=piece))
    except GatewayError as exc:
        yield _sse(wire.error_body(exc))
        return
    finally:
        charge()
    result = reply.result
    assert result is not None
    finish, fabstir = wire.finish_reason(result.finish_reason), _fabstir(reply.session, result)
    yield _sse(wire.text_chunk(completion_id, created, model, "", finish, fabstir) if text
               else wire.chunk(completion_id, created, model, finish_reason=finish, fabstir=fabstir))
    if request.include_usage:
        usage = wire.usage_chunk(completion_id, created, model, _usage(result))
        yield _sse({**usage, "object": "text_completion"} if text else usage)
    yield "data: [DONE]\n\n"


async def _json(request: Request) -> object:
    """The request's JSON body.

    Raises:
        GatewayError: 413 over :data:`MAX_BODY_BYTES`, 400 not JSON.
    """
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise GatewayError(f"the body is over {MAX_BODY_BYTES} bytes", status=413)
    try:
        return json.loads(body)
    except ValueError:
        raise GatewayError("the body is not valid JSON") from None


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _error(error: GatewayError) -> Response:
    return JSONResponse(wire.error_body(error), status_code=error.status)


def _fields(request: wire.ChatRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__slots__}


def _usage(result: InferenceResult) -> dict[str, int]:
    prompt = result.usage.prompt_tokens if result.usage is not None else 0
    completion = result.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _served_model(result: InferenceResult) -> str:
    return result.receipt.model if result.receipt is not None else ""


def _fabstir(session: Session, result: InferenceResult) -> dict[str, Any]:
    """What the marketplace adds to an answer: who served it, for how much, and the signed receipts."""
    route = session.route
    return {
        "session_id": session.session_id,
        "host": session.host_url,
        "hosts": list(result.hosts),
        "switch_offsets": list(result.switch_offsets),
        "job_id": session.job_id,
        "model": _served_model(result),
        "tokens": result.tokens_used,
        "price_per_token": route.price_per_token if route is not None and route.model is not None else 0,
        "encrypted": session.is_encrypted,
        "receipts": [receipt.to_wire() for receipt in result.receipts],
    }


async def _models(gateway: Gateway) -> list[dict[str, Any]]:
    """Every model the discovered hosts serve, with how many hosts and the lowest price (x1000 precision)."""
    hosts = await gateway.sdk.discovery.discover_all_hosts(Requirements(), registered_only=gateway.paid)
    found: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for host in hosts:
            names = list(host.models) or await _ask_models(client, host.api_url)
            for name in names:
                entry = found.setdefault(name, {"id": name, "object": "model", "created": 0, "owned_by": "fabstir",
                                                "hosts": 0, "min_price_per_token": None})
                entry["hosts"] += 1
                price = host.price_per_token
                if entry["min_price_per_token"] is None or price < entry["min_price_per_token"]:
                    entry["min_price_per_token"] = price
    return sorted(found.values(), key=lambda entry: entry["id"])


async def _ask_models(client: httpx.AsyncClient, url: str) -> list[str]:
    """A host's own ``GET /v1/models`` (for hosts a source listed without models); ``[]`` if it does not answer.

    Our node and the public node answer ``{"models": [...]}``; an OpenAI-style server ``{"data": [...]}``.
    """
    try:
        response = await client.get(url.rstrip("/") + "/v1/models")
        body = response.json() if response.status_code == 200 else {}
        data = body.get("models", body.get("data", []))
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
    if not isinstance(data, list):
        return []
    return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "fabstir gateway", "version": "1",
             "description": "The OpenAI chat-completions API, served by hosts of the fabstir marketplace."},
    "paths": {
        "/v1/chat/completions": {"post": {
            "summary": "Create a chat completion (JSON, or Server-Sent Events with stream=true)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["model", "messages"],
                "properties": {
                    "model": {"type": "string", "description": "model id, optionally ':strategy' "
                              "(cheapest, fastest, reputable, composite, round_robin)"},
                    "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"],
                                 "properties": {"role": {"enum": ["system", "developer", "user", "assistant"]},
                                                "content": {"type": ["string", "array"]}}}},
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "max_completion_tokens": {"type": "integer", "minimum": 1},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "stream": {"type": "boolean"},
                    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
                }}}}},
            "responses": {"200": {"description": "a chat.completion, or chat.completion.chunk events"},
                          "400": {"description": "invalid request"}, "401": {"description": "bad API key"},
                          "402": {"description": "budget used up"}, "429": {"description": "rate limited"},
                          "502": {"description": "the host failed"}, "503": {"description": "no host available"}},
        }},
        "/v1/completions": {"post": {
            "summary": "Complete one prompt (a single user turn; JSON, or Server-Sent Events with stream=true)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["model", "prompt"],
                "properties": {"model": {"type": "string"}, "prompt": {"type": ["string", "array"]},
                               "max_tokens": {"type": "integer", "minimum": 1},
                               "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                               "stream": {"type": "boolean"}}}}}},
            "responses": {"200": {"description": "a text_completion, or text_completion events"}},
        }},
        "/v1/models": {"get": {"summary": "The models discovered hosts serve",
                               "responses": {"200": {"description": "a list of models"}}}},
    },
}
