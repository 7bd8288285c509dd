"""Turn raw WebSocket frames into typed messages, and typed messages into frames.

Theory of operation: :func:`parse_client_message` (used by the node) and
:func:`parse_server_message` (used by the SDK) accept ``str`` or ``bytes``. Any
malformed input raises :class:`~fabstir.errors.RemoteProtocolError` carrying an
:class:`ErrorCode` and, when it could be read, the frame's ``id``; nothing else
ever escapes. Aliases of the public Fabstir node are accepted: ``session_id`` /
``sessionId``, ``job_id`` / ``jobId`` as a number or decimal string (a trailing
``n`` is stripped), ``chain_id`` / ``chainId``.

Encrypted messages (PROTOCOL.md §2.2, §2.5, §3.2) parse like the others, but their
``payload`` is kept as received: :mod:`fabstir.protocol.e2e` validates and opens it
with the public node's codes; their sealed plaintext is read by :mod:`fabstir.protocol.inner`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from fabstir.errors import RemoteProtocolError
from fabstir.protocol.codes import ErrorCode
from fabstir.protocol.messages import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    AuthChallenge,
    AuthChallengeRequest,
    AuthRequest,
    AuthSuccess,
    ChatTurn,
    ClientMessage,
    Connected,
    EncryptedChunk,
    EncryptedMessage,
    EncryptedResponse,
    EncryptedSessionInit,
    EncryptedSessionResume,
    ErrorMessage,
    History,
    HistoryRequest,
    InferenceRequest,
    JSONObject,
    Ping,
    PromptMessage,
    ServerMessage,
    SessionClear,
    SessionInit,
    SessionInitAck,
    SessionResume,
    SessionResumed,
    StreamCancel,
    StreamChunk,
    StreamEnd,
    TokenRefresh,
    UnknownMessage,
    Usage,
    UsageAcknowledgement,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "MAX_JSON_DEPTH",
    "check_json_depth",
    "encode_message",
    "job_id_from_text",
    "parse_client_message",
    "parse_inference_request",
    "parse_server_message",
]

DEFAULT_MAX_FRAME_BYTES = 1 << 20
"""Largest frame accepted by default (1 MiB)."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a frame.

Checked before ``json.loads``: its C parser recurses once per level, and libraries
that raise the interpreter's recursion limit (py-evm sets 100,000) turn a frame of
a few hundred thousand ``[`` into a C stack overflow instead of a RecursionError.
"""
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_MAX_INT = (1 << 63) - 1
_ROLES = ("system", "user", "assistant")
_END_REASONS = ("complete", "cancelled", "error")


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_message(message: ClientMessage | ServerMessage) -> str:
    """Serialise a message to the compact JSON text of one frame."""
    kind = type(message)
    if kind is StreamChunk:  # once per token: build the text directly
        chunk: StreamChunk = message  # type: ignore[assignment]
        rid = "" if chunk.request_id is None else ',"id":' + _dumps(chunk.request_id)
        return f'{{"type":"stream_chunk","content":{_dumps(chunk.content)},"tokens":{chunk.tokens}{rid}}}'
    if kind is EncryptedChunk:
        sealed: EncryptedChunk = message  # type: ignore[assignment]
        rid = "" if sealed.request_id is None else ',"id":' + _dumps(sealed.request_id)
        sid = "" if sealed.session_id is None else ',"session_id":' + _dumps(sealed.session_id)
        final = ',"final":true' if sealed.final else ""
        return (f'{{"type":"encrypted_chunk","tokens":{sealed.tokens}{rid}{sid},'
                f'"payload":{_dumps(sealed.payload)}{final}}}')
    return _dumps(message.to_wire())


class _Fields:
    """Typed reads of one JSON object; any mismatch is a coded protocol error."""

    def __init__(self, obj: JSONObject, request_id: str | None) -> None:
        self.obj = obj
        self.request_id = request_id

    def fail(self, text: str, code: ErrorCode = ErrorCode.INVALID_MESSAGE) -> RemoteProtocolError:
        return RemoteProtocolError(text, code=code, request_id=self.request_id)

    def raw(self, *names: str) -> Any:
        for name in names:
            if self.obj.get(name) is not None:
                return self.obj[name]
        return None

    def str_(self, *names: str) -> str | None:
        value = self.raw(*names)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise self.fail(f"field {names[0]!r} must be a string")

    def int_(self, *names: str, minimum: int = 0) -> int | None:
        value = self.raw(*names)
        if value is None:
            return None
        if isinstance(value, str):
            value = _int_from_text(value.strip().removesuffix("n"))
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= _MAX_INT:
            raise self.fail(f"field {names[0]!r} must be an integer >= {minimum}")
        return value

    def float_(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"field {name!r} must be a number")
        return float(value)

    def bool_(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(f"field {name!r} must be a boolean")
        return value

    def turns(self, name: str) -> tuple[ChatTurn, ...] | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail(f"field {name!r} must be a list of {{role, content}}")
        return tuple(self._turn(item) for item in value)

    def _turn(self, item: Any) -> ChatTurn:
        if not isinstance(item, dict):
            raise self.fail("conversation turns must be objects")
        role, content = item.get("role"), item.get("content")
        if role not in _ROLES or not isinstance(content, str):
            raise self.fail("conversation turns need a role (system|user|assistant) and string content")
        return ChatTurn(role=role, content=content)

    def obj_(self, name: str) -> JSONObject | None:
        value = self.raw(name)
        if value is None or isinstance(value, dict):
            return value
        raise self.fail(f"field {name!r} must be an object")


def _int_from_text(text: str) -> int | str:
    return int(text) if text.isdecimal() and len(text) <= 20 else text


def _load_object(data: str | bytes, max_bytes: int) -> JSONObject:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError("binary frames are not supported; send JSON text", code=ErrorCode.BINARY_FRAME)
    if len(data) > max_bytes // 4:
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise RemoteProtocolError(
                f"frame of {size} bytes exceeds the limit of {max_bytes}", code=ErrorCode.FRAME_TOO_LARGE
            )
    check_json_depth(data)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"frame is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("frame must be a JSON object", code=ErrorCode.INVALID_MESSAGE)
    return obj


def check_json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON text nested deeper than ``limit`` (cheap unless the text has many brackets).

    Raises:
        RemoteProtocolError: INVALID_JSON, the nesting is too deep.
    """
    if text.count("[") + text.count("{") <= limit:
        return
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                raise RemoteProtocolError(f"JSON nested deeper than {limit} levels", code=ErrorCode.INVALID_JSON)
        elif token in ("]", "}"):
            depth -= 1


def _read_id(obj: JSONObject) -> str | None:
    value = obj.get("id")
    if isinstance(value, str):
        return value[:256]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _read_type(fields: _Fields) -> str:
    kind = fields.obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise fields.fail("message needs a string 'type'")
    return kind


# --- client messages (node side) ------------------------------------------


def parse_client_message(data: str | bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> ClientMessage:
    """Parse one frame a client sent to the node.

    Raises:
        RemoteProtocolError: with ``code`` BINARY_FRAME, FRAME_TOO_LARGE,
            INVALID_JSON, INVALID_MESSAGE, UNKNOWN_MESSAGE_TYPE or VALIDATION_ERROR.
    """
    obj = _load_object(data, max_bytes)
    fields = _Fields(obj, _read_id(obj))
    kind = _read_type(fields)
    parser = _CLIENT_PARSERS.get(kind)
    if parser is None:
        raise fields.fail(f"unknown message type {kind[:64]!r}", ErrorCode.UNKNOWN_MESSAGE_TYPE)
    return parser(fields)


def _session_id(fields: _Fields) -> str | None:
    return fields.str_("session_id", "sessionId")


def job_id_from_text(text: str | None) -> int | None:
    """The job id a text names (``"139"``, or the TS SDK's BigInt form ``"139n"``), else ``None``."""
    if text is None:
        return None
    digits = text.strip().removesuffix("n")
    return int(digits) if digits.isdecimal() and len(digits) <= 19 else None


def _job_id(fields: _Fields) -> int | None:
    return fields.int_("job_id", "jobId")


def _chain_id(fields: _Fields) -> int | None:
    return fields.int_("chain_id", "chainId")


def _parse_session_init(fields: _Fields) -> SessionInit:
    session_id = _session_id(fields)
    job_id = _job_id(fields)
    if session_id is None and job_id is None:
        raise fields.fail("session_init needs a session_id", ErrorCode.MISSING_SESSION_ID)
    return SessionInit(
        session_id=session_id if session_id is not None else str(job_id),
        job_id=job_id,
        chain_id=_chain_id(fields),
        request_id=fields.request_id,
        session_secret=fields.str_("session_secret"),
    )


def _parse_request(fields: _Fields, *, defaults: bool) -> InferenceRequest:
    """Read an InferenceRequest; ``defaults`` fills the public node's defaults for missing fields."""
    prompt = fields.str_("prompt")
    if not prompt:
        raise fields.fail("Prompt cannot be empty", ErrorCode.VALIDATION_ERROR)
    max_tokens = fields.int_("max_tokens", minimum=1)
    if max_tokens is None:
        if not defaults:
            raise fields.fail("request needs max_tokens > 0", ErrorCode.VALIDATION_ERROR)
        max_tokens = DEFAULT_MAX_TOKENS
    temperature = fields.float_("temperature", DEFAULT_TEMPERATURE)
    if not 0.0 <= temperature <= 2.0:
        raise fields.fail("temperature must be between 0 and 2", ErrorCode.VALIDATION_ERROR)
    return InferenceRequest(
        prompt=prompt,
        model=fields.str_("model") or "",
        max_tokens=max_tokens,
        temperature=temperature,
        stream=fields.bool_("stream", True),
        conversation_context=fields.turns("conversation_context"),
        thinking=fields.str_("thinking"),
        job_id=_job_id(fields),
        session_id=_session_id(fields),
        chain_id=_chain_id(fields),
        continue_from=fields.str_("continue_from") or None,
    )


_M = TypeVar("_M", PromptMessage, EncryptedMessage)


def _validation_errors(parse: Callable[[_Fields], _M]) -> Callable[[_Fields], _M]:
    """Report every bad field of a chat request as VALIDATION_ERROR."""

    def parse_validated(fields: _Fields) -> _M:
        try:
            return parse(fields)
        except RemoteProtocolError as exc:
            exc.code = ErrorCode.VALIDATION_ERROR
            raise

    return parse_validated


@_validation_errors
def _parse_prompt(fields: _Fields) -> PromptMessage:
    nested = fields.obj_("request")
    inner = _Fields(nested, fields.request_id) if nested is not None else fields
    request = _parse_request(inner, defaults=nested is None)
    return PromptMessage(
        request=request,
        wire_type="prompt",
        session_id=_session_id(fields),
        job_id=_job_id(fields),
        chain_id=_chain_id(fields),
        message_index=fields.int_("message_index"),
        request_id=fields.request_id,
    )


def parse_inference_request(payload: object) -> InferenceRequest:
    """An ``inference`` request object (the body of HTTP ``POST /v1/inference``) as an :class:`InferenceRequest`.

    Raises:
        RemoteProtocolError: VALIDATION_ERROR (no object, an empty prompt, a field of the wrong type, bad values),
            as for an ``inference`` message.
    """
    if payload is None:
        raise RemoteProtocolError("inference needs a 'request' object", code=ErrorCode.VALIDATION_ERROR)
    if not isinstance(payload, dict):
        raise RemoteProtocolError("field 'request' must be an object", code=ErrorCode.VALIDATION_ERROR)
    try:
        return _parse_request(_Fields(payload, None), defaults=False)
    except RemoteProtocolError as exc:
        exc.code = ErrorCode.VALIDATION_ERROR
        raise


@_validation_errors
def _parse_inference(fields: _Fields) -> PromptMessage:
    nested = fields.obj_("request")
    if nested is None:
        raise fields.fail("inference needs a 'request' object", ErrorCode.VALIDATION_ERROR)
    request = _parse_request(_Fields(nested, fields.request_id), defaults=False)
    return PromptMessage(
        request=request,
        wire_type="inference",
        session_id=request.session_id,
        job_id=request.job_id,
        chain_id=request.chain_id,
        message_index=_Fields(nested, None).int_("message_index"),
        request_id=fields.request_id,
    )


def _parse_stream_cancel(fields: _Fields) -> StreamCancel:
    return StreamCancel(
        session_id=_session_id(fields),
        reason=fields.str_("reason") or "user_cancelled",
        request_id=fields.request_id,
    )


def _parse_session_resume(fields: _Fields) -> SessionResume | EncryptedSessionResume:
    session_id = _session_id(fields)
    if session_id is None:
        raise fields.fail("session_resume needs a session_id", ErrorCode.MISSING_SESSION_ID)
    if fields.obj.get("payload") is not None:
        return EncryptedSessionResume(session_id=session_id, payload=fields.obj["payload"], job_id=_job_id(fields),
                                      chain_id=_chain_id(fields), request_id=fields.request_id)
    context = fields.turns("conversation_context")
    last_index = fields.int_("last_message_index", minimum=-1)
    return SessionResume(
        session_id=session_id,
        conversation_context=context or (),
        last_message_index=-1 if last_index is None else last_index,
        job_id=_job_id(fields),
        chain_id=_chain_id(fields),
        request_id=fields.request_id,
        session_secret=fields.str_("session_secret"),
    )


def _required_job(fields: _Fields) -> int:
    job_id = _job_id(fields)
    if job_id is None:
        raise fields.fail("the job id is required", ErrorCode.VALIDATION_ERROR)
    return job_id


def _required_str(fields: _Fields, name: str) -> str:
    value = fields.str_(name)
    if not value:
        raise fields.fail(f"'{name}' is required", ErrorCode.VALIDATION_ERROR)
    return value


def _parse_auth_challenge_request(fields: _Fields) -> AuthChallengeRequest:
    return AuthChallengeRequest(job_id=_required_job(fields), session_id=_session_id(fields),
                                request_id=fields.request_id)


def _parse_auth(fields: _Fields) -> AuthRequest:
    permissions = fields.raw("permissions")
    if permissions is not None and (not isinstance(permissions, list)
                                    or not all(isinstance(p, str) for p in permissions)):
        raise fields.fail("'permissions' must be a list of strings", ErrorCode.VALIDATION_ERROR)
    token, signature = fields.str_("token"), fields.str_("signature")
    if token is None and (signature is None or fields.str_("challenge") is None):
        raise fields.fail("auth needs a token, or a challenge and its signature", ErrorCode.VALIDATION_ERROR)
    return AuthRequest(job_id=_required_job(fields), session_id=_session_id(fields),
                       challenge=fields.str_("challenge"), signature=signature, token=token,
                       permissions=tuple(permissions) if permissions is not None else ("prompt", "read_history"),
                       request_id=fields.request_id)


def _parse_token_refresh(fields: _Fields) -> TokenRefresh:
    return TokenRefresh(token=_required_str(fields, "token"), request_id=fields.request_id)


def _parse_history_request(fields: _Fields) -> HistoryRequest:
    session_id = _session_id(fields)
    if session_id is None:
        raise fields.fail("get_history needs a session_id", ErrorCode.MISSING_SESSION_ID)
    return HistoryRequest(session_id=session_id, request_id=fields.request_id,
                          session_secret=fields.str_("session_secret"))


def _parse_session_clear(fields: _Fields) -> SessionClear:
    session_id = _session_id(fields)
    if session_id is None:
        raise fields.fail("session_clear needs a session_id", ErrorCode.MISSING_SESSION_ID)
    return SessionClear(session_id=session_id, request_id=fields.request_id)


def _hex_field(fields: _Fields, name: str, size: int) -> str:
    """A required ``0x`` hex string of exactly ``size`` bytes, normalized to lower case with the prefix."""
    text = _required_str(fields, name).lower().removeprefix("0x")
    if len(text) != 2 * size or any(c not in "0123456789abcdef" for c in text):
        raise fields.fail(f"field {name!r} must be {size} bytes of hex", ErrorCode.VALIDATION_ERROR)
    return "0x" + text


def _parse_usage_ack(fields: _Fields) -> UsageAcknowledgement:
    tokens = fields.int_("tokens")
    if tokens is None:
        raise fields.fail("usage_ack needs tokens", ErrorCode.VALIDATION_ERROR)
    return UsageAcknowledgement(job_id=_required_job(fields), tokens=tokens,
                                transcript_hash=_hex_field(fields, "transcript_hash", 32),
                                signature=_hex_field(fields, "signature", 65), session_id=_session_id(fields),
                                request_id=fields.request_id)


def _parse_encrypted_session_init(fields: _Fields) -> EncryptedSessionInit:
    return EncryptedSessionInit(
        payload=fields.obj.get("payload"),
        session_id=_session_id(fields),
        job_id=_lenient_int(fields, "job_id", "jobId"),
        chain_id=_chain_id(fields),
        request_id=fields.request_id,
    )


def _lenient_int(fields: _Fields, *names: str) -> int | None:
    """An informational integer that the receiver ignores when malformed (the outer ``job_id`` of an init)."""
    try:
        return fields.int_(*names)
    except RemoteProtocolError:
        return None


@_validation_errors
def _parse_encrypted_message(fields: _Fields) -> EncryptedMessage:
    queries = fields.raw("search_queries")
    if queries is not None and (not isinstance(queries, list) or not all(isinstance(q, str) for q in queries)):
        raise fields.fail("'search_queries' must be a list of strings")
    temperature = fields.raw("temperature")
    return EncryptedMessage(
        payload=fields.obj.get("payload"),
        session_id=_session_id(fields),
        request_id=fields.request_id,
        model=fields.str_("model"),
        max_tokens=fields.int_("max_tokens", minimum=1),
        temperature=None if temperature is None else fields.float_("temperature", DEFAULT_TEMPERATURE),
        stream=None if fields.raw("stream") is None else fields.bool_("stream", True),
        thinking=fields.str_("thinking"),
        web_search=None if fields.raw("web_search") is None else fields.bool_("web_search", False),
        max_searches=fields.int_("max_searches"),
        search_queries=None if queries is None else tuple(queries),
    )


_CLIENT_PARSERS: dict[str, Callable[[_Fields], ClientMessage]] = {
    "auth_challenge": _parse_auth_challenge_request,
    "auth": _parse_auth,
    "token_refresh": _parse_token_refresh,
    "get_history": _parse_history_request,
    "session_clear": _parse_session_clear,
    "session_init": _parse_session_init,
    "prompt": _parse_prompt,
    "inference": _parse_inference,
    "stream_cancel": _parse_stream_cancel,
    "session_resume": _parse_session_resume,
    "encrypted_session_init": _parse_encrypted_session_init,
    "encrypted_message": _parse_encrypted_message,
    "ping": lambda fields: Ping(request_id=fields.request_id),
    "usage_ack": _parse_usage_ack,
}


# --- server messages (SDK side) -------------------------------------------


def parse_server_message(data: str | bytes, *, max_bytes: int = 64 * DEFAULT_MAX_FRAME_BYTES) -> ServerMessage:
    """Parse one frame the node sent; unknown types become :class:`UnknownMessage`.

    Raises:
        RemoteProtocolError: the frame is not a JSON object with a ``type``, or a
            known message has fields of the wrong type.
    """
    obj = _load_object(data, max_bytes)
    fields = _Fields(obj, _read_id(obj))
    kind = _read_type(fields)
    parser = _SERVER_PARSERS.get(kind)
    if parser is None:
        return UnknownMessage(type=kind, data=obj)
    return parser(fields)


def _features(fields: _Fields) -> tuple[str, ...] | None:
    value = fields.raw("features")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fields.fail("'features' must be a list of strings")
    return tuple(value)


def _parse_connected(fields: _Fields) -> Connected:
    return Connected(
        message=fields.str_("message") or "",
        version=fields.str_("version"),
        features=_features(fields),
        signing_key=fields.str_("signing_key"),
        public_key=fields.str_("public_key"),
    )


def _parse_init_ack(fields: _Fields) -> SessionInitAck:
    return SessionInitAck(
        session_id=_session_id(fields) or "",
        job_id=_job_id(fields),
        chain_id=_chain_id(fields),
        status=fields.str_("status") or "success",
        message=fields.str_("message") or "",
        features=_features(fields),
        message_index=fields.int_("message_index"),
        request_id=fields.request_id,
        client_address=fields.str_("client_address"),
        session_secret=fields.str_("session_secret"),
    )


def _parse_resumed(fields: _Fields) -> SessionResumed:
    return SessionResumed(
        session_id=_session_id(fields) or "",
        message_index=fields.int_("message_index") or 0,
        kept_messages=fields.int_("kept_messages") or 0,
        dropped_messages=fields.int_("dropped_messages") or 0,
        request_id=fields.request_id,
        session_secret=fields.str_("session_secret"),
    )


def _parse_chunk(fields: _Fields) -> StreamChunk:
    return StreamChunk(
        content=fields.str_("content") or "",
        tokens=fields.int_("tokens") or 0,
        request_id=fields.request_id,
    )


def _parse_usage(fields: _Fields) -> Usage | None:
    usage = fields.obj_("usage")
    if usage is None:
        return None
    inner = _Fields(usage, fields.request_id)
    return Usage(
        prompt_tokens=inner.int_("prompt_tokens") or 0,
        completion_tokens=inner.int_("completion_tokens") or 0,
        context_window_size=inner.int_("context_window_size") or 0,
    )


def _parse_stream_end(fields: _Fields) -> StreamEnd:
    reason = fields.str_("reason") or "complete"
    if reason not in _END_REASONS:
        reason = "complete"
    return StreamEnd(
        reason=reason,  # type: ignore[arg-type]  # narrowed by the membership test above
        tokens_used=fields.int_("tokens_used") or 0,
        finish_reason=fields.str_("finish_reason"),
        usage=_parse_usage(fields),
        session_id=_session_id(fields),
        message_index=fields.int_("message_index"),
        request_id=fields.request_id,
        receipt=fields.obj_("receipt"),
    )


def _parse_error(fields: _Fields) -> ErrorMessage:
    code = fields.str_("code")
    text = fields.str_("message") if code is not None else None
    text = text or fields.str_("error") or fields.str_("message") or "unknown error"
    known = {"type", "code", "message", "error", "id", "session_id"}
    details = tuple((k, v) for k, v in fields.obj.items() if k not in known)
    return ErrorMessage(
        message=text,
        code=code,
        request_id=fields.request_id,
        session_id=_session_id(fields),
        details=details,
    )


def _parse_challenge(fields: _Fields) -> AuthChallenge:
    return AuthChallenge(job_id=_required_job(fields), challenge=_required_str(fields, "challenge"),
                         expires_at=fields.int_("expires_at") or 0, request_id=fields.request_id)


def _parse_auth_success(fields: _Fields) -> AuthSuccess:
    permissions = fields.raw("permissions")
    return AuthSuccess(token=_required_str(fields, "token"), expires_at=fields.int_("expires_at") or 0,
                       permissions=tuple(p for p in permissions if isinstance(p, str))
                       if isinstance(permissions, list) else (),
                       job_id=_required_job(fields), session_id=_session_id(fields) or "",
                       request_id=fields.request_id)


def _parse_history(fields: _Fields) -> History:
    return History(session_id=_session_id(fields) or "", conversation_context=fields.turns("conversation_context")
                   or (), message_index=fields.int_("message_index") or 0, request_id=fields.request_id)


def _parse_encrypted_chunk(fields: _Fields) -> EncryptedChunk:
    return EncryptedChunk(
        payload=fields.obj.get("payload"),
        tokens=fields.int_("tokens") or 0,
        session_id=_session_id(fields),
        request_id=fields.request_id,
        final=fields.obj.get("final") is True,
    )


def _parse_encrypted_response(fields: _Fields) -> EncryptedResponse:
    return EncryptedResponse(payload=fields.obj.get("payload"), session_id=_session_id(fields),
                             request_id=fields.request_id)


_SERVER_PARSERS: dict[str, Callable[[_Fields], ServerMessage]] = {
    "auth_challenge": _parse_challenge,
    "auth_success": _parse_auth_success,
    "history": _parse_history,
    "connected": _parse_connected,
    "session_init_ack": _parse_init_ack,
    "session_resumed": _parse_resumed,
    "stream_chunk": _parse_chunk,
    "stream_end": _parse_stream_end,
    "encrypted_chunk": _parse_encrypted_chunk,
    "encrypted_response": _parse_encrypted_response,
    "error": _parse_error,
}
