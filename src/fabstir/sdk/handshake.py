"""Opening, restoring and re-opening a :class:`~fabstir.sdk.session.Session` on its host.

- :func:`initialize`: ``session_init``, or ``encrypted_session_init`` offering a fresh session
  key (:func:`send_init`); a node that answers ENCRYPTION_NOT_SUPPORTED gets plaintext unless
  encryption was required. When the ack's ``message_index`` says the node remembers the session
  differently (it restarted), our copy of the conversation is resumed onto it.
- :func:`resume`: the client's history becomes the node's (``session_resume``, sealed under the
  current key when encrypted); a node that cannot resume gets the history with each prompt
  (``conversation_context``, or embedded in the first sealed prompt).
- :func:`reconnect`: a new connection with backoff, then the node's context restored from ours.

Each request goes out through the session's
:class:`~fabstir.protocol.client_connection.ClientConnection` and waits the handshake timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fabstir.errors import ConnectError, NodeError
from fabstir.protocol import ChatTurn, ErrorCode, Feature, SessionInitAck, SessionResumed, SessionState
from fabstir.sdk.config import backoff
from fabstir.sdk.e2e import check_announced_key
from fabstir.sdk.streaming import new_request_id

if TYPE_CHECKING:
    from fabstir.sdk.session import Session

__all__ = ["initialize", "reconnect", "resume", "resume_on_node", "send_init", "turns_in"]

log = logging.getLogger("fabstir.sdk")


def turns_in(history: Sequence[ChatTurn]) -> int:
    """User turns in a conversation: the next ``message_index``."""
    return sum(1 for turn in history if turn.role == "user")


async def initialize(session: Session, job_id: int | None = None) -> SessionInitAck:
    """Send ``session_init`` (or the encrypted init) and wait for the acknowledgement."""
    if job_id is not None:
        session.job_id = job_id
        session.channel().protocol.job_id = job_id
    ack = await send_init(session)
    if session.server_context and ack.message_index is not None and ack.message_index != session.next_index:
        # the node remembers this session differently (e.g. it restarted): give it our copy
        await resume_on_node(session)
    session.state.move(SessionState.READY)
    return ack


async def send_init(session: Session, model: str | None = None) -> SessionInitAck:
    """``session_init``, or ``encrypted_session_init`` with a fresh session key; returns the ack."""
    channel = session.channel()
    protocol, timeout = channel.protocol, session.sdk.timeouts.handshake
    encryption = session.encryption
    if encryption is not None:
        request_id = protocol.send_encrypted_init(
            encryption.host_public_key, encryption.client_key, request_id=new_request_id(),
            model=session.sdk.default_options.model if model is None else model)
        try:
            ack = await channel.request(SessionInitAck, request_id, timeout)
        except NodeError as exc:
            if exc.code != ErrorCode.ENCRYPTION_NOT_SUPPORTED or encryption.required:
                raise
            log.warning("host %s does not support end-to-end encryption; session %s continues in plaintext",
                        session.host_url, session.session_id)
            session.encryption = None
        else:
            session.client_address = protocol.client_address
            return ack
    request_id = protocol.send_init(request_id=new_request_id())
    return await channel.request(SessionInitAck, request_id, timeout)


async def resume(session: Session, conversation_context: Sequence[ChatTurn]) -> SessionResumed | None:
    """Load ``conversation_context`` as the history, on the client and the node.

    Returns the node's ``session_resumed``, or ``None`` for a node without ``session-resume``
    (the context then travels with each prompt).
    """
    session.history = list(conversation_context)
    session.next_index = turns_in(session.history)
    if session.encryption is not None and session.can_resume:
        await send_init(session)  # the key the resume is sealed with (may fall back to plaintext)
    if not session.can_resume:
        if session.encryption is not None:
            session.embed_context = bool(session.history)
        await initialize(session)
        return None
    resumed = await resume_on_node(session)
    if session.state.can(SessionState.READY):
        session.state.move(SessionState.READY)
    return resumed


async def resume_on_node(session: Session) -> SessionResumed:
    """Send our copy of the conversation (``session_resume``, sealed when encrypted)."""
    channel = session.channel()
    if session.encryption is not None and not channel.protocol.encrypted:
        await send_init(session)
    request_id = channel.protocol.send_resume(session.history, session.next_index - 1, request_id=new_request_id())
    resumed = await channel.request(SessionResumed, request_id, session.sdk.timeouts.handshake)
    session.learn(Feature.SESSION_RESUME)
    return resumed


async def reconnect(session: Session) -> None:
    """Reconnect with backoff and restore the node's context from our history.

    Raises:
        ConnectError: the host stayed unreachable through every retry.
    """
    await session.close_channel()  # the keys lived on the old connection only
    session.state.move(SessionState.RECONNECTING)
    last_error: Exception | None = None
    for delay in [0.0, *backoff(session.sdk.retry)]:
        await asyncio.sleep(delay)
        try:
            await session.open_channel()
        except ConnectError as exc:
            last_error = exc
            continue
        if session.encryption is not None:
            check_announced_key(session.encryption, session.announced_key())
        await session.authenticate_if_offered()
        if session.history and session.can_resume and session.encryption is None:
            await resume_on_node(session)
            session.state.move(SessionState.READY)
        else:  # encrypted: the init's ack tells whether the node still has our context
            await initialize(session)
        return
    session.state.move(SessionState.CLOSED)
    raise ConnectError(f"could not reconnect to {session.host_url}: {last_error}")
