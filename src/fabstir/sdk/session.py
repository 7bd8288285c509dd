"""``Session``: one conversation with one host, its socket, state, keys, token and history.

Theory of operation. A :class:`Session` owns a transport (opened through an injected
:data:`~fabstir.sdk.connection.Connector`), a :class:`SessionStateMachine` and the client's
own copy of the conversation. Two modes, chosen per host from the features it advertises:

- *server context* (our extension): the client sends only the new prompt with its
  ``message_index``; the node keeps and truncates the history.
- *public subset*: the client re-sends the last messages as ``conversation_context``
  with every prompt, as the public Fabstir SDK does.

End-to-end encryption (:mod:`fabstir.sdk.e2e`) is on whenever the host's public key is
known: the session opens with ``encrypted_session_init``, each prompt is sealed under a
fresh session key, and context is restored with an encrypted ``session_resume``; the
history never travels in plaintext.

If the connection drops, :meth:`Session.reconnect` opens a new one with backoff and
restores the node's context from the client's copy (``session_resume``, or
``conversation_context`` on a node without it). Answers are streamed by
:class:`~fabstir.sdk.streaming.InferenceStream`, which uses only this class's public
methods. Use a session as ``async with`` (it closes its socket on exit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from fabstir.errors import ConfigError, ConnectError, NodeError, SessionError
from fabstir.protocol import (
    AuthChallenge,
    AuthChallengeRequest,
    AuthRequest,
    AuthSuccess,
    ChatTurn,
    ClientMessage,
    ErrorCode,
    ErrorMessage,
    Feature,
    History,
    HistoryRequest,
    InferenceRequest,
    PromptMessage,
    SessionInit,
    SessionInitAck,
    SessionResume,
    SessionResumed,
    SessionState,
    SessionStateMachine,
    StreamCancel,
    TokenRefresh,
    error_from_message,
)
from fabstir.protocol.auth import sign_challenge
from fabstir.protocol.e2e import E2EError
from fabstir.sdk.config import backoff
from fabstir.sdk.connection import Connector, Transport
from fabstir.sdk.e2e import ClientEncryption, EncryptedStream, embed_context, normalize_public_key
from fabstir.sdk.streaming import InferenceStream, new_request_id
from fabstir.sdk.types import InferenceResult, PromptOptions, TokenCallback

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["PUBLIC_CONTEXT_MESSAGES", "Session", "turns_in"]

log = logging.getLogger("fabstir.sdk")

_T = TypeVar("_T")

TOKEN_REFRESH_MARGIN = 60
"""Refresh the session token when it has less than this many seconds left."""

PUBLIC_CONTEXT_MESSAGES = 10
"""Messages re-sent as ``conversation_context`` to a node without server-side context."""


def turns_in(history: Sequence[ChatTurn]) -> int:
    """User turns in a conversation: the next ``message_index``."""
    return sum(1 for turn in history if turn.role == "user")


@dataclasses.dataclass(eq=False)
class Session:
    """One conversation with one host; see the module docstring."""

    sdk: FabstirSDK = dataclasses.field(repr=False)
    session_id: str
    host_url: str
    job_id: int | None
    chain_id: int | None
    connect: Connector = dataclasses.field(repr=False)
    """Opens the transport (``sdk.connector``; tests and failover code swap it)."""
    host_signing_key: str | None = None
    state: SessionStateMachine = dataclasses.field(default_factory=SessionStateMachine)
    connection: Transport | None = None
    history: list[ChatTurn] = dataclasses.field(default_factory=list)
    next_index: int = 0
    features: frozenset[str] = frozenset()
    active_request: str | None = None
    token: str | None = None
    token_expires_at: int = 0
    encryption: ClientEncryption | None = None
    """End-to-end encryption state; ``None`` for a plaintext session."""
    embed_context: bool = False
    """Encrypted, on a node that cannot resume encrypted: the next prompt carries the restored history."""

    # --- what the host offers ---------------------------------------------------

    @property
    def server_context(self) -> bool:
        return Feature.SERVER_CONTEXT in self.features and Feature.MESSAGE_INDEX in self.features

    @property
    def can_resume(self) -> bool:
        """The node takes ``session_resume`` in this session's mode (encrypted needs ``e2e-v1`` too)."""
        if Feature.SESSION_RESUME not in self.features:
            return False
        return self.encryption is None or Feature.E2E in self.features

    @property
    def is_encrypted(self) -> bool:
        return self.encryption is not None

    def transport(self) -> Transport:
        """The open transport.

        Raises:
            SessionError: NOT_CONNECTED.
        """
        if self.connection is None:
            raise SessionError("session is not connected", code="NOT_CONNECTED")
        return self.connection

    # --- lifecycle -----------------------------------------------------------------

    async def open(self, *, host_public_key: str | None, encryption: bool | None,
                   conversation_context: Sequence[ChatTurn] | None = None) -> None:
        """Connect, choose encryption, authenticate when offered, then init or resume.

        Raises:
            ConnectError, RequestTimeoutError, NodeError, ConfigError, E2EError: as
            :meth:`fabstir.sdk.inference.InferenceManager.connect_to_session` documents.
        """
        self.history = list(conversation_context or ())
        self.next_index = turns_in(self.history)
        if host_public_key is not None:
            host_public_key = normalize_public_key(host_public_key)
        try:
            await self._connect()
            self.encryption = self._choose_encryption(host_public_key, encryption)
            await self.authenticate_if_offered()
            if conversation_context:
                await self.resume(conversation_context)
            else:
                await self.initialize()
        except BaseException:
            await self.aclose()
            raise

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket (the host settles) and wipe the session keys."""
        if self.connection is not None:
            await self.connection.aclose()
        if self.encryption is not None:
            self.encryption.forget()
        if self.state.can(SessionState.CLOSED):
            self.state.move(SessionState.CLOSED)

    async def _open_transport(self) -> None:
        sdk = self.sdk
        self.connection = await self.connect(self.host_url, timeout=sdk.timeouts.connect,
                                             compression=sdk.compression, signing_key=sdk.signing_key)
        self.features = self.connection.features
        self.state.move(SessionState.CONNECTED)

    async def _connect(self) -> None:
        if self.state.state is SessionState.IDLE:
            self.state.move(SessionState.CONNECTING)
        await self._open_transport()

    async def reconnect(self) -> None:
        """Reconnect with backoff and restore the node's context from our history.

        Raises:
            ConnectError: the host stayed unreachable through every retry.
        """
        if self.connection is not None:
            await self.connection.aclose()
        self.state.move(SessionState.RECONNECTING)
        last_error: Exception | None = None
        for delay in [0.0, *backoff(self.sdk.retry)]:
            await asyncio.sleep(delay)
            try:
                await self._open_transport()
            except ConnectError as exc:
                last_error = exc
                continue
            if self.encryption is not None:
                self.encryption.forget()  # keys lived on the old connection only
                self._check_announced_key(self.encryption)
            await self.authenticate_if_offered()
            if self.history and self.can_resume and self.encryption is None:
                await self.resume_on_node()
                self.state.move(SessionState.READY)
            else:  # encrypted: the init's ack tells whether the node still has our context
                await self.initialize()
            return
        self.state.move(SessionState.CLOSED)
        raise ConnectError(f"could not reconnect to {self.host_url}: {last_error}")

    # --- encryption ---------------------------------------------------------------------

    def _choose_encryption(self, host_public_key: str | None, encryption: bool | None) -> ClientEncryption | None:
        if encryption is False:
            return None
        connected = self.connection.connected if self.connection else None
        key = host_public_key
        if key is None and encryption:
            key = connected.public_key if connected is not None else None
        if key is None:
            if encryption:
                raise ConfigError("encryption=True, but the host's public key is unknown: pass host_public_key "
                                  "(its registry metadata publicKey)", code="HOST_KEY_UNKNOWN")
            return None
        account = self.sdk.account
        client_key = bytes(account.key) if account is not None else None
        encrypted = ClientEncryption(key, client_key, required=bool(encryption), announced=host_public_key is None)
        self._check_announced_key(encrypted)
        return encrypted

    def _check_announced_key(self, encrypted: ClientEncryption) -> None:
        connected = self.connection.connected if self.connection else None
        announced = connected.public_key if connected is not None else None
        if announced is None:
            return
        try:
            same = normalize_public_key(announced) == encrypted.host_public_key
        except ConfigError:
            same = False
        if not same:
            raise E2EError(f"the host announces public key {announced[:80]!r}, not the one given "
                           f"({encrypted.host_public_key}); is its registry metadata stale?",
                           code="HOST_KEY_MISMATCH")

    # --- init and resume ------------------------------------------------------------------

    async def initialize(self, job_id: int | None = None) -> SessionInitAck:
        """Send ``session_init`` (or the encrypted init) and wait for the acknowledgement."""
        if job_id is not None:
            self.job_id = job_id
        ack = await self._send_init()
        if self.server_context and ack.message_index is not None and ack.message_index != self.next_index:
            # the node remembers this session differently (e.g. it restarted): give it our copy
            await self.resume_on_node()
        self.state.move(SessionState.READY)
        return ack

    async def _send_init(self, model: str | None = None) -> SessionInitAck:
        """``session_init``, or ``encrypted_session_init`` with a fresh session key; returns the ack."""
        connection = self.transport()
        encryption = self.encryption
        if encryption is not None:
            request_id = new_request_id()
            model_name = self.sdk.default_options.model if model is None else model
            await connection.send(encryption.init_message(self.session_id, self.job_id, self.chain_id, model_name,
                                                          request_id))
            try:
                ack = await self.await_reply(SessionInitAck, request_id)
            except NodeError as exc:
                if exc.code != ErrorCode.ENCRYPTION_NOT_SUPPORTED or encryption.required:
                    raise
                log.warning("host %s does not support end-to-end encryption; session %s continues in plaintext",
                            self.host_url, self.session_id)
                encryption.forget()
                self.encryption = None
            else:
                encryption.accept(ack)
                self._take_features(ack.features)
                return ack
        request_id = new_request_id()
        await connection.send(SessionInit(self.session_id, self.job_id, self.chain_id, request_id))
        ack = await self.await_reply(SessionInitAck, request_id)
        self._take_features(ack.features)
        return ack

    def _take_features(self, features: Sequence[str] | None) -> None:
        if features is not None:
            self.features = frozenset(features)

    async def resume(self, conversation_context: Sequence[ChatTurn]) -> SessionResumed | None:
        """Load ``conversation_context`` as the history, on the client and the node.

        Returns the node's ``session_resumed``, or ``None`` for a node without ``session-resume``
        (the context then travels with each prompt).
        """
        self.history = list(conversation_context)
        self.next_index = turns_in(self.history)
        if self.encryption is not None and self.can_resume:
            await self._send_init()  # the key the resume is sealed with (may fall back to plaintext)
        if not self.can_resume:
            if self.encryption is not None:
                self.embed_context = bool(self.history)
            await self.initialize()
            return None
        resumed = await self.resume_on_node()
        if self.state.can(SessionState.READY):
            self.state.move(SessionState.READY)
        return resumed

    async def resume_on_node(self) -> SessionResumed:
        """Send our copy of the conversation (``session_resume``, sealed when encrypted)."""
        connection = self.transport()
        request_id = new_request_id()
        encryption = self.encryption
        if encryption is None:
            await connection.send(SessionResume(self.session_id, tuple(self.history), self.next_index - 1,
                                                self.job_id, self.chain_id, request_id))
        else:
            if encryption.current is None:
                await self._send_init()
            await connection.send(encryption.seal_resume(
                self.session_id, self.history, self.next_index - 1, job_id=self.job_id, chain_id=self.chain_id,
                compress=Feature.E2E_COMPRESSION in self.features, request_id=request_id))
        resumed = await self.await_reply(SessionResumed, request_id)
        self.features = self.features | {Feature.SESSION_RESUME}
        return resumed

    async def await_reply(self, kind: type[_T], request_id: str) -> _T:
        """The node's reply of type ``kind`` to ``request_id``, within the handshake timeout.

        Raises:
            NodeError: the node answered with a coded error.
            RequestTimeoutError, ConnectionClosedError: no reply.
        """
        connection = self.transport()
        timeout = self.sdk.timeouts.handshake
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = await connection.receive(remaining)
            if isinstance(message, ErrorMessage) and message.request_id in (None, request_id):
                raise error_from_message(message)
            if isinstance(message, kind) and getattr(message, "request_id", None) in (None, request_id):
                return message

    # --- JWT session auth -------------------------------------------------------------------

    async def authenticate(self, permissions: Sequence[str] = ("prompt", "read_history")) -> AuthSuccess:
        """Prove to the host that this SDK's account is the job's depositor; keeps the session token.

        Raises:
            ConfigError: no account configured.
            AuthenticationError: the host refused (AUTH_FAILED, PERMISSION_DENIED).
        """
        account = self.sdk.require_account()
        if self.job_id is None:
            raise SessionError("authentication needs the session's job id", code="JOB_REQUIRED")
        connection = self.transport()
        request_id = new_request_id()
        await connection.send(AuthChallengeRequest(self.job_id, self.session_id, request_id))
        challenge = await self.await_reply(AuthChallenge, request_id)
        request_id = new_request_id()
        await connection.send(AuthRequest(job_id=self.job_id, session_id=self.session_id,
                                          challenge=challenge.challenge,
                                          signature=sign_challenge(challenge.challenge, account.key),
                                          permissions=tuple(permissions), request_id=request_id))
        return await self._store_token(request_id)

    async def refresh_token(self) -> AuthSuccess:
        """Exchange the still-valid session token for a fresh one (no new signature)."""
        if self.token is None:
            raise SessionError("no session token to refresh; call authenticate_session", code="AUTH_FAILED")
        request_id = new_request_id()
        await self.transport().send(TokenRefresh(self.token, request_id))
        return await self._store_token(request_id)

    async def _store_token(self, request_id: str) -> AuthSuccess:
        success = await self.await_reply(AuthSuccess, request_id)
        self.token, self.token_expires_at = success.token, success.expires_at
        return success

    async def authenticate_if_offered(self) -> None:
        """Authenticate (or re-present the token) when the host offers JWT auth and we can."""
        if Feature.JWT_AUTH not in self.features or self.job_id is None or self.sdk.account is None:
            return
        if self.token is not None and self.token_expires_at > time.time() + 5:
            request_id = new_request_id()
            await self.transport().send(AuthRequest(job_id=self.job_id, session_id=self.session_id,
                                                    token=self.token, request_id=request_id))
            await self._store_token(request_id)
            return
        await self.authenticate()

    async def refresh_if_expiring(self) -> None:
        if self.token is not None and self.token_expires_at - time.time() < TOKEN_REFRESH_MARGIN:
            await self.refresh_token()

    async def get_history(self) -> list[ChatTurn]:
        """The host's copy of the conversation (needs ``read_history`` on hosts that require auth)."""
        request_id = new_request_id()
        await self.transport().send(HistoryRequest(self.session_id, request_id))
        history = await self.await_reply(History, request_id)
        return list(history.conversation_context)

    # --- prompts --------------------------------------------------------------------------------

    def stream(self, prompt: str, options: PromptOptions | None = None) -> InferenceStream:
        """The answer to ``prompt`` as an async iterator of text pieces (``async with`` closes it early).

        Raises:
            SessionError: REQUEST_IN_PROGRESS (one request at a time) or VALIDATION_ERROR (empty prompt).
        """
        if self.active_request is not None:
            raise SessionError("a request is already running on this session; one at a time",
                               code="REQUEST_IN_PROGRESS")
        if not prompt:
            raise SessionError("prompt must not be empty", code="VALIDATION_ERROR")
        return InferenceStream(self, prompt, options or self.sdk.default_options)

    async def send(self, prompt: str, options: PromptOptions | None = None, *,
                   on_token: TokenCallback | None = None) -> InferenceResult:
        """Send ``prompt`` and wait for the whole answer, calling ``on_token`` per piece."""
        async with self.stream(prompt, options) as stream:
            async for piece in stream:
                if on_token is not None:
                    outcome = on_token(piece)
                    if inspect.isawaitable(outcome):
                        await outcome
        return stream.result

    async def cancel(self) -> None:
        """Ask the node to stop the answer being streamed; it ends with ``finish_reason`` cancelled."""
        if self.active_request is None or self.connection is None:
            return
        if self.state.can(SessionState.CANCELLING):
            self.state.move(SessionState.CANCELLING)
        await self.connection.send(StreamCancel(self.session_id))

    async def ensure_ready(self) -> None:
        """Reconnect if the socket is gone, refresh an expiring token."""
        if self.connection is None or self.connection.closed:
            await self.reconnect()
        await self.refresh_if_expiring()

    async def request_frame(self, prompt: str, options: PromptOptions,
                            request_id: str) -> tuple[ClientMessage, EncryptedStream | None]:
        """The frame carrying ``prompt``: a ``prompt``, or an ``encrypted_message`` with its opener."""
        if self.encryption is None:
            return self._prompt_message(prompt, options, request_id), None
        return await self._encrypted_prompt(prompt, options, request_id)

    def _prompt_message(self, prompt: str, options: PromptOptions, request_id: str) -> PromptMessage:
        context = None if self.server_context else tuple(self.history[-PUBLIC_CONTEXT_MESSAGES:])
        request = InferenceRequest(prompt=prompt, model=options.model, max_tokens=options.max_tokens,
                                   temperature=options.temperature, conversation_context=context)
        return PromptMessage(request=request, session_id=self.session_id, job_id=self.job_id,
                             chain_id=self.chain_id,
                             message_index=self.next_index if self.server_context else None,
                             request_id=request_id)

    async def _encrypted_prompt(self, prompt: str, options: PromptOptions,
                                request_id: str) -> tuple[ClientMessage, EncryptedStream | None]:
        """The ``encrypted_message`` for ``prompt`` (after a fresh init unless the current key is unused).

        Returns a plaintext ``prompt`` and ``None`` when the node turned out not to support encryption.
        """
        encryption = self.encryption
        assert encryption is not None
        if not encryption.fresh:
            await self._send_init(options.model)
            if self.encryption is None:
                return self._prompt_message(prompt, options, request_id), None
        text = embed_context(self.history, prompt) if self.embed_context else prompt
        request = InferenceRequest(prompt=text, model=options.model, max_tokens=options.max_tokens,
                                   temperature=options.temperature)
        return encryption.seal_prompt(self.session_id, request,
                                      message_index=self.next_index if self.server_context else None,
                                      compress=Feature.E2E_COMPRESSION in self.features, request_id=request_id)

    def record_turn(self, prompt: str, answer: str, message_index: int | None) -> None:
        """Add a finished exchange to our copy of the conversation."""
        self.embed_context = False
        self.history.append(ChatTurn("user", prompt))
        if answer:
            self.history.append(ChatTurn("assistant", answer))
        self.next_index = (message_index if message_index is not None else self.next_index) + 1
