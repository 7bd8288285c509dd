"""``InferenceManager``: streaming chat with hosts, one socket and one state per session.

Theory of operation. Each session (keyed by its id, the on-chain job id as a
decimal string) owns a :class:`HostConnection`, a :class:`SessionStateMachine`
and the client's own copy of the conversation. A prompt is sent, then frames
are fed to a :class:`StreamAccumulator` until ``stream_end``.

Two modes, chosen per host from the features it advertises:
- *server context* (our extension): the client sends only the new prompt with
  its ``message_index``; the node keeps and truncates the history.
- *public subset*: the client re-sends the last messages as
  ``conversation_context`` with every prompt, as the public Fabstir SDK does.

If the connection drops, the next request reconnects with backoff and
restores the node's context from the client's copy (``session_resume``, or
``conversation_context`` on a node without it). A prompt that fails before any
token arrived is retried once on the new connection; one that fails mid-answer
raises :class:`ConnectionClosedError` (its partial text is in the history only
if the node finished it). A prompt refused with ``RATE_LIMITED`` or ``TOO_MANY_REQUESTS`` is sent again
after the node's ``retry_after`` (nothing was generated or billed), up to
``RetryPolicy.attempts`` times.

End-to-end encryption (:mod:`fabstir.sdk.e2e`) is on whenever the host's public key
is known (``host_public_key``, from its registry metadata ``publicKey``): the session
opens with ``encrypted_session_init``, each prompt is an ``encrypted_message`` under a
fresh session key, and the answer's ``encrypted_chunk`` frames are decrypted before
they reach the accumulator, so results, receipts, billing, cancel and reconnect work
the same in both modes. Context is restored with an encrypted ``session_resume``; the
history never travels in plaintext.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from fabstir.errors import (
    ConfigError,
    ConnectError,
    ConnectionClosedError,
    FabstirError,
    InvalidMessageIndexError,
    NodeError,
    RemoteProtocolError,
    RequestTimeoutError,
    SessionError,
)
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
    ServerMessage,
    SessionInit,
    SessionInitAck,
    SessionResume,
    SessionResumed,
    SessionState,
    SessionStateMachine,
    StreamAccumulator,
    StreamCancel,
    StreamSnapshot,
    TokenRefresh,
    error_from_message,
)
from fabstir.protocol.auth import TokenClaims, decode_token, sign_challenge
from fabstir.protocol.e2e import E2EError
from fabstir.protocol.signing import Receipt, SignatureError, verify_receipt
from fabstir.sdk import e2e as _e2e
from fabstir.sdk.config import backoff
from fabstir.sdk.connection import HostConnection
from fabstir.sdk.e2e import ClientEncryption, EncryptedStream, embed_context, normalize_public_key
from fabstir.sdk.types import InferenceResult, PromptOptions, TokenCallback

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["InferenceManager", "InferenceStream", "PUBLIC_CONTEXT_MESSAGES"]

_RETRY_LATER = ("RATE_LIMITED", "TOO_MANY_REQUESTS")
"""Refusals that mean "nothing was generated, try again after ``retry_after``"."""

log = logging.getLogger("fabstir.sdk")

TOKEN_REFRESH_MARGIN = 60
"""Refresh the session token when it has less than this many seconds left."""

PUBLIC_CONTEXT_MESSAGES = 10
"""Messages re-sent as ``conversation_context`` to a node without server-side context."""


@dataclasses.dataclass
class _Session:
    session_id: str
    host_url: str
    job_id: int | None
    chain_id: int | None
    state: SessionStateMachine = dataclasses.field(default_factory=SessionStateMachine)
    connection: HostConnection | None = None
    history: list[ChatTurn] = dataclasses.field(default_factory=list)
    next_index: int = 0
    features: frozenset[str] = frozenset()
    active_request: str | None = None
    host_signing_key: str | None = None
    token: str | None = None
    token_expires_at: int = 0
    encryption: ClientEncryption | None = None
    """End-to-end encryption state; ``None`` for a plaintext session."""
    embed_context: bool = False
    """Encrypted, on a node that cannot resume encrypted: the next prompt carries the restored history."""

    @property
    def server_context(self) -> bool:
        return Feature.SERVER_CONTEXT in self.features and Feature.MESSAGE_INDEX in self.features

    @property
    def can_resume(self) -> bool:
        """The node takes ``session_resume`` in this session's mode (encrypted needs ``e2e-v1`` too)."""
        if Feature.SESSION_RESUME not in self.features:
            return False
        return self.encryption is None or Feature.E2E in self.features


class InferenceManager:
    """Streams chat answers from hosts. Reach it as ``sdk.inference``."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk
        self._sessions: dict[str, _Session] = {}
        self._current: str | None = None

    # --- sessions ---------------------------------------------------------

    async def connect_to_session(
        self,
        session_id: str,
        host_url: str,
        job_id: int | None = None,
        conversation_context: Sequence[ChatTurn] | None = None,
        *,
        chain_id: int | None = None,
        host_signing_key: str | None = None,
        host_public_key: str | None = None,
        encryption: bool | None = None,
    ) -> None:
        """Open a WebSocket to ``host_url`` for ``session_id`` and initialise it.

        With ``conversation_context`` (the client's stored history), the node's
        context is restored from it: through ``session_resume`` where the node
        supports it, otherwise by re-sending it with each prompt. ``host_signing_key`` is the
        host's published Ed25519 key (registry metadata ``ed25519PublicKey``); receipts must be
        signed by it. Without it, the key the node announces on connect is used.

        End-to-end encryption: ``host_public_key`` is the host's compressed secp256k1 key (hex),
        from its registry metadata ``publicKey`` (``HostInfo.metadata.public_key``). When neither key
        is given and the SDK has a chain, both are read from the registry metadata of the job's host,
        so sessions are encrypted and receipts checked by default whenever the host publishes keys.

        - ``encryption=None`` (default: ``FabstirSDK(encryption=...)``, itself ``None``): encrypt
          whenever ``host_public_key`` is given. A node that answers ENCRYPTION_NOT_SUPPORTED gets
          plaintext (logged as a warning; :meth:`is_encrypted` tells).
        - ``encryption=True``: always encrypt, never fall back. Without ``host_public_key`` the key our
          node announces in ``connected.public_key`` is used; that travels over the same socket, so it
          protects against passive observers only, not against a host impersonator.
        - ``encryption=False``: plaintext.

        The init is signed by ``FabstirSDK(account=...)`` when set (the node echoes its address),
        else by a random key made for this session.

        Raises:
            ConnectError: the host cannot be reached.
            RequestTimeoutError: the host did not acknowledge in time.
            NodeError: the host refused the session.
            ConfigError: ``encryption=True`` but no host key is known (HOST_KEY_UNKNOWN), or the key
                is malformed (INVALID_HOST_KEY).
            E2EError: the node announces a different key than ``host_public_key`` (HOST_KEY_MISMATCH).
        """
        if session_id in self._sessions:
            await self.close(session_id)
        if host_public_key is None and host_signing_key is None and encryption is not False:
            host_public_key, host_signing_key = await self._published_keys(job_id)
        session = _Session(str(session_id), host_url, job_id, chain_id, host_signing_key=host_signing_key)
        session.history = list(conversation_context or ())
        session.next_index = _turns_in(session.history)
        self._sessions[session.session_id] = session
        self._current = session.session_id
        if encryption is None:
            encryption = self._sdk.encryption
        if host_public_key is not None:
            host_public_key = normalize_public_key(host_public_key)
        try:
            await self._connect(session)
            session.encryption = self._choose_encryption(session, host_public_key, encryption)
            await self._authenticate_if_offered(session)
            if conversation_context:
                await self.resume_session(session.session_id, conversation_context)
            else:
                await self.initialize_session(session.session_id)
        except BaseException:
            await self.close(session.session_id)
            raise

    def _choose_encryption(self, session: _Session, host_public_key: str | None,
                           encryption: bool | None) -> ClientEncryption | None:
        if encryption is False:
            return None
        connected = session.connection.connected if session.connection else None
        announced = connected.public_key if connected is not None else None
        key = host_public_key
        if key is None and encryption:
            key = announced
        if key is None:
            if encryption:
                raise ConfigError("encryption=True, but the host's public key is unknown: pass host_public_key "
                                  "(its registry metadata publicKey)", code="HOST_KEY_UNKNOWN")
            return None
        account = self._sdk.account
        client_key = bytes(account.key) if account is not None else None
        encrypted = ClientEncryption(key, client_key, required=bool(encryption),
                                     announced=host_public_key is None)
        self._check_announced_key(session, encrypted)
        return encrypted

    @staticmethod
    def _check_announced_key(session: _Session, encrypted: ClientEncryption) -> None:
        connected = session.connection.connected if session.connection else None
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

    def is_encrypted(self, session_id: str | None = None) -> bool:
        """Whether the session's traffic is end-to-end encrypted."""
        return self._session(session_id).encryption is not None

    def client_address(self, session_id: str | None = None) -> str | None:
        """The address the host recovered from our last encrypted init (``None`` for plaintext)."""
        encryption = self._session(session_id).encryption
        return encryption.client_address if encryption is not None else None

    async def _published_keys(self, job_id: int | None) -> tuple[str | None, str | None]:
        """(encryption key, receipt key) from the registry metadata of ``job_id``'s host, if known."""
        sdk = self._sdk
        if job_id is None or sdk.chain is None or sdk.deployment is None:
            return None, None
        try:
            job = await sdk.sessions.get_session(job_id)
            host = await sdk.registry.get_host(job.host)
        except FabstirError:  # no such job or host: the node will say so
            return None, None
        if host.metadata is None:
            return None, None
        return host.metadata.public_key, host.metadata.signing_key

    # --- JWT session auth (plan 11.5) ----------------------------------------------

    async def authenticate_session(self, session_id: str | None = None, *,
                                   permissions: Sequence[str] = ("prompt", "read_history")) -> AuthSuccess:
        """Prove to the host that this SDK's account is the job's depositor; keeps the session token.

        Asks for a challenge, signs it with ``FabstirSDK(account=...)`` (EIP-191) and receives an
        EdDSA JWT. Ask for ``"admin"`` only as the host.

        Raises:
            ConfigError: no account configured.
            AuthenticationError: the host refused (AUTH_FAILED, PERMISSION_DENIED).
        """
        session = self._session(session_id)
        account = self._sdk.require_account()
        if session.job_id is None:
            raise SessionError("authentication needs the session's job id", code="JOB_REQUIRED")
        connection = self._connection(session)
        request_id = _new_request_id()
        await connection.send(AuthChallengeRequest(session.job_id, session.session_id, request_id))
        challenge = await self._await_reply(session, AuthChallenge, request_id)
        assert isinstance(challenge, AuthChallenge)
        request_id = _new_request_id()
        await connection.send(AuthRequest(job_id=session.job_id, session_id=session.session_id,
                                          challenge=challenge.challenge,
                                          signature=sign_challenge(challenge.challenge, account.key),
                                          permissions=tuple(permissions), request_id=request_id))
        return await self._store_token(session, request_id)

    async def refresh_token(self, session_id: str | None = None) -> AuthSuccess:
        """Exchange the session's still-valid token for a fresh one (no new signature)."""
        session = self._session(session_id)
        if session.token is None:
            raise SessionError("no session token to refresh; call authenticate_session", code="AUTH_FAILED")
        request_id = _new_request_id()
        await self._connection(session).send(TokenRefresh(session.token, request_id))
        return await self._store_token(session, request_id)

    def validate_token(self, token: str, host_signing_key: str) -> TokenClaims:
        """Check a token's signature (by the host's Ed25519 key) and expiry; returns its claims.

        Raises:
            AuthError: forged, foreign or expired (SESSION_EXPIRED).
        """
        return decode_token(token, host_signing_key, int(time.time()))

    def session_token(self, session_id: str | None = None) -> str | None:
        return self._session(session_id).token

    async def _store_token(self, session: _Session, request_id: str) -> AuthSuccess:
        success = await self._await_reply(session, AuthSuccess, request_id)
        assert isinstance(success, AuthSuccess)
        session.token, session.token_expires_at = success.token, success.expires_at
        return success

    async def _authenticate_if_offered(self, session: _Session) -> None:
        """Authenticate (or re-present the token) when the host offers JWT auth and we can."""
        if Feature.JWT_AUTH not in session.features or session.job_id is None or self._sdk.account is None:
            return
        if session.token is not None and session.token_expires_at > time.time() + 5:
            request_id = _new_request_id()
            await self._connection(session).send(AuthRequest(job_id=session.job_id, session_id=session.session_id,
                                                             token=session.token, request_id=request_id))
            await self._store_token(session, request_id)
            return
        await self.authenticate_session(session.session_id)

    async def _refresh_if_expiring(self, session: _Session) -> None:
        if session.token is not None and session.token_expires_at - time.time() < TOKEN_REFRESH_MARGIN:
            await self.refresh_token(session.session_id)

    async def get_history(self, session_id: str | None = None) -> list[ChatTurn]:
        """The host's copy of the conversation (needs ``read_history`` on hosts that require auth)."""
        session = self._session(session_id)
        request_id = _new_request_id()
        await self._connection(session).send(HistoryRequest(session.session_id, request_id))
        history = await self._await_reply(session, History, request_id)
        assert isinstance(history, History)
        return list(history.conversation_context)

    async def initialize_session(self, session_id: str | None = None, job_id: int | None = None) -> SessionInitAck:
        """Send ``session_init`` and wait for the acknowledgement."""
        session = self._session(session_id)
        if job_id is not None:
            session.job_id = job_id
        ack = await self._send_init(session)
        if session.server_context and ack.message_index is not None and ack.message_index != session.next_index:
            # the node remembers this session differently (e.g. it restarted): give it our copy
            await self._resume_on_node(session)
        session.state.move(SessionState.READY)
        return ack

    async def _send_init(self, session: _Session, model: str | None = None) -> SessionInitAck:
        """``session_init``, or ``encrypted_session_init`` with a fresh session key; returns the ack."""
        connection = self._connection(session)
        encryption = session.encryption
        if encryption is not None:
            request_id = _new_request_id()
            model_name = self._sdk.default_options.model if model is None else model
            await connection.send(encryption.init_message(session.session_id, session.job_id, session.chain_id,
                                                          model_name, request_id))
            try:
                ack = await self._await_reply(session, SessionInitAck, request_id)
            except NodeError as exc:
                if exc.code != ErrorCode.ENCRYPTION_NOT_SUPPORTED or encryption.required:
                    raise
                log.warning("host %s does not support end-to-end encryption; session %s continues in plaintext",
                            session.host_url, session.session_id)
                encryption.forget()
                session.encryption = None
            else:
                assert isinstance(ack, SessionInitAck)
                encryption.accept(ack)
                if ack.features is not None:
                    session.features = frozenset(ack.features)
                return ack
        request_id = _new_request_id()
        await connection.send(SessionInit(session.session_id, session.job_id, session.chain_id, request_id))
        ack = await self._await_reply(session, SessionInitAck, request_id)
        assert isinstance(ack, SessionInitAck)
        if ack.features is not None:
            session.features = frozenset(ack.features)
        return ack

    async def resume_session(self, session_id: str, conversation_context: Sequence[ChatTurn]) -> SessionResumed | None:
        """Load ``conversation_context`` as the session's history, on the client and the node.

        Returns the node's ``session_resumed`` acknowledgement, or ``None`` for a
        node without ``session-resume`` (the context then travels with each prompt).
        """
        session = self._session(session_id)
        session.history = list(conversation_context)
        session.next_index = _turns_in(session.history)
        if session.encryption is not None and session.can_resume:
            await self._send_init(session)  # the key the resume is sealed with (may fall back to plaintext)
        if not session.can_resume:
            if session.encryption is not None:
                session.embed_context = bool(session.history)
            await self.initialize_session(session.session_id)
            return None
        resumed = await self._resume_on_node(session)
        if session.state.can(SessionState.READY):
            session.state.move(SessionState.READY)
        return resumed

    async def _resume_on_node(self, session: _Session) -> SessionResumed:
        connection = self._connection(session)
        request_id = _new_request_id()
        encryption = session.encryption
        if encryption is None:
            await connection.send(SessionResume(session.session_id, tuple(session.history), session.next_index - 1,
                                                session.job_id, session.chain_id, request_id))
        else:
            if encryption.current is None:
                await self._send_init(session)
            await connection.send(encryption.seal_resume(
                session.session_id, session.history, session.next_index - 1, job_id=session.job_id,
                chain_id=session.chain_id, compress=Feature.E2E_COMPRESSION in session.features,
                request_id=request_id))
        resumed = await self._await_reply(session, SessionResumed, request_id)
        assert isinstance(resumed, SessionResumed)
        session.features = session.features | {Feature.SESSION_RESUME}
        return resumed

    async def _await_reply(self, session: _Session, kind: type, request_id: str) -> object:
        connection = self._connection(session)
        timeout = self._sdk.timeouts.handshake
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = await connection.receive(remaining)
            if isinstance(message, ErrorMessage) and message.request_id in (None, request_id):
                raise error_from_message(message)
            if isinstance(message, kind) and getattr(message, "request_id", None) in (None, request_id):
                return message

    async def _connect(self, session: _Session) -> None:
        sdk = self._sdk
        if session.state.state is SessionState.IDLE:
            session.state.move(SessionState.CONNECTING)
        session.connection = await HostConnection.open(
            session.host_url, timeout=sdk.timeouts.connect, compression=sdk.compression,
            signing_key=sdk.signing_key,
        )
        session.features = session.connection.features
        session.state.move(SessionState.CONNECTED)

    async def _reconnect(self, session: _Session) -> None:
        """Reconnect with backoff and restore the node's context from our history."""
        if session.connection is not None:
            await session.connection.aclose()
        session.state.move(SessionState.RECONNECTING)
        last_error: Exception | None = None
        for delay in [0.0, *backoff(self._sdk.retry)]:
            await asyncio.sleep(delay)
            try:
                session.connection = await HostConnection.open(
                    session.host_url, timeout=self._sdk.timeouts.connect, compression=self._sdk.compression,
                    signing_key=self._sdk.signing_key,
                )
            except ConnectError as exc:
                last_error = exc
                continue
            session.features = session.connection.features
            session.state.move(SessionState.CONNECTED)
            if session.encryption is not None:
                session.encryption.forget()  # keys lived on the old connection only
                self._check_announced_key(session, session.encryption)
            await self._authenticate_if_offered(session)
            if session.history and session.can_resume and session.encryption is None:
                await self._resume_on_node(session)
                session.state.move(SessionState.READY)
            else:  # encrypted: the init's ack tells whether the node still has our context
                await self.initialize_session(session.session_id)
            return
        session.state.move(SessionState.CLOSED)
        raise ConnectError(f"could not reconnect to {session.host_url}: {last_error}")

    # --- prompts ----------------------------------------------------------

    async def send_prompt(
        self,
        prompt: str,
        options: PromptOptions | None = None,
        *,
        on_token: TokenCallback | None = None,
        session_id: str | None = None,
    ) -> InferenceResult:
        """Send ``prompt`` and wait for the whole answer, calling ``on_token`` per piece.

        Raises:
            SessionError: no session, or a request already running on it.
            NodeError: the node rejected the prompt (e.g. TokenLimitExceededError).
            TransportError: the connection failed and could not be restored.
        """
        stream = self.stream(prompt, options, session_id=session_id)
        async for piece in stream:
            if on_token is not None:
                outcome = on_token(piece)
                if inspect.isawaitable(outcome):
                    await outcome
        return stream.result

    def stream(self, prompt: str, options: PromptOptions | None = None, *,
               session_id: str | None = None) -> InferenceStream:
        """An async iterator over the answer's text pieces; ``.result`` once exhausted."""
        session = self._session(session_id)
        if session.active_request is not None:
            raise SessionError("a request is already running on this session; one at a time",
                               code="REQUEST_IN_PROGRESS")
        if not prompt:
            raise SessionError("prompt must not be empty", code="VALIDATION_ERROR")
        return InferenceStream(self, session, prompt, options or self._sdk.default_options)

    async def cancel(self, session_id: str | None = None) -> None:
        """Ask the node to stop the answer being streamed; it ends with ``finish_reason`` cancelled."""
        session = self._session(session_id)
        if session.active_request is None or session.connection is None:
            return
        if session.state.can(SessionState.CANCELLING):
            session.state.move(SessionState.CANCELLING)
        await session.connection.send(StreamCancel(session.session_id))

    def get_conversation(self, session_id: str | None = None) -> list[ChatTurn]:
        """The client's copy of the session's conversation."""
        return list(self._session(session_id).history)

    def session_state(self, session_id: str | None = None) -> SessionState:
        return self._session(session_id).state.state

    def host_features(self, session_id: str | None = None) -> frozenset[str]:
        """Extensions the session's host advertised."""
        return self._session(session_id).features

    async def close(self, session_id: str | None = None) -> None:
        """Close the session's socket (the host settles) and forget the session."""
        session = self._sessions.pop(session_id or self._current or "", None)
        if session is None:
            return
        if self._current == session.session_id:
            self._current = next(iter(self._sessions), None)
        if session.connection is not None:
            await session.connection.aclose()
        if session.encryption is not None:
            session.encryption.forget()
        if session.state.can(SessionState.CLOSED):
            session.state.move(SessionState.CLOSED)

    async def aclose(self) -> None:
        """Close every session."""
        for session_id in list(self._sessions):
            await self.close(session_id)

    # --- internals ----------------------------------------------------------

    def _session(self, session_id: str | None) -> _Session:
        key = session_id if session_id is not None else self._current
        session = self._sessions.get(str(key)) if key is not None else None
        if session is None:
            raise SessionError(
                f"no session {key!r}; call connect_to_session first" if key else
                "no session; call connect_to_session first", code="SESSION_NOT_FOUND")
        return session

    def _connection(self, session: _Session) -> HostConnection:
        if session.connection is None:
            raise SessionError("session is not connected", code="NOT_CONNECTED")
        return session.connection

    def _prompt_message(self, session: _Session, prompt: str, options: PromptOptions,
                        request_id: str) -> PromptMessage:
        context = None if session.server_context else tuple(session.history[-PUBLIC_CONTEXT_MESSAGES:])
        request = InferenceRequest(prompt=prompt, model=options.model, max_tokens=options.max_tokens,
                                   temperature=options.temperature, conversation_context=context)
        return PromptMessage(request=request, session_id=session.session_id, job_id=session.job_id,
                             chain_id=session.chain_id,
                             message_index=session.next_index if session.server_context else None,
                             request_id=request_id)

    async def _encrypted_prompt(self, session: _Session, prompt: str, options: PromptOptions,
                                request_id: str) -> tuple[ClientMessage, EncryptedStream | None]:
        """The ``encrypted_message`` for ``prompt`` (after a fresh init unless the current key is unused).

        Returns a plaintext ``prompt`` and ``None`` when the node turned out not to support encryption.
        """
        encryption = session.encryption
        assert encryption is not None
        if not encryption.fresh:
            await self._send_init(session, options.model)
            if session.encryption is None:
                return self._prompt_message(session, prompt, options, request_id), None
        text = embed_context(session.history, prompt) if session.embed_context else prompt
        request = InferenceRequest(prompt=text, model=options.model, max_tokens=options.max_tokens,
                                   temperature=options.temperature)
        return encryption.seal_prompt(session.session_id, request,
                                      message_index=session.next_index if session.server_context else None,
                                      compress=Feature.E2E_COMPRESSION in session.features, request_id=request_id)


class InferenceStream:
    """Async iterator over one answer's text; :attr:`result` holds the :class:`InferenceResult` after."""

    def __init__(self, manager: InferenceManager, session: _Session, prompt: str, options: PromptOptions) -> None:
        self._manager = manager
        self._session = session
        self._prompt = prompt
        self._options = options
        self._result: InferenceResult | None = None
        self._iterator: AsyncIterator[str] | None = None

    @property
    def result(self) -> InferenceResult:
        if self._result is None:
            raise SessionError("the stream has not finished yet", code="STREAM_NOT_FINISHED")
        return self._result

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def until_done(self) -> InferenceResult:
        """Consume the rest of the stream and return the result."""
        async for _ in self:
            pass
        return self.result

    async def _run(self) -> AsyncIterator[str]:
        session = self._session
        session.active_request = request_id = _new_request_id()
        recovered = rate_limited = 0
        try:
            while True:
                received_any = False
                if session.state.state in (SessionState.STREAMING, SessionState.CANCELLING):
                    session.state.move(SessionState.READY)  # a refused attempt is over
                try:
                    await self._ensure_ready()
                    async for piece in self._attempt(request_id):
                        received_any = True
                        yield piece
                    await self._manager._sdk.billing.record(self.result)
                    return
                except SignatureError:
                    raise  # a bad receipt is the host's fault, not the connection's: never retried
                except E2EError:
                    # a frame that does not decrypt: never retried; drop the socket so the host stops
                    if session.connection is not None:
                        await session.connection.aclose()
                    raise
                except (ConnectionClosedError, RemoteProtocolError) as exc:
                    recovered += 1
                    if received_any or recovered > 1:
                        raise ConnectionClosedError(f"lost the host mid-answer: {exc.message}") from None
                    await self._manager._reconnect(session)
                except InvalidMessageIndexError:
                    recovered += 1
                    if received_any or recovered > 1:
                        raise
                    await self._manager._resume_on_node(session)
                except NodeError as exc:
                    rate_limited += 1
                    if (exc.code not in _RETRY_LATER or received_any
                            or rate_limited > self._manager._sdk.retry.attempts):
                        raise
                    await asyncio.sleep(_retry_after(exc, self._manager._sdk.retry.max_delay))
        finally:
            session.active_request = None
            if session.state.state in (SessionState.STREAMING, SessionState.CANCELLING):
                session.state.move(SessionState.READY)

    async def _ensure_ready(self) -> None:
        session = self._session
        if session.connection is None or session.connection.closed:
            await self._manager._reconnect(session)
        await self._manager._refresh_if_expiring(session)

    async def _attempt(self, request_id: str) -> AsyncIterator[str]:
        session = self._session
        connection = self._manager._connection(session)
        connection.drain()
        timeouts = self._manager._sdk.timeouts
        started_at = time.perf_counter()
        sealed: EncryptedStream | None = None
        message: ClientMessage
        if session.encryption is not None:
            message, sealed = await self._manager._encrypted_prompt(session, self._prompt, self._options, request_id)
        else:
            message = self._manager._prompt_message(session, self._prompt, self._options, request_id)
        accumulator = StreamAccumulator(request_id, started_at=started_at)
        await connection.send(message)
        session.state.move(SessionState.STREAMING)
        timeout = timeouts.first_token
        while not accumulator.done:
            frame: ServerMessage | None
            try:
                frame = await connection.receive(timeout)
            except RequestTimeoutError:
                if sealed is None or not sealed.ended:
                    raise
                frame = sealed.synthesized_end()  # no stream_end after the final chunk: finish anyway
            if sealed is not None:
                frame = sealed.open(frame)
                timeout = _e2e.END_GRACE_S if sealed.ended else timeouts.between_frames
                if frame is None:
                    continue
            else:
                timeout = timeouts.between_frames
            delta = accumulator.feed(frame, time.perf_counter())
            if delta is not None:
                yield delta.text
        snapshot = accumulator.snapshot()
        if snapshot.error is not None:
            raise snapshot.error
        self._finish(snapshot, request_id)

    def _verified_receipt(self, snapshot: StreamSnapshot) -> Receipt | None:
        """Check the host's receipt against what was streamed.

        Raises:
            SignatureError: forged, altered or missing (from a node that promised receipts).
        """
        session = self._session
        if snapshot.receipt is None:
            if Feature.SIGNED_RECEIPTS in session.features:
                raise SignatureError("the host promised signed receipts but sent none", code="RECEIPT_MISSING")
            return None
        receipt = Receipt.from_wire(snapshot.receipt)
        connection = session.connection
        announced = connection.connected.signing_key if connection and connection.connected else None
        verify_receipt(receipt, text=snapshot.text, tokens=snapshot.tokens_used,
                       expected_key=session.host_signing_key or announced)
        if receipt.session_id != session.session_id:
            raise SignatureError("receipt names another session", code="RECEIPT_INVALID")
        return receipt

    def _finish(self, snapshot: StreamSnapshot, request_id: str) -> None:
        receipt = self._verified_receipt(snapshot)
        session = self._session
        session.embed_context = False
        session.history.append(ChatTurn("user", self._prompt))
        if snapshot.text:
            session.history.append(ChatTurn("assistant", snapshot.text))
        index = snapshot.message_index if snapshot.message_index is not None else session.next_index
        session.next_index = index + 1
        self._result = InferenceResult(
            text=snapshot.text,
            finish_reason=snapshot.finish_reason,
            usage=snapshot.usage,
            tokens_used=snapshot.tokens_used,
            message_index=snapshot.message_index,
            ttft_ms=None if snapshot.ttft_s is None else snapshot.ttft_s * 1000.0,
            tokens_per_s=snapshot.tokens_per_s,
            session_id=session.session_id,
            request_id=request_id,
            receipt=receipt,
        )


def _retry_after(error: NodeError, cap: float) -> float:
    """The node's ``retry_after`` (seconds), within ``[0.05, cap]``; nothing is billed for a refused prompt."""
    value = error.details.get("retry_after")
    seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 1.0
    return min(max(seconds, 0.05), cap)


def _turns_in(history: Sequence[ChatTurn]) -> int:
    """User turns in a conversation: the next ``message_index``."""
    return sum(1 for turn in history if turn.role == "user")


def _new_request_id() -> str:
    return uuid.uuid4().hex[:16]

