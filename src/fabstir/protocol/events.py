"""Events the sans-I/O connections hand to their owner, as frozen dataclasses.

A :class:`~fabstir.protocol.server_connection.ServerConnection` turns client frames into
:data:`ServerEvent` values (typed requests for the node to act on); a
:class:`~fabstir.protocol.client_connection.ClientConnection` turns node frames into
:data:`ClientEvent` values. Where a wire message already says everything (``session_init``,
``auth``, ``session_init_ack``, ``history`` …) the message dataclass itself is the event, so no
schema exists twice; the classes here carry what the connection adds (decryption, the request
an answer belongs to, the accumulated response).
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

from fabstir.errors import NodeError
from fabstir.protocol.e2e_keys import OpenedSessionInit
from fabstir.protocol.messages import (
    AuthChallenge,
    AuthChallengeRequest,
    AuthRequest,
    AuthSuccess,
    Connected,
    EncryptedSessionInit,
    History,
    HistoryRequest,
    PromptMessage,
    SessionClear,
    SessionInit,
    SessionInitAck,
    SessionResume,
    SessionResumed,
    StreamCancel,
    TokenRefresh,
    UnknownMessage,
    UsageAcknowledgement,
)
from fabstir.protocol.stream import StreamSnapshot

__all__ = [
    "CancelReceived",
    "ChunkReceived",
    "ClientEvent",
    "EncryptedInitReceived",
    "ErrorReceived",
    "PromptReceived",
    "RequestRefused",
    "ResumeReceived",
    "ServerEvent",
    "StreamEnded",
    "StreamPosition",
]


# --- server side: requests for the node -------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PromptReceived:
    """A prompt to answer: a plaintext ``prompt``/``inference`` or an opened ``encrypted_message``.

    The request is in progress from now until the node calls ``send_end`` or ``send_error``.
    For an encrypted prompt ``prompt.session_id`` names the session whose key opened it, and
    ``signers`` holds the addresses that may have signed that session's init.
    """

    prompt: PromptMessage
    encrypted: bool = False
    signers: tuple[str, ...] = ()

    @property
    def request_id(self) -> str | None:
        return self.prompt.request_id


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptedInitReceived:
    """An ``encrypted_session_init`` opened with the host key (and not a replay).

    Admit it, then call ``accept_session(event, ...)`` (which installs the session key) or
    ``send_error(...)``. ``session_id`` is the outer one, else the sealed ``jobId``.
    """

    message: EncryptedSessionInit
    opened: OpenedSessionInit
    session_id: str

    @property
    def request_id(self) -> str | None:
        return self.message.request_id


@dataclasses.dataclass(frozen=True, slots=True)
class ResumeReceived:
    """A ``session_resume``, plaintext or opened from its sealed payload (``encrypted``)."""

    resume: SessionResume
    encrypted: bool = False
    signers: tuple[str, ...] = ()

    @property
    def request_id(self) -> str | None:
        return self.resume.request_id


@dataclasses.dataclass(frozen=True, slots=True)
class CancelReceived:
    """``stream_cancel`` for the request in progress (``request_id``): stop between tokens."""

    message: StreamCancel
    request_id: str | None


ServerEvent: TypeAlias = (
    PromptReceived | EncryptedInitReceived | ResumeReceived | CancelReceived | SessionInit | AuthChallengeRequest
    | AuthRequest | TokenRefresh | HistoryRequest | SessionClear | UsageAcknowledgement
)
"""What :meth:`ServerConnection.events_received` yields."""


# --- client side: answers for the SDK ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkReceived:
    """New text of the answer in progress (already decrypted on an encrypted session)."""

    text: str
    tokens: int
    request_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class StreamEnded:
    """The prompt ``request_id`` is over (its ``stream_end``); ``snapshot.error`` is set when it was refused."""

    request_id: str | None
    snapshot: StreamSnapshot


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRefused:
    """A non-prompt request (init, resume, auth, history …) was refused: ``error`` then ``stream_end``."""

    request_id: str | None
    error: NodeError


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorReceived:
    """An ``error`` that answers no request this connection has in progress."""

    error: NodeError


@dataclasses.dataclass(frozen=True, slots=True)
class StreamPosition:
    """How far an answer got: its text and token count so far (where a resumed stream would continue)."""

    request_id: str | None
    text: str
    tokens: int
    done: bool


ClientEvent: TypeAlias = (
    Connected | SessionInitAck | SessionResumed | AuthChallenge | AuthSuccess | History | UnknownMessage
    | ChunkReceived | StreamEnded | RequestRefused | ErrorReceived
)
"""What :meth:`ClientConnection.events_received` yields."""
