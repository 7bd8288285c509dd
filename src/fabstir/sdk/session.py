"""``Session``: one conversation with one host: its connection, state, keys, token and history.

Theory of operation. A :class:`Session` owns a :class:`~fabstir.sdk.channel.Channel`: a
transport (opened through an injected :data:`~fabstir.sdk.connection.Connector`) and the
sans-I/O :class:`~fabstir.protocol.client_connection.ClientConnection` that holds the
protocol state of that socket (matching, ``message_index``, session keys, signing). The
session acts on the connection and writes what it queues; it keeps its own lifecycle
(:class:`SessionStateMachine`, across reconnects) and the client's copy of the
conversation. Two modes, chosen per host from the features it advertises:

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
``conversation_context`` on a node without it); init, resume and reconnect are in
:mod:`fabstir.sdk.handshake`, JWT auth in :mod:`fabstir.sdk.session_auth`. Answers are streamed
by :class:`~fabstir.sdk.streaming.InferenceStream`.
Use a session as ``async with`` (it closes its socket on exit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from fabstir.chain.usage import UsageTranscript
from fabstir.discovery.selection import HostCandidate
from fabstir.errors import ConnectionClosedError, SessionError, StorageError
from fabstir.protocol import (
    PUBLIC_CONTEXT_MESSAGES,
    AuthSuccess,
    ChatTurn,
    Feature,
    History,
    HistoryRequest,
    InferenceRequest,
    SessionInitAck,
    SessionResumed,
    SessionState,
    SessionStateMachine,
)
from fabstir.protocol.client_connection import ClientConnection, ControlRequest
from fabstir.protocol.messages import JSONObject
from fabstir.protocol.signing import sign_message
from fabstir.sdk import handshake, session_auth, switching
from fabstir.sdk.billing import usage_acknowledgement
from fabstir.sdk.channel import Channel
from fabstir.sdk.connection import Connector, Transport
from fabstir.sdk.e2e import ClientEncryption, choose_encryption, embed_context, normalize_public_key
from fabstir.sdk.handshake import turns_in
from fabstir.sdk.streaming import InferenceStream, new_request_id
from fabstir.sdk.switching import SessionRoute
from fabstir.sdk.types import HostSwitch, InferenceResult, PromptOptions, TokenCallback
from fabstir.sdk.usage_log import JobUsage

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["PUBLIC_CONTEXT_MESSAGES", "Session", "turns_in"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")


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
    history: list[ChatTurn] = dataclasses.field(default_factory=list)
    next_index: int = 0
    active_request: str | None = None
    token: str | None = None
    token_expires_at: int = 0
    encryption: ClientEncryption | None = None
    """The keys of an encrypted session; ``None`` for a plaintext one."""
    client_address: str | None = None
    """The address the host recovered from our last encrypted init."""
    embed_context: bool = False
    """Encrypted, on a node that cannot resume encrypted: the next prompt carries the restored history."""
    route: SessionRoute | None = None
    """How to move to another host (model, budget, strategy); see :mod:`fabstir.sdk.switching`."""
    switches: list[HostSwitch] = dataclasses.field(default_factory=list)
    """Every move to another host so far, oldest first."""
    job_deposit: int = 0
    """The current job's deposit (base units; 0 when unknown or free)."""
    job_tokens: int = 0
    """Tokens streamed to us on the current job."""
    usage: UsageTranscript = dataclasses.field(default_factory=UsageTranscript)
    """The current job's answers that ended, as the depositor countersigns them (:mod:`fabstir.chain.usage`)."""
    wire_id: str | None = None
    """The id the current host knows the session by, once it moved (its new job's id); else :attr:`session_id`."""
    _channel: Channel | None = dataclasses.field(default=None, init=False, repr=False)
    _learned: frozenset[str] = dataclasses.field(default=frozenset(), init=False, repr=False)
    """Features this connection showed without advertising them (a resume it accepted)."""

    # --- what the host offers ---------------------------------------------------

    @property
    def wire_session_id(self) -> str:
        """The session id sent to the current host."""
        return self.wire_id if self.wire_id is not None else self.session_id

    @property
    def connection(self) -> Transport | None:
        """The transport of the current connection (``None`` before the first)."""
        return self._channel.transport if self._channel is not None else None

    @property
    def features(self) -> frozenset[str]:
        """Extensions the host advertised on this connection."""
        if self._channel is None:
            return frozenset()
        return self._channel.protocol.features | self._learned

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

    def channel(self) -> Channel:
        """The open connection.

        Raises:
            SessionError: NOT_CONNECTED.
        """
        if self._channel is None:
            raise SessionError("session is not connected", code="NOT_CONNECTED")
        return self._channel

    async def request(self, message: ControlRequest, kind: type[_R]) -> _R:
        """Send a control request and wait (the handshake timeout) for its reply of type ``kind``."""
        channel = self.channel()
        request_id = channel.protocol.send_request(message)
        return await channel.request(kind, request_id, self.sdk.timeouts.handshake)

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
            if self.state.state is SessionState.IDLE:
                self.state.move(SessionState.CONNECTING)
            await self.open_channel()
            account = self.sdk.account
            self.encryption = choose_encryption(host_public_key, encryption, announced=self.announced_key(),
                                                client_key=bytes(account.key) if account is not None else None)
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
        await self.close_channel()
        if self.state.can(SessionState.CLOSED):
            self.state.move(SessionState.CLOSED)

    async def close_channel(self) -> None:
        """Close the current connection (its keys are zeroed)."""
        if self._channel is not None:
            await self._channel.aclose()

    def move_to(self, host_url: str, job_id: int | None, *, deposit: int, signing_key: str | None) -> None:
        """Point the session at another host (and job); the next :meth:`open_channel` connects there."""
        if job_id != self.job_id:
            self.persist_usage()  # the old job's count, before it is reset
            self.wire_id = str(job_id) if job_id is not None else None
            self.job_deposit, self.job_tokens, self.usage = deposit, 0, UsageTranscript()
        self.host_url, self.job_id, self.host_signing_key = host_url, job_id, signing_key
        self.encryption, self.token, self.token_expires_at = None, None, 0  # the old host's keys and token

    async def switch_host(self, new_host: str | HostCandidate | None = None, *, failed: bool = False) -> HostSwitch:
        """See :func:`fabstir.sdk.switching.switch_host`."""
        return await switching.switch_host(self, new_host, failed=failed)

    @property
    def can_fail_over(self) -> bool:
        """Whether a broken answer may move to another host: failover on, and a chain or discovery to find one."""
        sdk = self.sdk
        return sdk.failover and (self.route is not None or sdk.chain is not None or bool(sdk.discovery.source_names))

    def learn(self, feature: str) -> None:
        """The node showed ``feature`` on this connection without advertising it."""
        self._learned = self._learned | {feature}

    def announced_key(self) -> str | None:
        """The secp256k1 key the node announced in its greeting, if any."""
        greeting = self._channel.protocol.greeting if self._channel is not None else None
        return greeting.public_key if greeting is not None else None

    def _signer(self) -> Callable[[JSONObject], JSONObject] | None:
        key = self.sdk.signing_key
        if key is None:
            return None
        return lambda wire: sign_message(wire, key, int(time.time() * 1000))

    async def open_channel(self) -> None:
        """Connect (through :attr:`connect`), wait for the greeting; the connection starts at our ``next_index``."""
        sdk = self.sdk
        transport = await self.connect(self.host_url, timeout=sdk.timeouts.connect, compression=sdk.compression)
        protocol = ClientConnection(self.wire_session_id, job_id=self.job_id, chain_id=self.chain_id,
                                    message_index=self.next_index, sign=self._signer())
        self._channel, self._learned = Channel(transport, protocol), frozenset()
        await self._channel.greet()
        self.state.move(SessionState.CONNECTED)

    async def reconnect(self) -> None:
        """See :func:`fabstir.sdk.handshake.reconnect`."""
        await handshake.reconnect(self)

    async def initialize(self, job_id: int | None = None) -> SessionInitAck:
        """See :func:`fabstir.sdk.handshake.initialize`."""
        return await handshake.initialize(self, job_id)

    async def resume(self, conversation_context: Sequence[ChatTurn]) -> SessionResumed | None:
        """See :func:`fabstir.sdk.handshake.resume`."""
        return await handshake.resume(self, conversation_context)

    async def resume_on_node(self) -> SessionResumed:
        """See :func:`fabstir.sdk.handshake.resume_on_node`."""
        return await handshake.resume_on_node(self)

    # --- JWT session auth (fabstir.sdk.session_auth) --------------------------------------

    async def authenticate(self, permissions: Sequence[str] = ("prompt", "read_history")) -> AuthSuccess:
        """See :func:`fabstir.sdk.session_auth.authenticate`."""
        return await session_auth.authenticate(self, permissions)

    async def refresh_token(self) -> AuthSuccess:
        """See :func:`fabstir.sdk.session_auth.refresh_token`."""
        return await session_auth.refresh_token(self)

    async def authenticate_if_offered(self) -> None:
        await session_auth.authenticate_if_offered(self)

    async def get_history(self) -> list[ChatTurn]:
        """The host's copy of the conversation (needs ``read_history`` on hosts that require auth)."""
        history = await self.request(HistoryRequest(self.wire_session_id, new_request_id()), History)
        return list(history.conversation_context)

    # --- prompts --------------------------------------------------------------------------------

    def stream(self, prompt: str, options: PromptOptions | None = None, *, catch_up: bool = False
               ) -> InferenceStream:
        """The answer to ``prompt`` as an async iterator of text pieces (``async with`` closes it early).

        By default each piece is one frame of the host's. With ``catch_up``, every piece after the first also
        takes the frames already received behind it: a consumer that fell behind (a relay such as the gateway)
        gets one piece for all of them instead of paying its per-piece cost for each.

        Raises:
            SessionError: REQUEST_IN_PROGRESS (one request at a time) or VALIDATION_ERROR (empty prompt).
        """
        if self.active_request is not None:
            raise SessionError("a request is already running on this session; one at a time",
                               code="REQUEST_IN_PROGRESS")
        if not prompt:
            raise SessionError("prompt must not be empty", code="VALIDATION_ERROR")
        return InferenceStream(self, prompt, options or self.sdk.default_options, catch_up=catch_up)

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
        channel = self._channel
        if self.active_request is None or channel is None or channel.protocol.state is not SessionState.STREAMING:
            return
        if self.state.can(SessionState.CANCELLING):
            self.state.move(SessionState.CANCELLING)
        channel.protocol.send_cancel()
        await channel.flush()

    def persist_usage(self) -> None:
        """Write what the current job streamed to us to the SDK's usage log (``FabstirSDK(usage_log=...)``), so a
        dispute of an over-claim still has the count after this process is gone. A log that cannot be written
        is reported, never fatal: the answer already reached the user."""
        sdk, job_id = self.sdk, self.job_id
        if sdk.usage_log is None or job_id is None or sdk.chain is None or sdk.deployment is None \
                or self.job_tokens == 0:
            return
        try:
            sdk.usage_log.record(sdk.chain.chain_id, sdk.deployment.marketplace, job_id,
                                 JobUsage(self.job_tokens, self.usage.tokens, self.usage.transcript_hash))
        except StorageError as exc:
            log.warning("job %d: usage not written to %s: %s", job_id, sdk.usage_log.path, exc.message)

    async def countersign_usage(self) -> None:
        """Countersign the current job's usage so far (``usage_ack``) where the host takes it (``usage-countersign``);
        a lost socket only loses this countersignature (the next one covers it). The count is written to the
        usage log first, so what is signed is never more than what is stored."""
        self.persist_usage()
        channel = self._channel
        if self.job_id is None or Feature.USAGE_COUNTERSIGN not in self.features or channel is None \
                or channel.closed or self.usage.tokens == 0:
            return
        message = usage_acknowledgement(self.sdk, self.job_id, self.usage, self.wire_session_id)
        if message is not None:
            channel.protocol.send_usage_ack(message)
            with contextlib.suppress(ConnectionClosedError):
                await channel.flush()

    async def ensure_ready(self) -> None:
        """Reconnect if the socket is gone, refresh an expiring token."""
        if self._channel is None or self._channel.closed:
            await self.reconnect()
        await session_auth.refresh_if_expiring(self)

    async def prompt_request(self, prompt: str, options: PromptOptions) -> InferenceRequest:
        """The request carrying ``prompt`` (after a fresh encrypted init unless the current key is unused).

        Plaintext on a node without server context: the last turns go along as ``conversation_context``.
        Encrypted on a node that could not resume: the restored history is embedded in the prompt.
        """
        if self.encryption is not None and not self.channel().protocol.key_fresh:
            await handshake.send_init(self, options.model)
        if self.encryption is None:
            context = None if self.server_context else tuple(self.history[-PUBLIC_CONTEXT_MESSAGES:])
            return InferenceRequest(prompt=prompt, model=options.model, max_tokens=options.max_tokens,
                                    temperature=options.temperature, conversation_context=context)
        text = embed_context(self.history, prompt) if self.embed_context else prompt
        return InferenceRequest(prompt=text, model=options.model, max_tokens=options.max_tokens,
                                temperature=options.temperature)

    def record_turn(self, prompt: str, answer: str, message_index: int | None) -> None:
        """Add a finished exchange to our copy of the conversation."""
        self.embed_context = False
        self.history.append(ChatTurn("user", prompt))
        if answer:
            self.history.append(ChatTurn("assistant", answer))
        self.next_index = (message_index if message_index is not None else self.next_index) + 1
