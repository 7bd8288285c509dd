"""The OpenAI chat-completions wire format: requests in, completions, stream chunks and errors out (no I/O).

Follows the OpenAI API as its official clients read it: ``chat.completion`` objects, ``chat.completion.chunk``
events (the first carries the assistant role, the last the ``finish_reason``; with
``stream_options.include_usage`` one more chunk with empty ``choices`` and the ``usage``), and errors as
``{"error": {"message", "type", "param", "code"}}``. What the marketplace adds (host, model, tokens, price,
the signed receipt) travels in an ``x_fabstir`` field, which OpenAI clients keep as an extra attribute.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from fabstir.errors import FabstirError
from fabstir.protocol import ChatTurn
from fabstir.protocol.messages import Role

__all__ = [
    "ChatRequest",
    "parse_completion_request",
    "text_chunk",
    "text_completion",
    "GatewayError",
    "chunk",
    "completion",
    "error_body",
    "parse_chat_request",
    "usage_chunk",
]

_ROLE_OF: dict[object, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI roles as ours (``developer`` is the newer name of ``system``)."""
MAX_MESSAGES = 4096


class GatewayError(FabstirError):
    """A request the gateway refuses, with its HTTP status and OpenAI error type."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, code=code or type)
        self.status = status
        self.type = type
        self.param = param


@dataclasses.dataclass(frozen=True, slots=True)
class ChatRequest:
    """A ``POST /v1/chat/completions`` body, as the gateway uses it."""

    model: str
    """The model name without a strategy suffix."""
    strategy: str | None
    """From ``model="name:strategy"`` (or the ``X-Fabstir-Strategy`` header), else ``None``."""
    history: tuple[ChatTurn, ...]
    """Every message before the last one."""
    prompt: str
    """The last message's text (a user message)."""
    max_tokens: int
    temperature: float
    stream: bool
    include_usage: bool
    stateless: bool = False
    """A ``/v1/completions`` request: one prompt, no conversation to continue."""


def parse_chat_request(body: object, *, default_max_tokens: int = 256) -> ChatRequest:
    """Validate a chat-completions body.

    Raises:
        GatewayError: 400 ``invalid_request_error`` naming the bad ``param``.
    """
    if not isinstance(body, dict):
        raise GatewayError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError("'model' is required", param="model")
    name, _, strategy = model.partition(":")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise GatewayError("'messages' must be a non-empty array", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise GatewayError(f"at most {MAX_MESSAGES} messages", param="messages")
    turns = [_turn(message, index) for index, message in enumerate(messages)]
    last = turns[-1]
    if last.role != "user" or not last.content:
        raise GatewayError("the last message must be a non-empty user message", param="messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise GatewayError("'max_tokens' must be a positive integer", param="max_tokens")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise GatewayError("'temperature' must be a number from 0 to 2", param="temperature")
    n = body.get("n", 1)
    if n not in (1, None):
        raise GatewayError("only n=1 is supported", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise GatewayError("'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise GatewayError("'stream_options' must be an object", param="stream_options")
    return ChatRequest(model=name, strategy=strategy or None, history=tuple(turns[:-1]), prompt=last.content,
                       max_tokens=max_tokens, temperature=float(temperature), stream=bool(stream),
                       include_usage=bool(options.get("include_usage", False)))


def parse_completion_request(body: object) -> ChatRequest:
    """Validate a ``/v1/completions`` body (one prompt, answered as a single user turn).

    Raises:
        GatewayError: 400 ``invalid_request_error`` naming the bad ``param``.
    """
    if not isinstance(body, dict):
        raise GatewayError("the body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise GatewayError("'prompt' must be one non-empty string", param="prompt")
    for unsupported in ("suffix", "logprobs", "best_of"):
        if body.get(unsupported) not in (None, 1, 0, False):
            raise GatewayError(f"'{unsupported}' is not supported", param=unsupported)
    if body.get("echo"):
        raise GatewayError("'echo' is not supported", param="echo")
    chat = parse_chat_request({**body, "messages": [{"role": "user", "content": prompt}]}, default_max_tokens=16)
    return dataclasses.replace(chat, stateless=True)


def text_completion(completion_id: str, model: str, text: str, finish_reason: str, usage: dict[str, int],
                    fabstir: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming ``text_completion``."""
    return {"id": completion_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage, "system_fingerprint": None, "x_fabstir": fabstir}


def text_chunk(completion_id: str, created: int, model: str, text: str, finish_reason: str | None = None,
               fabstir: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed ``text_completion`` event."""
    body: dict[str, Any] = {
        "id": completion_id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "system_fingerprint": None}
    if fabstir is not None:
        body["x_fabstir"] = fabstir
    return body


def _turn(message: object, index: int) -> ChatTurn:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise GatewayError("each message must be an object", param=param)
    role = message.get("role")
    if role not in _ROLE_OF:
        raise GatewayError(f"unsupported role {role!r} (system, user, assistant)", param=f"{param}.role")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text is served
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise GatewayError("only text content parts are supported", param=f"{param}.content")
            texts.append(part["text"])
        content = "".join(texts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise GatewayError("'content' must be a string or text parts", param=f"{param}.content")
    return ChatTurn(_ROLE_OF[role], content)


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(completion_id: str, model: str, text: str, finish_reason: str, usage: dict[str, int],
               fabstir: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming ``chat.completion``."""
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage, "system_fingerprint": None, "x_fabstir": fabstir,
    }


def chunk(completion_id: str, created: int, model: str, *, content: str | None = None, role: bool = False,
          finish_reason: str | None = None, fabstir: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``: the role (first), a piece of content, or the finish reason (last)."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    body: dict[str, Any] = {
        "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "system_fingerprint": None,
    }
    if fabstir is not None:
        body["x_fabstir"] = fabstir
    return body


def usage_chunk(completion_id: str, created: int, model: str, usage: dict[str, int]) -> dict[str, Any]:
    """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage, "system_fingerprint": None}


def error_body(error: GatewayError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def finish_reason(ours: str | None) -> str:
    """Our finish reason as OpenAI's (``cancelled`` ends like a stop)."""
    return "length" if ours == "length" else "stop"
