"""The node's HTTP API: health, version, models and ``/v1/inference`` (JSON or SSE)."""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fabstir.errors import EngineError, ProtocolError, TokenLimitExceededError
from fabstir.node.engines.base import Finished, TokenPiece
from fabstir.node.inference import PreparedPrompt
from fabstir.node.runtime import NodeRuntime
from fabstir.protocol import ErrorCode, InferenceRequest, PromptMessage, Usage, parse_client_message
from fabstir.protocol.parse import check_json_depth

__all__ = ["health", "version", "models", "inference"]

BUILD_DATE = "2026-11-26"


def _runtime(request: Request) -> NodeRuntime:
    runtime: NodeRuntime = request.app.state.runtime
    return runtime


async def health(request: Request) -> Response:
    runtime = _runtime(request)
    return JSONResponse({"status": "healthy", "model": runtime.inference.model_id,
                         "sessions": len(runtime.sessions)})


async def version(request: Request) -> Response:
    runtime = _runtime(request)
    return JSONResponse({
        "version": runtime.version,
        "build": f"fabstir-py-{runtime.version}",
        "date": BUILD_DATE,
        "features": list(runtime.features),
        "signing_key": runtime.signing_public_key,
        "public_key": runtime.e2e_public_key if runtime.config.encryption else None,
        "chains": [],
        "breaking_changes": [],
    })


async def models(request: Request) -> Response:
    service = _runtime(request).inference
    return JSONResponse({"models": [{
        "id": service.model_id,
        "name": service.model_id,
        "context_window": service.context_window,
        "template": service.template.name,
    }]})


def _error(status: int, error_type: str, message: str, request_id: str | None,
           details: dict[str, Any] | None = None) -> Response:
    return JSONResponse({"error_type": error_type, "message": message, "request_id": request_id,
                         "details": details}, status_code=status)


async def inference(request: Request) -> Response:
    runtime = _runtime(request)
    assert runtime.limiter is not None
    wait = runtime.limiter.check(request.client.host if request.client else "unknown", None)
    if wait > 0:
        response = _error(429, "rate_limit_exceeded", f"too many requests; retry after {wait:.2f} s", None,
                          {"code": "RATE_LIMITED", "retry_after": round(wait, 3)})
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    body = await request.body()
    if len(body) > runtime.config.max_frame_bytes:
        return _error(413, "payload_too_large", f"body exceeds {runtime.config.max_frame_bytes} bytes", None)
    try:
        text = body.decode("utf-8")
        check_json_depth(text)
        payload = json.loads(text)
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        frame = json.dumps({"type": "inference", "request": payload})
        message = parse_client_message(frame, max_bytes=len(frame) + 1)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _error(400, "validation_error", "body is not valid JSON", None)
    except ProtocolError as exc:
        if exc.code == ErrorCode.INVALID_JSON:
            return _error(400, "validation_error", "body is not valid JSON", None)
        return _error(400, "validation_error", exc.message, None, {"code": exc.code})
    assert isinstance(message, PromptMessage)
    request_id = request_id if isinstance(request_id, str) else str(uuid.uuid4())
    req = message.request
    try:
        prepared = runtime.inference.prepare(req, ())
    except TokenLimitExceededError as exc:
        return _error(400, "invalid_request", exc.message, request_id, {"code": exc.code, **exc.details})
    if isinstance(payload, dict) and payload.get("stream") is True:
        return StreamingResponse(_sse(runtime, req, prepared, request_id), media_type="text/event-stream")
    return await _complete(runtime, req, prepared, request_id)


async def _run(runtime: NodeRuntime, prepared: PreparedPrompt, cancel: threading.Event
               ) -> AsyncGenerator[TokenPiece | Finished, None]:
    async with runtime.inference.open_stream(prepared, cancel) as events:
        async for event in events:
            yield event


def _final(runtime: NodeRuntime, req: InferenceRequest, prepared: PreparedPrompt, text: str,
           finished: Finished, request_id: str) -> dict[str, Any]:
    usage = Usage(prepared.fitted.prompt_tokens, finished.completion_tokens, runtime.inference.context_window)
    return {"model": req.model or runtime.inference.model_id, "content": text,
            "tokens_used": finished.completion_tokens, "finish_reason": finished.finish_reason,
            "request_id": request_id, "chain_id": req.chain_id, "usage": usage.to_wire()}


async def _complete(runtime: NodeRuntime, req: InferenceRequest, prepared: PreparedPrompt,
                    request_id: str) -> Response:
    parts: list[str] = []
    finished = Finished("cancelled", 0)
    try:
        async for event in _run(runtime, prepared, threading.Event()):
            if isinstance(event, TokenPiece):
                parts.append(event.text)
            else:
                finished = event
    except EngineError as exc:
        return _error(500, "internal_error", exc.message, request_id, {"code": ErrorCode.ENGINE_ERROR})
    return JSONResponse(_final(runtime, req, prepared, "".join(parts), finished, request_id))


async def _sse(runtime: NodeRuntime, req: InferenceRequest, prepared: PreparedPrompt,
               request_id: str) -> AsyncIterator[str]:
    parts: list[str] = []
    finished = Finished("cancelled", 0)
    cancel = threading.Event()
    try:
        async for event in _run(runtime, prepared, cancel):
            if isinstance(event, TokenPiece):
                parts.append(event.text)
                yield _sse_event({"content": event.text, "tokens": event.tokens, "request_id": request_id})
            else:
                finished = event
    except EngineError as exc:
        yield _sse_event({"error_type": "internal_error", "message": exc.message, "request_id": request_id})
    else:
        yield _sse_event(_final(runtime, req, prepared, "".join(parts), finished, request_id))
    finally:
        cancel.set()
    yield "data: [DONE]\n\n"


def _sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"
