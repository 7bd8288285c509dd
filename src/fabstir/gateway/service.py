"""The gateway's core: one marketplace session per conversation, found again from the messages re-sent.

Theory of operation. For each chat request the :class:`Gateway` looks up a live, idle session whose
conversation equals the request's messages before the last one (:mod:`fabstir.gateway.conversations`); it
then sends only the last message there. Otherwise it picks a host through the SDK's unified discovery by
the request's strategy (``model="name:strategy"``, else the gateway's default) and opens a session with the
earlier messages as its history: on a chain, a paid session job with ``deposit`` in escrow
(``sdk.sessions.open_session``); otherwise a free session on the chosen host. Sessions are end-to-end
encrypted when the host publishes its key, stored when the SDK has storage, and fail over mid-answer like
any SDK session. When an answer ends the session is indexed under its new conversation (the old turns, the
prompt and the answer), so the client's next request finds it. A ``/v1/completions`` request is a
conversation of one turn: after it the session's history is cleared on the host (``session_resume`` with
none), and the session waits for the next new conversation or completion, so a paid gateway does not open a
job per completion.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fabstir.chain.money import token_cost
from fabstir.discovery.selection import Requirements, SelectionError
from fabstir.errors import (
    ConfigError,
    ConnectError,
    ConnectionClosedError,
    FabstirError,
    NodeError,
    RequestTimeoutError,
)
from fabstir.gateway.conversations import ConversationIndex, conversation_key
from fabstir.gateway.wire import ChatRequest, GatewayError
from fabstir.sdk import FabstirSDK, InferenceResult, InferenceStream, PromptOptions, Session

__all__ = ["Gateway", "Reply"]

CONNECT_TRIES = 4
"""Tries to connect a new session when the host refuses while idle sessions of this gateway are open there."""
RELEASE_BATCH = 4
"""Idle sessions closed on that host before each new try."""
RETRY_PAUSE_S = 0.05
"""Pause (times the try's number) before trying again after other requests closed idle sessions."""


@dataclasses.dataclass
class Reply:
    """One answer on its way: the session serving it, its stream, and its result once it ended."""

    session: Session
    stream: InferenceStream
    result: InferenceResult | None = None
    stateless: bool = False
    """A completion: the session's history is cleared after it (see :meth:`Gateway.done`)."""


class Gateway:
    """Serves OpenAI-style chat requests from the marketplace; see the module docstring."""

    def __init__(self, sdk: FabstirSDK, *, deposit: int = 0, strategy: str = "composite",
                 max_conversations: int = 256) -> None:
        self.sdk = sdk
        self.deposit = deposit
        """Escrow per paid session (base units); used when the SDK has a chain."""
        self.strategy = strategy
        self.conversations = ConversationIndex(max_conversations)
        self._lock = asyncio.Lock()
        self._released = 0
        """Idle sessions closed so far to make room for new ones (see :meth:`_connect`)."""

    @property
    def paid(self) -> bool:
        return self.sdk.chain is not None and self.sdk.deployment is not None

    async def session_for(self, request: ChatRequest, *, budget: int | None = None) -> Session:
        """The session that continues ``request``'s conversation, or a new one on a chosen host.

        ``budget``: the most a new paid session may hold in escrow (what the caller's API key has left).

        Raises:
            GatewayError: no host (503), the host refused or could not be reached (502), bad settings (500).
        """
        async with self._lock:
            session_id = self.conversations.take(conversation_key(request.history))
        if session_id is not None:
            try:
                session = self.sdk.inference.session(session_id)
            except FabstirError:
                session = None
            if session is not None and session.active_request is None:
                return session
        try:
            return await self._open(request, budget)
        except FabstirError as exc:
            raise as_gateway_error(exc) from None

    async def _open(self, request: ChatRequest, budget: int | None) -> Session:
        strategy = request.strategy or self.strategy
        inference = self.sdk.inference
        if self.paid:
            if self.deposit <= 0:
                raise ConfigError("a paid gateway needs a deposit per session (--deposit)")
            deposit = self.deposit if budget is None else min(self.deposit, budget)
            opened = await self.sdk.sessions.open_session(request.model, deposit, strategy=strategy)
            await self._connect(opened.host.api_url, opened.connect)
            session = inference.session(opened.session_id)
            if request.history:
                await session.resume(request.history)
            return session
        host = await self.sdk.discovery.select_host(strategy, Requirements(), registered_only=False)
        session_id = "gw-" + uuid.uuid4().hex[:16]
        await self._connect(host.api_url, lambda: inference.connect_to_session(
            session_id, host.api_url, conversation_context=request.history or None,
            host_public_key=host.encryption_key, host_signing_key=host.signing_key))
        return inference.session(session_id)

    async def _connect(self, host_url: str, connect: Callable[[], Awaitable[None]]) -> None:
        """``connect`` to ``host_url``; when the host closes or refuses it while this gateway holds idle sessions
        there, close the least recently used of those and try again.

        Every session here holds its own connection, and all come from this gateway's one address, which a node
        caps (``max_connections_per_address``, 64 by default: fewer than the conversations kept here). Without
        this, once the idle conversations filled that cap every new conversation on the host failed until the
        node's idle timeout closed some.

        Requests that fail at once share the idle sessions: one that finds none left tries again (after a short
        pause) when others closed some since its try began.

        Raises:
            ConnectError, ConnectionClosedError: refused with no idle session there closed meanwhile, or after
                :data:`CONNECT_TRIES` tries.
        """
        for attempt in range(1, CONNECT_TRIES + 1):
            released_before = self._released
            try:
                await connect()
                return
            except (ConnectError, ConnectionClosedError):
                if attempt == CONNECT_TRIES:
                    raise
                if await self._release_idle(host_url):
                    continue
                if self._released == released_before:
                    raise
                # another request freed connections there meanwhile: give its closes a moment to land
                await asyncio.sleep(RETRY_PAUSE_S * attempt)

    async def _release_idle(self, host_url: str) -> bool:
        """Close up to :data:`RELEASE_BATCH` of the least recently used idle sessions on ``host_url``;
        whether there were any."""
        def on_host(session_id: str) -> bool:
            try:
                return self.sdk.inference.session(session_id).host_url == host_url
            except FabstirError:  # already gone: its entry goes too
                return True

        async with self._lock:
            released = self.conversations.drop_oldest(RELEASE_BATCH, on_host)
            self._released += len(released)
        for session_id in released:
            await self.sdk.inference.close(session_id)
        return bool(released)

    def reply(self, session: Session, request: ChatRequest) -> Reply:
        """Start the answer to ``request``'s last message on ``session``."""
        options = PromptOptions(model=request.model if self.paid else "", max_tokens=request.max_tokens,
                                temperature=request.temperature)
        # catch_up: pieces that piled up while the client parsed the last chunk go out as one chunk
        return Reply(session, session.stream(request.prompt, options, catch_up=True), stateless=request.stateless)

    async def pieces(self, reply: Reply) -> AsyncIterator[str]:
        """The answer's text pieces; its result is kept on ``reply``, and the session re-indexed at the end.

        Raises:
            GatewayError: the answer failed (no host could finish it).
        """
        try:
            async with reply.stream as stream:
                async for piece in stream:
                    yield piece
                reply.result = stream.result
        except FabstirError as exc:
            raise as_gateway_error(exc) from None
        finally:
            await self.done(reply)

    async def done(self, reply: Reply) -> None:
        """Index the session under its conversation now that the answer is in (or drop a broken one)."""
        session = reply.session
        if reply.result is None:
            await self.sdk.inference.close(session.session_id)
            return
        if reply.stateless:  # a completion: forget its turn, so the session can serve any new conversation
            try:
                await session.resume(())
            except FabstirError:
                await self.sdk.inference.close(session.session_id)
                return
        async with self._lock:
            evicted = self.conversations.put(conversation_key(session.history), session.session_id)
        for old in evicted:
            await self.sdk.inference.close(old)

    @staticmethod
    def cost(session: Session, result: InferenceResult) -> int:
        """What ``result`` costs at the session's price: its tokens x price / 1000, in base units (0 when free)."""
        route = session.route
        if route is None or route.model is None:
            return 0
        return token_cost(result.tokens_used, route.price_per_token)

    async def aclose(self) -> None:
        await self.sdk.inference.aclose()


def as_gateway_error(exc: FabstirError) -> GatewayError:
    """A marketplace failure as the OpenAI-shaped error a client expects."""
    if isinstance(exc, GatewayError):
        return exc
    code = str(exc.code or "")
    if isinstance(exc, SelectionError):
        return GatewayError(f"no host available: {exc.message}", status=503, type="service_unavailable",
                            code="no_host_available")
    if code == "TOKEN_LIMIT_EXCEEDED":
        return GatewayError(exc.message, status=400, code="context_length_exceeded")
    if code in ("RATE_LIMITED", "TOO_MANY_REQUESTS"):
        return GatewayError(exc.message, status=429, type="rate_limit_error", code=code.lower())
    if code in ("DEPOSIT_EXHAUSTED", "BUDGET_EXHAUSTED", "INSUFFICIENT_FUNDS"):
        return GatewayError(exc.message, status=402, type="insufficient_quota", code=code.lower())
    if isinstance(exc, (ConnectError, ConnectionClosedError, RequestTimeoutError)):
        return GatewayError(f"the host failed: {exc.message}", status=502, type="api_error", code="host_failed")
    if isinstance(exc, NodeError):
        return GatewayError(f"the host refused: {exc.message}", status=502, type="api_error", code=code.lower())
    if isinstance(exc, ConfigError):
        return GatewayError(exc.message, status=500, type="server_error", code="gateway_misconfigured")
    return GatewayError(exc.message, status=500, type="server_error", code=code.lower() or "internal_error")
