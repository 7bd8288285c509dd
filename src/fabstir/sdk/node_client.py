"""``LLMNodeClient``: a node's HTTP API from the client side (plan 13.1).

Health, version (with its ``features``), models, ``POST /v1/inference`` as one JSON answer or as Server-Sent
Events, the checkpoint index (``GET /v1/checkpoints/{session_id}``) and usage countersignatures
(``POST /v1/usage``). Works with our node and with the
public Fabstir node (the routes and shapes of PROTOCOL.md). Reads are retried with backoff
(:class:`~fabstir.sdk.config.RetryPolicy`) when the node cannot be reached, answers 5xx, or asks to wait
(429 with ``retry_after``); an inference is retried only when it could not be sent at all, so it is never
generated (or billed) twice. Failures are the SDK's coded errors: :class:`ConnectError`,
:class:`RequestTimeoutError`, :class:`NodeError` (with the node's code, e.g. ``AUTH_REQUIRED``,
``RATE_LIMITED``, ``TOKEN_LIMIT_EXCEEDED``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from fabstir.errors import ConnectError, NodeError, RemoteProtocolError, RequestTimeoutError
from fabstir.protocol import UsageAcknowledgement
from fabstir.sdk.config import RetryPolicy, backoff

__all__ = ["LLMNodeClient", "NodeAnswer"]

JSON = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class NodeAnswer:
    """One ``POST /v1/inference`` answer."""

    text: str
    tokens_used: int
    finish_reason: str | None
    usage: JSON | None
    request_id: str | None
    receipt: JSON | None = None
    """Our node's signed receipt (``X-Fabstir-Receipt``; ``None`` from a node without it, and when streamed)."""


class LLMNodeClient:
    """HTTP client of one node; use it as ``async with LLMNodeClient(url) as node``."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers)

    async def __aenter__(self) -> LLMNodeClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- reads -------------------------------------------------------------------------------------

    async def health(self) -> JSON:
        """``GET /health`` (``{"status": "healthy"}`` when the node is up)."""
        return await self._get("/health")

    async def version(self) -> JSON:
        """``GET /v1/version``: ``version``, ``build``, ``features``, ``chains`` (and our node's keys)."""
        return await self._get("/v1/version")

    async def features(self) -> frozenset[str]:
        """The extensions the node advertises."""
        return frozenset(str(f) for f in (await self.version()).get("features", []))

    async def models(self) -> list[JSON]:
        """``GET /v1/models``: the models the node serves."""
        body = await self._get("/v1/models")
        models = body.get("models", body.get("data", []))
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    async def checkpoints(self, session_id: str | int) -> JSON:
        """``GET /v1/checkpoints/{session_id}``: the node's signed checkpoint index for a job.

        Raises:
            NodeError: CHECKPOINTS_NOT_FOUND (404), CHECKPOINTS_UNAVAILABLE (503: a node that does not checkpoint).
        """
        return await self._get(f"/v1/checkpoints/{session_id}")

    # --- inference ---------------------------------------------------------------------------------

    async def inference(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.7, model: str = "",
                        job_id: int | None = None, session_id: str | None = None, **fields: Any) -> NodeAnswer:
        """One answer as JSON (``"stream": false``)."""
        body = _request(prompt, max_tokens, temperature, model, job_id, session_id, fields, stream=False)
        response = await self._send("POST", "/v1/inference", json=body, retry_reads=False)
        answer = _json(response)
        receipt = response.headers.get("x-fabstir-receipt")
        return NodeAnswer(text=str(answer.get("content", "")), tokens_used=int(answer.get("tokens_used", 0)),
                          finish_reason=answer.get("finish_reason"), usage=answer.get("usage"),
                          request_id=answer.get("request_id"), receipt=json.loads(receipt) if receipt else None)

    async def stream_inference(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.7,
                               model: str = "", job_id: int | None = None, session_id: str | None = None,
                               **fields: Any) -> AsyncIterator[str]:
        """The answer's text pieces as the node streams them (Server-Sent Events); leaving early stops it.

        Raises:
            NodeError: the node refused before streaming, or reported an error mid-stream.
        """
        body = _request(prompt, max_tokens, temperature, model, job_id, session_id, fields, stream=True)
        try:
            async with self._http.stream("POST", "/v1/inference", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _refused(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error_type" in event or "error" in event:
                        raise NodeError(str(event.get("message", event.get("error"))),
                                        code=str(event.get("code") or "INFERENCE_FAILED"))
                    if "finish_reason" not in event and event.get("content"):
                        yield str(event["content"])
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(f"{self.base_url} timed out: {exc}") from None
        except httpx.TransportError as exc:
            raise ConnectError(f"could not reach {self.base_url}: {exc}") from None

    async def acknowledge_usage(self, ack: UsageAcknowledgement) -> bool:
        """``POST /v1/usage``: countersign what a paid job's HTTP answers delivered (our node, feature
        ``usage-countersign``; build ``ack`` with :func:`fabstir.sdk.billing.usage_acknowledgement`). Returns
        whether the node kept it (``False``: a count or transcript it did not send, or an older count). Never
        retried once sent (a countersignature is idempotent, so sending it again later is safe).

        Raises:
            NodeError: refused (``AUTH_REQUIRED``, ``AUTH_FAILED``, ``VALIDATION_ERROR``, ...).
        """
        response = await self._send("POST", "/v1/usage", json=ack.to_wire(), retry_reads=False)
        return bool(_json(response).get("kept"))

    # --- plumbing ----------------------------------------------------------------------------------

    async def _get(self, path: str) -> JSON:
        return _json(await self._send("GET", path, retry_reads=True))

    async def _send(self, method: str, path: str, *, retry_reads: bool, json: JSON | None = None) -> httpx.Response:
        delays = [0.0, *backoff(self.retry)]
        for attempt, delay in enumerate(delays):
            await asyncio.sleep(delay)
            last = attempt == len(delays) - 1
            try:
                response = await self._http.request(method, path, json=json)
            except httpx.ConnectError as exc:  # nothing was sent: safe to try again, reads and writes alike
                if last:
                    raise ConnectError(f"could not reach {self.base_url}: {exc}") from None
                continue
            except httpx.TimeoutException as exc:
                if not retry_reads or last:
                    raise RequestTimeoutError(f"{self.base_url}{path} timed out: {exc}") from None
                continue
            except httpx.TransportError as exc:
                if not retry_reads or last:
                    raise ConnectError(f"{self.base_url}{path} failed: {exc}") from None
                continue
            if response.status_code < 400:
                return response
            if retry_reads and not last and (response.status_code >= 500 or response.status_code == 429):
                await asyncio.sleep(_retry_after(response, self.retry.max_delay))
                continue
            raise _refused(response)
        raise AssertionError("unreachable")  # pragma: no cover


def _request(prompt: str, max_tokens: int, temperature: float, model: str, job_id: int | None,
             session_id: str | None, fields: JSON, *, stream: bool) -> JSON:
    body: JSON = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "model": model,
                  "stream": stream, **fields}
    if job_id is not None:
        body["job_id"] = job_id
    if session_id is not None:
        body["session_id"] = session_id
    return body


def _json(response: httpx.Response) -> JSON:
    try:
        body = response.json()
    except ValueError:
        raise RemoteProtocolError(f"{response.url} answered something that is not JSON",
                                  code="INVALID_JSON") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError(f"{response.url} answered JSON that is not an object", code="INVALID_MESSAGE")
    return body


def _refused(response: httpx.Response) -> NodeError:
    """A node's error response as a coded :class:`NodeError` (its ``details.code``, else from the status)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    assert isinstance(details, dict)
    code = details.get("code") or _STATUS_CODES.get(response.status_code, f"HTTP_{response.status_code}")
    if response.url.path.startswith("/v1/checkpoints/") and response.status_code in (404, 503):
        code = "CHECKPOINTS_NOT_FOUND" if response.status_code == 404 else "CHECKPOINTS_UNAVAILABLE"
    message = body.get("message") or body.get("error") or response.reason_phrase
    return NodeError(str(message), code=str(code), details={**details, "status": response.status_code})


_STATUS_CODES = {401: "AUTH_REQUIRED", 403: "AUTH_FAILED", 402: "JOB_REQUIRED", 404: "NOT_FOUND",
                 408: "REQUEST_TIMEOUT", 413: "PAYLOAD_TOO_LARGE", 429: "RATE_LIMITED", 503: "UNAVAILABLE"}


def _retry_after(response: httpx.Response, cap: float) -> float:
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        seconds = 0.0
    return min(max(seconds, 0.0), cap)
