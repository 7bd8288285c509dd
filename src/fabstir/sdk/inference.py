"""``InferenceManager``: the plan's streaming-chat methods, a thin facade over :class:`Session` objects.

Each session (keyed by its id, the on-chain job id as a decimal string) is a
:class:`~fabstir.sdk.session.Session`: one socket, one state, the keys, the token and the
client's own copy of the conversation (see that module for the two context modes,
encryption and reconnection). Answers stream as :class:`~fabstir.sdk.streaming.InferenceStream`
(retries and rate limits are explained there). This class keeps the sessions, picks the
current one, reads a job's published host keys from the chain, and forwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fabstir.discovery.selection import HostCandidate
from fabstir.errors import ConfigError, FabstirError, SessionError
from fabstir.protocol import AuthSuccess, ChatTurn, SessionInitAck, SessionResumed, SessionState
from fabstir.protocol.auth import TokenClaims, decode_token
from fabstir.sdk.session import PUBLIC_CONTEXT_MESSAGES, Session
from fabstir.sdk.streaming import InferenceStream
from fabstir.sdk.types import HostSwitch, InferenceResult, PromptOptions, TokenCallback
from fabstir.storage import Conversation, ConversationStore, ExportFormat, Message, export_conversation

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK
    from fabstir.sdk.recording import ConversationRecorder

__all__ = ["InferenceManager", "InferenceStream", "PUBLIC_CONTEXT_MESSAGES"]


class InferenceManager:
    """Streams chat answers from hosts. Reach it as ``sdk.inference``."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk
        self._sessions: dict[str, Session] = {}
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
        session = Session(self._sdk, str(session_id), host_url, job_id, chain_id, connect=self._sdk.connector,
                          host_signing_key=host_signing_key)
        self._sessions[session.session_id] = session
        self._current = session.session_id
        try:
            await session.open(host_public_key=host_public_key,
                               encryption=self._sdk.encryption if encryption is None else encryption,
                               conversation_context=conversation_context)
        except BaseException:
            await self.close(session.session_id)
            raise

    async def resume_session_with_history(
        self,
        session_id: str,
        host_url: str,
        job_id: int | None = None,
        *,
        chain_id: int | None = None,
        host_signing_key: str | None = None,
        host_public_key: str | None = None,
        encryption: bool | None = None,
    ) -> Conversation:
        """Load ``session_id``'s conversation from storage and continue it on ``host_url``.

        The stored history (written by any process with the storage key) becomes the session's
        ``conversation_context`` (see :meth:`connect_to_session`): restored with ``session_resume`` where the
        host supports it, otherwise re-sent with each prompt (the public subset). An unfinished answer is
        restored as is: its partial text is the assistant's turn, and the next prompt follows it (nothing is
        regenerated or marked on the host). A prompt stored without any answer stays in the history too.
        New turns are stored under the same ``session_id``. The other arguments are
        :meth:`connect_to_session`'s. Returns the conversation as it was loaded.

        Raises:
            ConfigError: STORAGE_NOT_CONFIGURED.
            StorageError: STORAGE_NOT_FOUND (no such conversation) and the codes of :mod:`fabstir.storage`.
            ConnectError, RequestTimeoutError, NodeError, E2EError: as :meth:`connect_to_session`.
        """
        recorder, store = self._storage()
        key = str(session_id)
        conversation = await recorder.call(lambda: store.load(key))
        context = [ChatTurn(m.role, m.content) for m in conversation.messages if m.content or m.role == "user"]
        await self.connect_to_session(key, host_url, job_id, context, chain_id=chain_id,
                                      host_signing_key=host_signing_key, host_public_key=host_public_key,
                                      encryption=encryption)
        return conversation

    async def switch_host(self, session_id: str | None = None, new_host: str | HostCandidate | None = None) -> HostSwitch:
        """Move the session to another host and go on: the same session object, id and stored conversation.

        ``new_host``: a URL, an address or a discovered candidate; ``None`` picks the next host through unified
        discovery by the session's strategy (never the current one). On a paid session the old job is left to
        settle (the host settles when the socket closes) and a new job is opened with the budget left; the
        session is encrypted with the new host's published key, authenticated, and its history restored there.
        See :mod:`fabstir.sdk.switching`.

        Raises:
            SessionError: SESSION_NOT_FOUND, REQUEST_IN_PROGRESS (an answer is streaming), BUDGET_EXHAUSTED.
            SelectionError: NO_HOST_AVAILABLE.
            ConnectError, NodeError, E2EError, ContractError: the new host could not take the session over.
        """
        session = self.session(session_id)
        if session.active_request is not None:
            raise SessionError("an answer is streaming on this session; switch when it ends",
                               code="REQUEST_IN_PROGRESS")
        return await session.switch_host(new_host)

    def session(self, session_id: str | None = None) -> Session:
        """The :class:`Session` object (the current one by default).

        Raises:
            SessionError: SESSION_NOT_FOUND.
        """
        key = session_id if session_id is not None else self._current
        session = self._sessions.get(str(key)) if key is not None else None
        if session is None:
            raise SessionError(
                f"no session {key!r}; call connect_to_session first" if key else
                "no session; call connect_to_session first", code="SESSION_NOT_FOUND")
        return session

    _session = session  # older name, kept for callers that used it

    def is_encrypted(self, session_id: str | None = None) -> bool:
        """Whether the session's traffic is end-to-end encrypted."""
        return self.session(session_id).is_encrypted

    def client_address(self, session_id: str | None = None) -> str | None:
        """The address the host recovered from our last encrypted init (``None`` for plaintext)."""
        session = self.session(session_id)
        return session.client_address if session.encryption is not None else None

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
        return await self.session(session_id).authenticate(permissions)

    async def refresh_token(self, session_id: str | None = None) -> AuthSuccess:
        """Exchange the session's still-valid token for a fresh one (no new signature)."""
        return await self.session(session_id).refresh_token()

    def validate_token(self, token: str, host_signing_key: str) -> TokenClaims:
        """Check a token's signature (by the host's Ed25519 key) and expiry; returns its claims.

        Raises:
            AuthError: forged, foreign or expired (SESSION_EXPIRED).
        """
        return decode_token(token, host_signing_key, int(time.time()))

    def session_token(self, session_id: str | None = None) -> str | None:
        return self.session(session_id).token

    async def get_history(self, session_id: str | None = None) -> list[ChatTurn]:
        """The host's copy of the conversation (needs ``read_history`` on hosts that require auth)."""
        return await self.session(session_id).get_history()

    async def initialize_session(self, session_id: str | None = None, job_id: int | None = None) -> SessionInitAck:
        """Send ``session_init`` and wait for the acknowledgement."""
        return await self.session(session_id).initialize(job_id)

    async def resume_session(self, session_id: str, conversation_context: Sequence[ChatTurn]) -> SessionResumed | None:
        """Load ``conversation_context`` as the session's history, on the client and the node.

        Returns the node's ``session_resumed`` acknowledgement, or ``None`` for a
        node without ``session-resume`` (the context then travels with each prompt).
        """
        return await self.session(session_id).resume(conversation_context)

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
        return await self.session(session_id).send(prompt, options, on_token=on_token)

    def stream(self, prompt: str, options: PromptOptions | None = None, *,
               session_id: str | None = None) -> InferenceStream:
        """An async iterator over the answer's text pieces (``.result`` once exhausted); use it as
        ``async with`` to stop early cleanly."""
        return self.session(session_id).stream(prompt, options)

    async def cancel(self, session_id: str | None = None) -> None:
        """Ask the node to stop the answer being streamed; it ends with ``finish_reason`` cancelled."""
        await self.session(session_id).cancel()

    def get_conversation(self, session_id: str | None = None) -> list[ChatTurn]:
        """The client's copy of the session's conversation.

        A live session: its in-memory copy. Otherwise, with ``FabstirSDK(storage=...)``, the stored
        conversation (from any process with the key; an unfinished answer included as it was stored): a
        blocking read, so prefer :meth:`load_conversation` in async code.

        Raises:
            SessionError: SESSION_NOT_FOUND (not live, no storage).
            StorageError: STORAGE_NOT_FOUND and the codes of :mod:`fabstir.storage`.
        """
        key = session_id if session_id is not None else self._current
        store = self._sdk.storage
        if store is None or (key is not None and str(key) in self._sessions):
            return list(self.session(session_id).history)
        if key is None:
            raise SessionError("no session; give a session id", code="SESSION_NOT_FOUND")
        return [ChatTurn(m.role, m.content) for m in store.load(str(key)).messages]

    async def load_conversation(self, session_id: str | None = None) -> Conversation:
        """The conversation as stored, with each message's ``partial`` flag, model, host and the receipts.

        With storage: read after every write this SDK queued. Without: the live session's in-memory copy.

        Raises:
            SessionError: SESSION_NOT_FOUND (no storage and not live).
            StorageError: STORAGE_NOT_FOUND and the codes of :mod:`fabstir.storage`.
        """
        recorder = self._sdk.recorder
        if recorder is None:
            session = self.session(session_id)
            return Conversation(session.session_id, tuple(
                Message(t.role, t.content) for t in session.history if t.role != "system"))
        key = self._id(session_id)
        store = recorder.store
        return await recorder.call(lambda: store.load(key))

    async def export_conversation(self, session_id: str | None = None, format: ExportFormat = "json") -> str:
        """The conversation as ``json``, ``markdown`` or OpenAI-style ``messages`` (see :meth:`load_conversation`)."""
        return export_conversation(await self.load_conversation(session_id), format)

    async def list_conversations(self) -> list[str]:
        """The session ids of the stored conversations of this SDK's storage key.

        Raises:
            ConfigError: STORAGE_NOT_CONFIGURED.
        """
        recorder, store = self._storage()
        return await recorder.call(store.list_conversations)

    async def delete_conversation(self, session_id: str) -> None:
        """Delete the stored conversation (a live session's in-memory copy stays).

        Raises:
            ConfigError: STORAGE_NOT_CONFIGURED.
            StorageError: STORAGE_NOT_FOUND.
        """
        recorder, store = self._storage()
        key = str(session_id)
        await recorder.call(lambda: store.delete(key))

    async def conversation_cid(self, session_id: str) -> str:
        """The content address of the stored conversation as it is now (see ``docs/storage.md``).

        Raises:
            ConfigError: STORAGE_NOT_CONFIGURED.
            StorageError: STORAGE_NOT_FOUND.
        """
        recorder, store = self._storage()
        key = str(session_id)
        return await recorder.call(lambda: store.snapshot(key))

    def _id(self, session_id: str | None) -> str:
        key = session_id if session_id is not None else self._current
        if key is None:
            raise SessionError("no session; give a session id", code="SESSION_NOT_FOUND")
        return str(key)

    def _storage(self) -> tuple[ConversationRecorder, ConversationStore]:
        recorder = self._sdk.recorder
        if recorder is None:
            raise ConfigError("no conversation storage: FabstirSDK(storage=...)", code="STORAGE_NOT_CONFIGURED")
        return recorder, recorder.store

    def session_state(self, session_id: str | None = None) -> SessionState:
        return self.session(session_id).state.state

    def host_features(self, session_id: str | None = None) -> frozenset[str]:
        """Extensions the session's host advertised."""
        return self.session(session_id).features

    async def close(self, session_id: str | None = None) -> None:
        """Close the session's socket (the host settles) and forget the session."""
        session = self._sessions.pop(session_id or self._current or "", None)
        if session is None:
            return
        if self._current == session.session_id:
            self._current = next(iter(self._sessions), None)
        await session.aclose()
        if self._sdk.recorder is not None:
            await self._sdk.recorder.drain()  # what it stored is there for any reader now

    async def aclose(self) -> None:
        """Close every session."""
        for session_id in list(self._sessions):
            await self.close(session_id)
