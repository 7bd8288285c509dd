"""The sealed plaintext inside ``encrypted_message`` and encrypted ``session_resume``.

:func:`parse_encrypted_request` reads it (inner JSON, or bare prompt text) after
:func:`decode_inner_payload` has undone our optional compression.

Inner compression (extension ``e2e-compression``): a sealed plaintext may be the byte
``0xFF`` followed by a zlib stream (RFC 1950) of the UTF-8 inner JSON. ``0xFF`` never
occurs in UTF-8, and the public format is always UTF-8 (the public node answers
``INVALID_UTF8`` otherwise), so a compressed plaintext can never be mistaken for a
public-format one. Senders compress only when the node advertises the feature and the
JSON is at least :data:`INNER_COMPRESSION_THRESHOLD` bytes and shrinks.
"""

from __future__ import annotations

import json
import zlib

from fabstir.errors import RemoteProtocolError
from fabstir.protocol.codes import ErrorCode
from fabstir.protocol.messages import (
    ChatTurn,
    EncryptedMessage,
    EncryptedSessionResume,
    InferenceRequest,
    JSONObject,
    PromptMessage,
    SessionResume,
)
from fabstir.protocol.parse import _dumps, _Fields, _parse_request, check_json_depth

__all__ = [
    "COMPRESSED_INNER_MARKER",
    "INNER_COMPRESSION_THRESHOLD",
    "decode_inner_payload",
    "encode_inner_payload",
    "encrypted_request_body",
    "encrypted_resume_body",
    "parse_encrypted_request",
    "parse_encrypted_resume",
]

COMPRESSED_INNER_MARKER = 0xFF
"""First byte of a compressed inner plaintext (never valid UTF-8, so never a public-format plaintext)."""
INNER_COMPRESSION_THRESHOLD = 1024
"""Inner JSON shorter than this is never compressed."""
_INNER_IGNORED = ("conversation_context", "job_id", "jobId", "session_id", "sessionId", "chain_id", "chainId",
                  "request")


def encode_inner_payload(body: JSONObject, *, compress: bool = False,
                         threshold: int = INNER_COMPRESSION_THRESHOLD) -> bytes:
    """The plaintext to seal: compact UTF-8 JSON, or ``0xFF`` + zlib of it when ``compress`` and it pays off."""
    data = _dumps(body).encode()
    if compress and len(data) >= threshold:
        packed = bytes([COMPRESSED_INNER_MARKER]) + zlib.compress(data, 6)
        if len(packed) < len(data):
            return packed
    return data


def decode_inner_payload(data: bytes, *, allow_compressed: bool, max_bytes: int) -> str:
    """The inner text of a decrypted plaintext, inflating it first if it is compressed.

    Raises:
        RemoteProtocolError: INVALID_UTF8 (not UTF-8; also a compressed plaintext when ``allow_compressed``
            is false, as on the public node), INVALID_PAYLOAD (a broken zlib stream), FRAME_TOO_LARGE (it
            inflates beyond ``max_bytes``).
    """
    if allow_compressed and data[:1] == bytes([COMPRESSED_INNER_MARKER]):
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(data[1:], max_bytes + 1)
        except zlib.error as exc:
            raise RemoteProtocolError(f"compressed payload is not a zlib stream: {exc}",
                                      code="INVALID_PAYLOAD") from None
        if len(data) > max_bytes or inflater.unconsumed_tail:
            raise RemoteProtocolError(f"compressed payload inflates beyond {max_bytes} bytes",
                                      code=ErrorCode.FRAME_TOO_LARGE)
        if not inflater.eof or inflater.unused_data:
            raise RemoteProtocolError("compressed payload is truncated or has trailing data", code="INVALID_PAYLOAD")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("decrypted payload is not UTF-8", code="INVALID_UTF8") from None


def encrypted_request_body(request: InferenceRequest, *, message_index: int | None = None) -> JSONObject:
    """The inner JSON an SDK seals into ``encrypted_message`` (the TS SDK's keys, plus our ``message_index``)."""
    return _drop_none_values({
        "prompt": request.prompt,
        "model": request.model,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stream": True,
        "thinking": request.thinking,
        "message_index": message_index,
        "continue_from": request.continue_from,
    })


def encrypted_resume_body(conversation_context: tuple[ChatTurn, ...], last_message_index: int) -> JSONObject:
    """The inner JSON of an encrypted ``session_resume``."""
    return {"conversation_context": [t.to_wire() for t in conversation_context],
            "last_message_index": last_message_index}


def _drop_none_values(obj: JSONObject) -> JSONObject:
    return {k: v for k, v in obj.items() if v is not None}


def _inner_object(text: str) -> JSONObject | None:
    """The inner JSON object, or ``None`` when the text is not one (then it is the prompt itself)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        check_json_depth(text)
        obj = json.loads(text)
    except (ValueError, RecursionError, RemoteProtocolError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_encrypted_request(text: str, outer: EncryptedMessage) -> PromptMessage:
    """The chat request sealed in an ``encrypted_message`` (``text`` is the decrypted inner text).

    Inner JSON ``{prompt, model, max_tokens, temperature, stream, thinking?, message_index?}``; text that is
    not a JSON object is the whole prompt. Each field comes from the inner JSON, else the outer message, else
    the default (PROTOCOL.md §2.5). An inner ``conversation_context`` is ignored, as on the public node:
    context comes from the node's own history of the session.

    Raises:
        RemoteProtocolError: UNSUPPORTED_ACTION (an inner ``action`` such as image_generation),
            VALIDATION_ERROR (empty prompt, bad field).
    """
    inner = _inner_object(text)
    rid = outer.request_id
    if inner is None:
        inner = {"prompt": text}
    action = inner.get("action")
    if action is not None:
        shown = action[:64] if isinstance(action, str) else type(action).__name__
        raise RemoteProtocolError(f"action {shown!r} is not supported by this node (chat only)",
                                  code=ErrorCode.UNSUPPORTED_ACTION, request_id=rid)
    merged: JSONObject = _drop_none_values({
        "model": outer.model, "max_tokens": outer.max_tokens, "temperature": outer.temperature,
        "stream": outer.stream, "thinking": outer.thinking,
    })
    merged.update((k, v) for k, v in inner.items() if v is not None and k not in _INNER_IGNORED)
    fields = _Fields(merged, rid)
    try:
        request = _parse_request(fields, defaults=True)
        message_index = fields.int_("message_index")
    except RemoteProtocolError as exc:
        exc.code = ErrorCode.VALIDATION_ERROR
        raise
    return PromptMessage(request=request, wire_type="prompt", session_id=outer.session_id,
                         message_index=message_index, request_id=rid)


def parse_encrypted_resume(text: str, outer: EncryptedSessionResume) -> SessionResume:
    """The ``session_resume`` sealed in ``outer`` (``text`` is the decrypted inner JSON).

    Raises:
        RemoteProtocolError: INVALID_MESSAGE, the inner text is not a JSON object or has bad fields.
    """
    inner = _inner_object(text)
    if inner is None:
        raise RemoteProtocolError("an encrypted session_resume must seal a JSON object", request_id=outer.request_id)
    fields = _Fields(inner, outer.request_id)
    last_index = fields.int_("last_message_index", minimum=-1)
    return SessionResume(session_id=outer.session_id, conversation_context=fields.turns("conversation_context") or (),
                         last_message_index=-1 if last_index is None else last_index, job_id=outer.job_id,
                         chain_id=outer.chain_id, request_id=outer.request_id)
