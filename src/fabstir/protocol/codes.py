"""Error codes and feature names shared by the SDK and the node."""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "Feature", "PROTOCOL_FEATURES"]


class ErrorCode(enum.StrEnum):
    """Codes carried by ``{"type":"error","code":…}`` messages.

    The first group also exists on the public Fabstir node; the rest are ours.
    """

    TOKEN_LIMIT_EXCEEDED = "TOKEN_LIMIT_EXCEEDED"
    MISSING_SESSION_ID = "MISSING_SESSION_ID"
    ENCRYPTION_NOT_SUPPORTED = "ENCRYPTION_NOT_SUPPORTED"

    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    BINARY_FRAME = "BINARY_FRAME"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    INVALID_MESSAGE_INDEX = "INVALID_MESSAGE_INDEX"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"
    UNSUPPORTED_ACTION = "UNSUPPORTED_ACTION"
    ENGINE_ERROR = "ENGINE_ERROR"
    AUTH_FAILED = "AUTH_FAILED"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    """A paid session's request came without the depositor's authentication (JWT or signed encrypted init)."""
    JOB_REQUIRED = "JOB_REQUIRED"
    DEPOSIT_EXHAUSTED = "DEPOSIT_EXHAUSTED"
    INVALID_PROMPT = "INVALID_PROMPT"
    """The prompt holds text the engine cannot tokenize (a lone surrogate, say)."""
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
    """One client already has as many answers generating or queued as a node allows."""


class Feature(enum.StrEnum):
    """Protocol extensions a node can advertise in ``features``."""

    SERVER_CONTEXT = "server-context"
    MESSAGE_INDEX = "message-index"
    SESSION_RESUME = "session-resume"
    STREAM_CANCEL = "stream-cancel"
    PERMESSAGE_DEFLATE = "permessage-deflate"
    HTTP_SSE = "http-sse"
    SIGNED_RECEIPTS = "signed-receipts"
    RATE_LIMITS = "rate-limits"
    JWT_AUTH = "jwt-auth"
    E2E = "e2e-v1"
    E2E_COMPRESSION = "e2e-compression"
    SIGNED_MESSAGES = "signed-messages"
    CONTINUE_FROM = "continue-from"
    """A request's ``continue_from`` (the start of an answer another host streamed) is continued, not restarted."""
    USAGE_COUNTERSIGN = "usage-countersign"
    """The node takes ``usage_ack``: the depositor's countersignature of the tokens it received (consented billing,
    see :mod:`fabstir.chain.usage`)."""
    ACTIVATION_FINGERPRINT = "activation-fingerprint"
    """Each signed receipt carries the answer's activation fingerprint and the hash of the rendered prompt
    (:mod:`fabstir.fingerprints`): anyone holding the named model can check the host served it."""


PROTOCOL_FEATURES: tuple[str, ...] = tuple(f.value for f in Feature)
"""Every extension this implementation of the protocol supports."""
