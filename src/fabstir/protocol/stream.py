"""A pure accumulator for one streamed response.

Feed it every server message with the time it arrived; it keeps the text, the
token count, usage, finish reason and timings, and says when the response is
over. It does no I/O and reads no clock: the caller passes ``now``.

Frames carrying an ``id`` other than the request's are ignored (they belong to
another request); frames without an ``id`` are accepted, because the public
node omits it on the ``stream_end`` that follows a cancel.
"""

from __future__ import annotations

import dataclasses

from fabstir.errors import AuthenticationError, InvalidMessageIndexError, NodeError, TokenLimitExceededError
from fabstir.protocol.messages import ErrorMessage, ServerMessage, StreamChunk, StreamEnd, Usage

__all__ = ["StreamAccumulator", "StreamSnapshot", "TextDelta", "error_from_message"]


@dataclasses.dataclass(frozen=True, slots=True)
class TextDelta:
    """New text from one ``stream_chunk``."""

    text: str
    tokens: int


@dataclasses.dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """The finished (or failed) response, as the accumulator saw it."""

    text: str
    chunk_tokens: int
    tokens_used: int
    finish_reason: str | None
    reason: str
    usage: Usage | None
    message_index: int | None
    ttft_s: float | None
    duration_s: float
    error: NodeError | None
    receipt: dict[str, object] | None = None

    @property
    def completion_tokens(self) -> int:
        """Tokens generated: the engine's count when the node reported usage."""
        return self.usage.completion_tokens if self.usage is not None else self.tokens_used

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second over the whole request (TTFT included)."""
        return self.completion_tokens / self.duration_s if self.duration_s > 0 else 0.0


class StreamAccumulator:
    """Collects the frames of one response; see the module docstring."""

    def __init__(self, request_id: str | None, started_at: float) -> None:
        self.request_id = request_id
        self.started_at = started_at
        self._parts: list[str] = []
        self._chunk_tokens = 0
        self._first_token_at: float | None = None
        self._error: NodeError | None = None
        self._end: StreamEnd | None = None
        self._ended_at = started_at

    @property
    def done(self) -> bool:
        return self._end is not None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, message: ServerMessage, now: float) -> TextDelta | None:
        """Take one message; return the new text, if it carried any.

        Messages after ``stream_end`` or for another request are ignored.
        """
        if self._end is not None or not self._is_mine(message):
            return None
        if isinstance(message, StreamChunk):
            return self._on_chunk(message, now)
        if isinstance(message, StreamEnd):
            self._end, self._ended_at = message, now
        elif isinstance(message, ErrorMessage) and self._error is None:
            self._error = error_from_message(message)
        return None

    def _is_mine(self, message: ServerMessage) -> bool:
        other = getattr(message, "request_id", None)
        return other is None or self.request_id is None or other == self.request_id

    def _on_chunk(self, chunk: StreamChunk, now: float) -> TextDelta | None:
        if not chunk.content:
            return None
        if self._first_token_at is None:
            self._first_token_at = now
        self._parts.append(chunk.content)
        self._chunk_tokens += chunk.tokens
        return TextDelta(chunk.content, chunk.tokens)

    def snapshot(self) -> StreamSnapshot:
        """The response so far (complete once :attr:`done`)."""
        end = self._end
        error = self._error
        if error is None and end is not None and end.reason == "error":
            error = NodeError("the node ended the stream with an error", code="STREAM_ERROR")
        return StreamSnapshot(
            text=self.text,
            chunk_tokens=self._chunk_tokens,
            tokens_used=end.tokens_used if end is not None else self._chunk_tokens,
            finish_reason=end.finish_reason if end is not None else None,
            reason=end.reason if end is not None else "incomplete",
            usage=end.usage if end is not None else None,
            message_index=end.message_index if end is not None else None,
            ttft_s=None if self._first_token_at is None else self._first_token_at - self.started_at,
            duration_s=self._ended_at - self.started_at,
            error=error,
            receipt=end.receipt if end is not None else None,
        )


def error_from_message(message: ErrorMessage) -> NodeError:
    """Build the typed :class:`NodeError` subclass for an ``error`` message."""
    classes: dict[str | None, type[NodeError]] = {
        "TOKEN_LIMIT_EXCEEDED": TokenLimitExceededError,
        "INVALID_MESSAGE_INDEX": InvalidMessageIndexError,
        "AUTH_FAILED": AuthenticationError,
        "AUTH_REQUIRED": AuthenticationError,
        "SESSION_EXPIRED": AuthenticationError,
        "PERMISSION_DENIED": AuthenticationError,
        "AUTH_UNAVAILABLE": AuthenticationError,
    }
    cls = classes.get(message.code, NodeError)
    return cls(
        message.message,
        code=message.code or "NODE_ERROR",
        request_id=message.request_id,
        details=dict(message.details),
    )
