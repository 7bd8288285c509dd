"""Typed messages of the chat protocol, as frozen dataclasses.

Every message knows its wire form (``to_wire()`` returns the JSON object the
public Fabstir node uses, snake_case, with ``id`` for correlation). Parsing the
other way lives in :mod:`fabstir.protocol.parse`. Fields that are ``None`` are
left out of the wire form, except where the public node always sends them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

__all__ = [
    "AuthChallenge",
    "AuthChallengeRequest",
    "AuthRequest",
    "AuthSuccess",
    "ChatTurn",
    "History",
    "HistoryRequest",
    "SessionClear",
    "TokenRefresh",
    "ClientMessage",
    "Connected",
    "ErrorMessage",
    "InferenceRequest",
    "Ping",
    "PromptMessage",
    "ServerMessage",
    "SessionInit",
    "SessionInitAck",
    "SessionResume",
    "SessionResumed",
    "StreamCancel",
    "StreamChunk",
    "StreamEnd",
    "UnknownMessage",
    "Usage",
    "UsageAcknowledgement",
    "DEFAULT_MAX_TOKENS",
    "PUBLIC_CONTEXT_MESSAGES",
    "DEFAULT_TEMPERATURE",
    "EncryptedChunk",
    "EncryptedMessage",
    "EncryptedResponse",
    "EncryptedSessionInit",
    "EncryptedSessionResume",
]

JSONObject: TypeAlias = dict[str, Any]
Role = Literal["system", "user", "assistant"]
StreamEndReason = Literal["complete", "cancelled", "error"]

DEFAULT_MAX_TOKENS = 4000
"""``max_tokens`` when a request gives none (the public node's default)."""
DEFAULT_TEMPERATURE = 0.7
PUBLIC_CONTEXT_MESSAGES = 10
"""``conversation_context`` is the last 10 messages: what a public-subset client re-sends and a node keeps of it."""



def _drop_none(obj: JSONObject) -> JSONObject:
    return {k: v for k, v in obj.items() if v is not None}


@dataclasses.dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of a conversation."""

    role: Role
    content: str

    def to_wire(self) -> JSONObject:
        return {"role": self.role, "content": self.content}


def _turns_to_wire(turns: Sequence[ChatTurn] | None) -> list[JSONObject] | None:
    return None if turns is None else [t.to_wire() for t in turns]


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting for one response, counted by the node's tokenizer."""

    prompt_tokens: int
    completion_tokens: int
    context_window_size: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_wire(self) -> JSONObject:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "context_window_size": self.context_window_size,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class InferenceRequest:
    """What to generate: the nested ``request`` object of ``prompt``/``inference``."""

    prompt: str
    model: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    stream: bool = True
    conversation_context: tuple[ChatTurn, ...] | None = None
    thinking: str | None = None
    job_id: int | None = None
    session_id: str | None = None
    chain_id: int | None = None
    continue_from: str | None = None
    """Our ``continue-from`` extension: the start of the assistant's answer, already streamed (by a host that
    failed); the node generates what follows it, so the two parts read as one answer."""

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "model": self.model,
                "prompt": self.prompt,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "stream": self.stream,
                "conversation_context": _turns_to_wire(self.conversation_context),
                "thinking": self.thinking,
                "job_id": self.job_id,
                "session_id": self.session_id,
                "chain_id": self.chain_id,
                "continue_from": self.continue_from,
            }
        )


# --- client -> node -------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInit:
    """``session_init``: bind the connection to a session (job) id."""

    session_id: str
    job_id: int | None = None
    chain_id: int | None = None
    request_id: str | None = None
    session_secret: str | None = None
    """Our extension: the secret a free node gave the session's opener (its ack's ``session_secret``);
    presenting it on another connection reaches that opener's server-side context."""

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "session_init",
                "session_id": self.session_id,
                "jobId": None if self.job_id is None else str(self.job_id),
                "chain_id": self.chain_id,
                "session_secret": self.session_secret,
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PromptMessage:
    """``prompt`` or ``inference``: one chat turn to generate.

    ``message_index`` is our extension: the 0-based index of this turn in the
    session; the node rejects gaps and repeats.
    """

    request: InferenceRequest
    wire_type: Literal["prompt", "inference"] = "prompt"
    session_id: str | None = None
    job_id: int | None = None
    chain_id: int | None = None
    message_index: int | None = None
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        if self.wire_type == "inference":
            return _drop_none(
                {"type": "inference", "request": self.request.to_wire(), "id": self.request_id}
            )
        return _drop_none(
            {
                "type": "prompt",
                "session_id": self.session_id,
                "jobId": None if self.job_id is None else str(self.job_id),
                "chain_id": self.chain_id,
                "prompt": self.request.prompt,
                "message_index": self.message_index,
                "request": self.request.to_wire(),
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: the public TypeScript SDK's keep-alive (every 30 s); a node ignores it, as the public one does."""

    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "ping", "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class StreamCancel:
    """``stream_cancel``: stop the response being streamed."""

    session_id: str | None = None
    reason: str = "user_cancelled"
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "stream_cancel",
                "session_id": self.session_id,
                "reason": self.reason,
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SessionResume:
    """``session_resume`` (extension): reload the node's context from the client's history."""

    session_id: str
    conversation_context: tuple[ChatTurn, ...]
    last_message_index: int
    job_id: int | None = None
    chain_id: int | None = None
    request_id: str | None = None
    session_secret: str | None = None
    """As :attr:`SessionInit.session_secret`."""

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "session_resume",
                "session_id": self.session_id,
                "job_id": self.job_id,
                "chain_id": self.chain_id,
                "conversation_context": _turns_to_wire(self.conversation_context),
                "last_message_index": self.last_message_index,
                "session_secret": self.session_secret,
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AuthChallengeRequest:
    """``auth_challenge`` (extension): ask the node for a challenge to sign for ``job_id``."""

    job_id: int
    session_id: str | None = None
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "auth_challenge", "job_id": self.job_id, "session_id": self.session_id,
                           "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class AuthRequest:
    """``auth`` (extension): prove the depositor (``challenge`` + ``signature``) or present a ``token``."""

    job_id: int
    session_id: str | None = None
    challenge: str | None = None
    signature: str | None = None
    token: str | None = None
    permissions: tuple[str, ...] = ("prompt", "read_history")
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "auth", "job_id": self.job_id, "session_id": self.session_id,
                           "challenge": self.challenge, "signature": self.signature, "token": self.token,
                           "permissions": list(self.permissions), "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRefresh:
    """``token_refresh`` (extension): a fresh token for a still-valid one."""

    token: str
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "token_refresh", "token": self.token, "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryRequest:
    """``get_history`` (extension, permission ``read_history``): the node's copy of the conversation."""

    session_id: str
    request_id: str | None = None
    session_secret: str | None = None
    """As :attr:`SessionInit.session_secret` (free nodes)."""

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "get_history", "session_id": self.session_id,
                           "session_secret": self.session_secret, "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class SessionClear:
    """``session_clear`` (extension, permission ``admin``): forget the node's context for a session."""

    session_id: str
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "session_clear", "session_id": self.session_id, "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptedSessionInit:
    """``encrypted_session_init``: open an encrypted session (PROTOCOL.md §2.2).

    ``payload`` is kept exactly as received (``None`` when absent); :mod:`fabstir.protocol.e2e` validates
    and opens it. The outer ``job_id`` is informational: the node takes the job id from the sealed ``jobId``.
    """

    payload: object
    session_id: str | None = None
    job_id: int | None = None
    chain_id: int | None = None
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "encrypted_session_init",
                "session_id": self.session_id,
                "job_id": None if self.job_id is None else str(self.job_id),
                "chain_id": self.chain_id,
                "payload": self.payload,
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptedMessage:
    """``encrypted_message``: one sealed chat request (PROTOCOL.md §2.5).

    The sealed plaintext is the inner JSON ``{prompt, model, max_tokens, temperature, stream, thinking?}`` (or
    bare prompt text). The optional outer fields are fallbacks for missing inner ones (inner > outer > default).
    """

    payload: object
    session_id: str | None = None
    request_id: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool | None = None
    thinking: str | None = None
    web_search: bool | None = None
    max_searches: int | None = None
    search_queries: tuple[str, ...] | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "encrypted_message",
                "session_id": self.session_id,
                "id": self.request_id,
                "payload": self.payload,
                "model": self.model,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "stream": self.stream,
                "thinking": self.thinking,
                "web_search": self.web_search,
                "max_searches": self.max_searches,
                "search_queries": None if self.search_queries is None else list(self.search_queries),
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptedSessionResume:
    """``session_resume`` with a sealed ``payload`` (extension ``e2e-v1`` + ``session-resume``).

    The sealed plaintext (AAD ``message_<n>`` of the current encrypted session) is
    ``{"conversation_context": [{role, content}, …], "last_message_index": n}``.
    """

    session_id: str
    payload: object
    job_id: int | None = None
    chain_id: int | None = None
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "session_resume",
                "session_id": self.session_id,
                "job_id": self.job_id,
                "chain_id": self.chain_id,
                "payload": self.payload,
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UsageAcknowledgement:
    """``usage_ack`` (ours, feature ``usage-countersign``): the depositor countersigns the cumulative ``tokens``
    it received on ``job_id`` and the transcript hash of those answers (see :mod:`fabstir.chain.usage`).

    Sent after each answer's ``stream_end`` (also accepted while an answer streams); the node answers nothing.
    ``transcript_hash`` (32 bytes) and ``signature`` (65 bytes, r ‖ s ‖ v) travel as ``0x`` hex.
    """

    job_id: int
    tokens: int
    transcript_hash: str
    signature: str
    session_id: str | None = None
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "usage_ack", "session_id": self.session_id, "job_id": self.job_id,
                           "tokens": self.tokens, "transcript_hash": self.transcript_hash,
                           "signature": self.signature, "id": self.request_id})


ClientMessage: TypeAlias = (
    SessionInit | PromptMessage | StreamCancel | SessionResume | AuthChallengeRequest | AuthRequest | TokenRefresh
    | HistoryRequest | SessionClear | EncryptedSessionInit | EncryptedMessage | EncryptedSessionResume | Ping
    | UsageAcknowledgement
)


# --- node -> client -------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    """``connected``: sent by the node as soon as the socket opens."""

    message: str = "WebSocket connected successfully"
    version: str | None = None
    features: tuple[str, ...] | None = None
    signing_key: str | None = None
    """Our extension: the node's Ed25519 public key (hex) that signs receipts."""
    public_key: str | None = None
    """Our extension: the node's compressed secp256k1 public key (hex) for end-to-end encryption.

    Announced over the same unauthenticated socket, so it protects against passive observers only; the
    key published in the host's registry metadata (``publicKey``) is the one to trust."""

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "connected",
                "message": self.message,
                "version": self.version,
                "features": None if self.features is None else list(self.features),
                "signing_key": self.signing_key,
                "public_key": self.public_key,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInitAck:
    """``session_init_ack``: the session is ready for prompts."""

    session_id: str
    job_id: int | None = None
    chain_id: int | None = None
    status: str = "success"
    message: str = "Session initialized successfully"
    features: tuple[str, ...] | None = None
    message_index: int | None = None
    request_id: str | None = None
    client_address: str | None = None
    """Answer to ``encrypted_session_init``: the address recovered from the init's signature."""
    session_secret: str | None = None
    """Our extension, on free nodes: present it in a later ``session_init``/``session_resume``/``get_history``
    (on any connection) to reach this session's server-side context; without it a session id names a
    context of one's own."""

    def to_wire(self) -> JSONObject:
        wire: JSONObject = {
            "type": "session_init_ack",
            "status": self.status,
            "session_id": self.session_id,
            "job_id": self.job_id,
            "chain_id": self.chain_id,
        }
        if self.client_address is not None:
            wire["client_address"] = self.client_address
        wire["message"] = self.message
        if self.features is not None:
            wire["features"] = list(self.features)
        if self.message_index is not None:
            wire["message_index"] = self.message_index
        if self.session_secret is not None:
            wire["session_secret"] = self.session_secret
        if self.request_id is not None:
            wire["id"] = self.request_id
        return wire


@dataclasses.dataclass(frozen=True, slots=True)
class SessionResumed:
    """``session_resumed`` (extension): the node reloaded the context."""

    session_id: str
    message_index: int
    kept_messages: int
    dropped_messages: int
    request_id: str | None = None
    session_secret: str | None = None
    """As :attr:`SessionInitAck.session_secret`."""

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "session_resumed",
                "session_id": self.session_id,
                "message_index": self.message_index,
                "kept_messages": self.kept_messages,
                "dropped_messages": self.dropped_messages,
                "session_secret": self.session_secret,
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class StreamChunk:
    """``stream_chunk``: one token's text (``tokens`` 0 and empty text for the sentinel)."""

    content: str
    tokens: int = 1
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        wire: JSONObject = {"type": "stream_chunk", "content": self.content, "tokens": self.tokens}
        if self.request_id is not None:
            wire["id"] = self.request_id
        return wire


@dataclasses.dataclass(frozen=True, slots=True)
class StreamEnd:
    """``stream_end``: the response is over (``reason`` complete, cancelled or error)."""

    reason: StreamEndReason
    tokens_used: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    session_id: str | None = None
    message_index: int | None = None
    request_id: str | None = None
    receipt: JSONObject | None = dataclasses.field(default=None, compare=False)
    """Our extension: the host's Ed25519-signed receipt (see :mod:`fabstir.protocol.signing`)."""

    def to_wire(self) -> JSONObject:
        return _drop_none(
            {
                "type": "stream_end",
                "reason": self.reason,
                "tokens_used": self.tokens_used,
                "finish_reason": self.finish_reason,
                "usage": None if self.usage is None else self.usage.to_wire(),
                "session_id": self.session_id,
                "message_index": self.message_index,
                "receipt": self.receipt,
                "id": self.request_id,
            }
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorMessage:
    """``error``: coded (``code`` + ``message``) or the public node's bare ``error`` text."""

    message: str
    code: str | None = None
    request_id: str | None = None
    session_id: str | None = None
    details: tuple[tuple[str, Any], ...] = ()

    def to_wire(self) -> JSONObject:
        wire: JSONObject = {"type": "error"}
        if self.code is None:
            wire["error"] = self.message
        else:
            wire["code"] = self.code
            wire["message"] = self.message
        wire.update(self.details)
        if self.session_id is not None:
            wire["session_id"] = self.session_id
        if self.request_id is not None:
            wire["id"] = self.request_id
        return wire


@dataclasses.dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message whose ``type`` this implementation does not know; kept, never fatal."""

    type: str
    data: JSONObject = dataclasses.field(default_factory=dict)

    def to_wire(self) -> JSONObject:
        return {**self.data, "type": self.type}


@dataclasses.dataclass(frozen=True, slots=True)
class AuthChallenge:
    """``auth_challenge`` reply: the text to sign, valid until ``expires_at`` (unix seconds)."""

    job_id: int
    challenge: str
    expires_at: int
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "auth_challenge", "job_id": self.job_id, "challenge": self.challenge,
                           "expires_at": self.expires_at, "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class AuthSuccess:
    """``auth_success``: a session token (EdDSA JWT) and what it allows."""

    token: str
    expires_at: int
    permissions: tuple[str, ...]
    job_id: int
    session_id: str
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "auth_success", "token": self.token, "expires_at": self.expires_at,
                           "permissions": list(self.permissions), "job_id": self.job_id,
                           "session_id": self.session_id, "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class History:
    """``history``: the node's copy of a session's conversation."""

    session_id: str
    conversation_context: tuple[ChatTurn, ...]
    message_index: int
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        return _drop_none({"type": "history", "session_id": self.session_id,
                           "conversation_context": _turns_to_wire(self.conversation_context),
                           "message_index": self.message_index, "id": self.request_id})


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptedChunk:
    """``encrypted_chunk``: one sealed piece of an answer (AAD ``chunk_<i>``, ``payload.index`` i).

    The last chunk of a complete answer is empty, ``tokens`` 0, with ``final`` true.
    """

    payload: object
    tokens: int = 1
    session_id: str | None = None
    request_id: str | None = None
    final: bool = False

    def to_wire(self) -> JSONObject:
        wire: JSONObject = {"type": "encrypted_chunk", "tokens": self.tokens}
        if self.request_id is not None:
            wire["id"] = self.request_id
        if self.session_id is not None:
            wire["session_id"] = self.session_id
        wire["payload"] = self.payload
        if self.final:
            wire["final"] = True
        return wire


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptedResponse:
    """``encrypted_response``: ends a complete encrypted answer (AAD ``encrypted_response_final``,
    plaintext = finish_reason); the plaintext ``stream_end`` follows."""

    payload: object
    session_id: str | None = None
    request_id: str | None = None

    def to_wire(self) -> JSONObject:
        wire: JSONObject = {"type": "encrypted_response"}
        if self.request_id is not None:
            wire["id"] = self.request_id
        if self.session_id is not None:
            wire["session_id"] = self.session_id
        wire["payload"] = self.payload
        return wire


ServerMessage: TypeAlias = (
    Connected
    | AuthChallenge
    | AuthSuccess
    | History
    | SessionInitAck
    | SessionResumed
    | StreamChunk
    | StreamEnd
    | EncryptedChunk
    | EncryptedResponse
    | ErrorMessage
    | UnknownMessage
)
