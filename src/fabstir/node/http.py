"""The node's HTTP API: health, version, models, the checkpoint index and ``/v1/inference`` (JSON or SSE).

``/v1/inference`` goes through the same admission step and the same generation as a
WebSocket prompt (:mod:`fabstir.node.admission`, :mod:`fabstir.node.serving`). On a paid
node a request names its job (``job_id``) and carries the depositor's session token
(``Authorization: Bearer <jwt>``, issued by the ``auth`` exchange on ``/v1/ws``); it is billed
per token exactly like a WebSocket answer, as one short connection. Refusals are coded:
401 ``AUTH_REQUIRED``/``SESSION_EXPIRED``, 402 ``JOB_REQUIRED``/``DEPOSIT_EXHAUSTED``/``JOB_NOT_ACTIVE``,
403 ``AUTH_FAILED``/``WRONG_HOST``, 429 ``RATE_LIMITED``/``TOO_MANY_REQUESTS``. An SSE answer
starts only once its first piece exists, so a refusal is always a plain status, never a 200. A paid answer
extends the job's usage transcript like a WebSocket one, and ``POST /v1/usage`` takes the depositor's
countersignature of it (the ``usage_ack`` message, same admission), so HTTP answers are billed with consent too.

``GET /v1/checkpoints/{session_id}`` serves the public node's signed checkpoint index of a job (see
:mod:`fabstir.node.checkpoint_index`). It is public data (the proofs are on chain), so it needs no token; its
errors are the public node's: 404 ``{"error":"No checkpoints found for session X"}`` (also for a non-numeric
id), 503 ``{"error":"Checkpoint service unavailable"}`` on a free node, 500 on an internal failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fabstir.chain.usage import UsageAck
from fabstir.errors import NodeError, ProtocolError
from fabstir.node.admission import AdmittedJob, Caller
from fabstir.node.checkpoint_index import build_index
from fabstir.node.guards import RequestLimitError, read_body
from fabstir.node.runtime import NodeRuntime
from fabstir.node.serving import Answer, as_coded_error, check_rate, generate, open_billing, receipt_for
from fabstir.protocol import ErrorCode, InferenceRequest, Usage, UsageAcknowledgement
from fabstir.protocol.auth import decode_token
from fabstir.protocol.parse import (
    check_json_depth,
    job_id_from_text,
    parse_client_message,
    parse_inference_request,
)

__all__ = ["health", "version", "models", "checkpoints", "inference"]

log = logging.getLogger("fabstir.node.http")

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


async def checkpoints(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    billing = _runtime(request).billing
    if billing is None:  # a free node submits no checkpoints
        return JSONResponse({"error": "Checkpoint service unavailable"}, status_code=503)
    job_id = job_id_from_text(session_id)
    try:
        records = [] if job_id is None else billing.checkpoints(job_id)
        index = build_index(str(job_id), billing.host.account, records) if records else None
    except Exception:
        log.exception("checkpoint index of session %r", session_id)
        return JSONResponse({"error": f"Failed to load checkpoints for session {session_id}"}, status_code=500)
    if index is None:
        return JSONResponse({"error": f"No checkpoints found for session {session_id}"}, status_code=404)
    return JSONResponse(index)


_STATUS = {
    "AUTH_REQUIRED": 401, "SESSION_EXPIRED": 401,
    "JOB_REQUIRED": 402, "DEPOSIT_EXHAUSTED": 402, "JOB_NOT_FOUND": 402, "JOB_NOT_ACTIVE": 402,
    "AUTH_FAILED": 403, "PERMISSION_DENIED": 403, "WRONG_HOST": 403, "MODEL_MISMATCH": 403,
    "RATE_LIMITED": 429, "TOO_MANY_REQUESTS": 429,
    "ENGINE_ERROR": 500, "INTERNAL_ERROR": 500, "CHAIN_UNAVAILABLE": 503,
}
"""HTTP status of each refusal code (anything else is a 400)."""

_ERROR_TYPES = {401: "unauthorized", 402: "payment_required", 403: "forbidden", 429: "rate_limit_exceeded",
                500: "internal_error", 503: "unavailable"}


def _error(status: int, error_type: str, message: str, request_id: str | None,
           details: dict[str, Any] | None = None) -> Response:
    return JSONResponse({"error_type": error_type, "message": message, "request_id": request_id,
                         "details": details}, status_code=status)


def _refusal(exc: BaseException, request_id: str | None) -> Response:
    """A coded error response for anything that stopped a request."""
    error = as_coded_error(exc, "/v1/inference")
    status = _STATUS.get(error.code, 400)
    if error.code == ErrorCode.TOKEN_LIMIT_EXCEEDED:
        error_type = "invalid_request"
    else:
        error_type = _ERROR_TYPES.get(status, "validation_error")
    details: dict[str, Any] = {"code": error.code}
    if isinstance(error, NodeError):
        details.update(error.details)
    response = _error(status, error_type, error.message, request_id, details)
    if "retry_after" in details:
        response.headers["Retry-After"] = str(max(1, math.ceil(float(details["retry_after"]))))
    return response


def _caller(request: Request, runtime: NodeRuntime) -> Caller:
    """The caller, with the session token of an ``Authorization: Bearer`` header.

    Raises:
        AuthError: the token is forged, foreign or expired.
    """
    caller = Caller(client=request.client.host if request.client else "unknown")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() == "bearer" and token.strip():
        caller.grants.add(decode_token(token.strip(), runtime.signing_public_key, int(time.time())))
    return caller


async def _parse(request: Request, runtime: NodeRuntime) -> tuple[InferenceRequest, bool, str | None]:
    """The body as a request, whether it asks for SSE, and its ``request_id``.

    Raises:
        RequestLimitError: too large or too slow.
        ProtocolError: not valid JSON or an invalid request.
    """
    body = await read_body(request, runtime.config.max_frame_bytes, runtime.config.request_read_timeout)
    try:
        text = body.decode("utf-8")
        check_json_depth(text)
        payload = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ProtocolError("body is not valid JSON", code=ErrorCode.INVALID_JSON) from None
    inference_request = parse_inference_request(payload)
    request_id = payload.get("request_id") if isinstance(payload, dict) else None
    stream = isinstance(payload, dict) and payload.get("stream") is True
    return inference_request, stream, request_id if isinstance(request_id, str) else None


async def inference(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        check_rate(runtime, request.client.host if request.client else "unknown", None)
    except NodeError as exc:
        return _refusal(exc, None)
    try:
        req, stream, request_id = await _parse(request, runtime)
    except RequestLimitError as exc:
        return _error(exc.status, "payload_too_large" if exc.status == 413 else "request_timeout", exc.message,
                      None, {"code": exc.code})
    except ProtocolError as exc:
        if exc.code == ErrorCode.INVALID_JSON:
            return _error(400, "validation_error", "body is not valid JSON", None, {"code": exc.code})
        return _error(400, "validation_error", exc.message, None, {"code": exc.code})
    request_id = request_id or str(uuid.uuid4())
    try:
        caller = _caller(request, runtime)
        admitted = await runtime.admission.admit(caller, req.job_id, req.session_id)
    except Exception as exc:
        return _refusal(exc, request_id)
    run = _Run(runtime, caller, admitted, req, request_id)
    first = await run.start()
    if isinstance(first, BaseException):
        return _refusal(first, request_id)
    if stream:
        return StreamingResponse(run.sse(first), media_type="text/event-stream")
    return await run.complete(first)


async def usage(request: Request) -> Response:
    """``POST /v1/usage`` (ours, feature ``usage-countersign``): the depositor's countersignature of what its
    answers on a job delivered, for clients that are served over HTTP. The body is the WebSocket ``usage_ack``
    message; the caller is admitted like an inference request (the job's session token), and billing keeps the
    countersignature only when the job's depositor signed it for a count and transcript this node sent. Answers
    ``{"job_id", "tokens", "kept"}``."""
    runtime = _runtime(request)
    client = request.client.host if request.client else "unknown"
    try:
        check_rate(runtime, client, None)
        body = await read_body(request, runtime.config.max_frame_bytes, runtime.config.request_read_timeout)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("body is not valid JSON", code=ErrorCode.INVALID_JSON) from None
        message = parse_client_message(text, max_bytes=runtime.config.max_frame_bytes)
        if not isinstance(message, UsageAcknowledgement):
            raise ProtocolError("POST /v1/usage takes a usage_ack message", code=ErrorCode.VALIDATION_ERROR)
        admitted = await runtime.admission.admit(_caller(request, runtime), message.job_id, message.session_id)
        if admitted is None or runtime.billing is None:
            raise ProtocolError("this node serves free sessions: there is no usage to countersign",
                                code=ErrorCode.VALIDATION_ERROR)
    except RequestLimitError as exc:
        return _error(exc.status, "payload_too_large" if exc.status == 413 else "request_timeout", exc.message,
                      None, {"code": exc.code})
    except ProtocolError as exc:
        return _error(400, "validation_error", exc.message, None, {"code": exc.code})
    except Exception as exc:
        return _refusal(exc, None)
    ack = UsageAck(message.job_id, message.tokens, bytes.fromhex(message.transcript_hash[2:]),
                   bytes.fromhex(message.signature[2:]))
    kept = runtime.billing.acknowledge(ack, admitted.depositor)
    return JSONResponse({"job_id": message.job_id, "tokens": message.tokens, "kept": kept})


class _Run:
    """One answer generating on a task of its own; its pieces cross a queue to the response."""

    def __init__(self, runtime: NodeRuntime, caller: Caller, admitted: AdmittedJob | None, req: InferenceRequest,
                 request_id: str) -> None:
        self.runtime, self.caller, self.admitted, self.req, self.request_id = runtime, caller, admitted, req, request_id
        self.cancel = threading.Event()
        self.pieces: asyncio.Queue[tuple[str, int] | Answer | BaseException] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int] | Answer | BaseException:
        """Start generating; returns the first event (a piece, the answer, or what refused it)."""
        if self.admitted is not None:
            open_billing(self.runtime, self.admitted)
        self.task = asyncio.create_task(self._generate())
        return await self.pieces.get()

    async def _generate(self) -> None:
        async def on_piece(text: str, tokens: int) -> None:
            self.pieces.put_nowait((text, tokens))

        try:
            answer = await generate(self.runtime, self.admitted, self.req, (), client=self.caller.client,
                                    cancel=self.cancel, on_piece=on_piece)
        except Exception as exc:
            self.pieces.put_nowait(exc)
        else:
            if self.admitted is not None and self.runtime.billing is not None:  # what POST /v1/usage countersigns
                self.runtime.billing.record_answer(self.admitted.job_id, answer.text, answer.tokens_sent)
            self.pieces.put_nowait(answer)
        finally:
            if self.admitted is not None and self.runtime.billing is not None:
                self.runtime.billing.connection_closed(self.admitted.job_id)  # one request, one short connection

    async def events(self, first: tuple[str, int] | Answer | BaseException
                     ) -> AsyncGenerator[tuple[str, int] | Answer | BaseException, None]:
        """Every event in order, ending with the answer or an error; stops generation if left early."""
        event = first
        try:
            while True:
                yield event
                if not isinstance(event, tuple):
                    return
                event = await self.pieces.get()
        finally:
            self.cancel.set()
            if self.task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.task)

    def final(self, answer: Answer) -> dict[str, Any]:
        finished = answer.finished
        usage = Usage(answer.prepared.fitted.prompt_tokens, finished.completion_tokens,
                      self.runtime.inference.context_window)
        return {"model": self.req.model or self.runtime.inference.model_id, "content": answer.text,
                "tokens_used": finished.completion_tokens, "finish_reason": finished.finish_reason,
                "request_id": self.request_id, "chain_id": self.req.chain_id, "usage": usage.to_wire()}

    def receipt_header(self, answer: Answer) -> dict[str, str]:
        """The signed receipt a WebSocket answer ends with, as ``X-Fabstir-Receipt`` (the body keeps the public
        node's shape)."""
        if not self.runtime.config.extensions:
            return {}
        receipt = receipt_for(self.runtime, self.req.session_id or self.request_id, 0, answer, self.admitted)
        return {"x-fabstir-receipt": json.dumps(receipt, separators=(",", ":"))}

    async def complete(self, first: tuple[str, int] | Answer | BaseException) -> Response:
        async with contextlib.aclosing(self.events(first)) as events:
            async for event in events:
                if isinstance(event, BaseException):
                    return _refusal(event, self.request_id)
                if isinstance(event, Answer):
                    return JSONResponse(self.final(event), headers=self.receipt_header(event))
        raise AssertionError("unreachable: events end with an answer or an error")  # pragma: no cover

    async def sse(self, first: tuple[str, int] | Answer | BaseException) -> AsyncIterator[str]:
        async for event in self.events(first):
            if isinstance(event, tuple):
                yield _sse_event({"content": event[0], "tokens": event[1], "request_id": self.request_id})
            elif isinstance(event, Answer):
                yield _sse_event(self.final(event))
            else:
                error = as_coded_error(event, "/v1/inference (SSE)")
                yield _sse_event({"error_type": "internal_error" if _STATUS.get(error.code, 400) >= 500
                                  else "request_failed", "message": error.message, "code": error.code,
                                  "request_id": self.request_id})
        yield "data: [DONE]\n\n"


def _sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"
