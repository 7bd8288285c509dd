"""The node's end of ``/v1/ws``, sans I/O: client frames in, typed requests out; answers in, frames out.

The connection decides nothing about admission, billing or engines: it parses and checks
frames, refuses what the protocol refuses, and turns the node's calls into frames. Rules, on
top of those in :mod:`fabstir.protocol.connection`:

Rule S1 (states). ``CONNECTED`` → ``READY`` once a session is bound (:meth:`accept_session`,
:meth:`accept_resume`, :meth:`bind_session`). A :class:`PromptReceived` moves to
``STREAMING``, the first :class:`CancelReceived` to ``CANCELLING``; :meth:`send_end` or
:meth:`send_error` moves back to ``READY`` (``CONNECTED`` while no session is bound).

Rule S2 (one request at a time). While an answer is in progress the connection acts only on
``stream_cancel`` (the first one becomes :class:`CancelReceived`; more are dropped); ``ping``
is ignored; every other request is refused with ``REQUEST_IN_PROGRESS`` and the answer goes on.

Rule S3 (error + ``stream_end``). A refusal is ``error`` then ``stream_end{reason:"error",
tokens_used:0}``, both with the refused request's ``id`` and the bound session's id.
Exception, so that a running stream is never mistaken for ended: while an answer is in
progress, a frame that fails to parse or verify, or a request refused with
``REQUEST_IN_PROGRESS``, gets the ``error`` alone, unless that frame had an ``id`` of its own.

Rule S4 (answers only inside a request). :meth:`send_chunk`, :meth:`send_end` and
:meth:`check_message_index` need a prompt in progress; :meth:`accept_session`,
:meth:`accept_resume` and :meth:`answer` need none (else ``LocalProtocolError``).
``send_end(finish_reason)`` closes a complete answer with the empty sentinel chunk (sealed:
the empty ``final`` chunk and ``encrypted_response``) and ``stream_end{reason:"complete"}``;
``finish_reason="cancelled"`` sends ``stream_end{reason:"cancelled"}`` alone.
:meth:`send_error` ends the request in progress (error + ``stream_end``) or, with none in
progress, refuses the request named by ``request_id``.

Rule S5 (``message_index``, only with ``extensions``). :meth:`check_message_index` raises
:class:`~fabstir.errors.InvalidMessageIndexError` (``details.expected_message_index``) when
the prompt in progress carries another index than ``expected``; the node calls it once it
knows the session (today: after admission and the deposit check), so an unchecked prompt is
never refused for its index. ``expected`` defaults to the connection's own count: the index
its last ``session_init_ack``/``session_resumed`` announced, plus one per answer that ended
complete or cancelled. ``stream_end`` carries the index the request was checked against
(else the count, else the prompt's own).

Rule S6 (encryption). ``encrypted_session_init`` is opened with ``host_key``
(``ENCRYPTION_NOT_SUPPORTED`` without one; E2E codes; ``REPLAYED_MESSAGE`` for an init in
``init_replays``; ``MISSING_SESSION_ID``) and becomes :class:`EncryptedInitReceived`; its key
is installed by :meth:`accept_session`. ``encrypted_message`` and a sealed ``session_resume``
are opened with their session's key (else the bound session's): a refused one changes
nothing; an opened prompt is answered sealed (``encrypted_chunk`` ``chunk_0, chunk_1 …``).

Rule S7. ``stream_cancel`` with nothing in progress has no effect; ``session_resume`` without
``extensions`` is ``UNKNOWN_MESSAGE_TYPE``. With ``verify_signatures`` a frame carrying
``sig`` is verified at ``now_ms`` (and, with ``require_signed``, an unsigned one refused).

Rule S8. After :meth:`close` received frames are dropped and the node's calls queue nothing
(the peer is gone; an answer still generating should stop); every key is zeroed.
"""

from __future__ import annotations

from fabstir.errors import InvalidMessageIndexError, LocalProtocolError
from fabstir.protocol.codes import ErrorCode
from fabstir.protocol.e2e_session import InitReplayCache
from fabstir.protocol.events import EncryptedInitReceived, ResumeReceived
from fabstir.protocol.messages import (
    AuthChallenge,
    AuthSuccess,
    Connected,
    History,
    JSONObject,
    SessionInit,
    SessionInitAck,
    SessionResumed,
    StreamChunk,
    StreamEnd,
    Usage,
)
from fabstir.protocol.parse import DEFAULT_MAX_FRAME_BYTES, job_id_from_text
from fabstir.protocol.server_intake import Answer, ServerIntake
from fabstir.protocol.signing import ReplayCache

__all__ = ["ServerConnection"]


class ServerConnection(ServerIntake):
    """One client's ``/v1/ws`` connection, seen from the node; see the module docstring.

    Args:
        greeting: the ``connected`` message, queued at once (``None`` sends none).
        extensions: our extensions are on (Rules S5, S7; compressed inner payloads).
        host_key: the host's secp256k1 key for encrypted sessions (``None``: ``ENCRYPTION_NOT_SUPPORTED``).
        init_replays: encrypted inits already accepted (shared by the node's connections).
        max_frame_bytes: larger frames get ``FRAME_TOO_LARGE`` (sealed inner payloads may inflate to 4x).
        verify_signatures, require_signed, replay_cache: Rule S7.
    """

    def __init__(self, *, greeting: Connected | None = None, extensions: bool = True, host_key: bytes | None = None,
                 init_replays: InitReplayCache | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 verify_signatures: bool = False, require_signed: bool = False,
                 replay_cache: ReplayCache | None = None) -> None:
        super().__init__(extensions=extensions, host_key=host_key, init_replays=init_replays,
                         max_frame_bytes=max_frame_bytes, verify_signatures=verify_signatures,
                         require_signed=require_signed, replay_cache=replay_cache)
        self.next_message_index: int | None = None
        """Rule S5's count (``None`` until an ack announced one)."""
        if greeting is not None:
            self._queue(greeting)

    def _idle(self, action: str) -> bool:
        """False when closed (Rule S8); raises when an answer is in progress (Rule S4)."""
        if self.streaming:
            raise LocalProtocolError(f"cannot {action} while an answer is in progress", code="REQUEST_IN_PROGRESS")
        return not self.closed

    def _current(self, action: str) -> Answer | None:
        """The answer in progress; ``None`` when closed (Rule S8); raises with none (Rule S4)."""
        if self.closed:
            return None
        if self._answer is None:
            raise LocalProtocolError(f"cannot {action}: no prompt is in progress", code="NO_REQUEST")
        return self._answer

    def bind_session(self, session_id: str) -> None:
        """The node bound ``session_id`` to this connection (errors carry it; answers end in ``READY``)."""
        if not self.closed:
            self.session_id = session_id
            self._bind()

    def accept_session(self, event: SessionInit | EncryptedInitReceived, *, job_id: int | None = None,
                       features: tuple[str, ...] | None = None, message_index: int | None = None,
                       session_secret: str | None = None) -> None:
        """Acknowledge an init (``session_init_ack``); an encrypted one's key is installed.

        ``job_id`` defaults to the init's own (the sealed ``jobId`` when it is decimal).

        Raises:
            LocalProtocolError: an answer is in progress.
        """
        if not self._idle("accept a session"):
            return
        session_id = event.session_id
        if isinstance(event, SessionInit):
            text, chain, address = "Session initialized successfully", event.chain_id, None
            job = event.job_id if job_id is None else job_id
        else:
            opened = event.opened
            text, chain, address = "Encrypted session initialized successfully", event.message.chain_id, \
                opened.client_address
            job = job_id_from_text(opened.init.job_id) if job_id is None else job_id
            self._e2e.install(session_id, opened.init.session_key, opened.signer_candidates)
        self._announce(session_id, message_index)
        self._queue(SessionInitAck(session_id=session_id, job_id=job, chain_id=chain, message=text,
                                   features=features, message_index=message_index, request_id=event.request_id,
                                   client_address=address, session_secret=session_secret))

    def accept_resume(self, event: ResumeReceived, *, message_index: int, kept_messages: int,
                      dropped_messages: int, session_secret: str | None = None) -> None:
        """Acknowledge a resume (``session_resumed``); ``message_index`` is the next one expected.

        Raises:
            LocalProtocolError: an answer is in progress.
        """
        if not self._idle("accept a resume"):
            return
        resume = event.resume
        self._announce(resume.session_id, message_index)
        self._queue(SessionResumed(session_id=resume.session_id, message_index=message_index,
                                   kept_messages=kept_messages, dropped_messages=dropped_messages,
                                   request_id=resume.request_id, session_secret=session_secret))

    def _announce(self, session_id: str, message_index: int | None) -> None:
        self.session_id = session_id
        self._bind()
        if message_index is not None:
            self.next_message_index = message_index

    def answer(self, message: AuthChallenge | AuthSuccess | History) -> None:
        """Reply to ``auth_challenge``, ``auth``, ``token_refresh``, ``get_history`` or ``session_clear``.

        Raises:
            LocalProtocolError: an answer is in progress.
        """
        if self._idle("answer a request"):
            self._queue(message)

    def check_message_index(self, expected: int | None = None) -> None:
        """Rule S5: check the prompt in progress against ``expected`` (default: the connection's count).

        Raises:
            InvalidMessageIndexError: a gap or a repeat; answer it with :meth:`send_error`.
            LocalProtocolError: no prompt is in progress.
        """
        answer = self._current("check a message index")
        expected = self.next_message_index if expected is None else expected
        if answer is None or expected is None or not self.extensions:
            return
        answer.index = expected
        given = answer.event.prompt.message_index
        if given is not None and given != expected:
            raise InvalidMessageIndexError(f"expected message_index {expected}, got {given}",
                                           code=ErrorCode.INVALID_MESSAGE_INDEX, request_id=answer.event.request_id,
                                           details={"expected_message_index": expected})

    def send_chunk(self, text: str, tokens: int = 1) -> None:
        """One piece of the answer (``stream_chunk``, or ``encrypted_chunk`` on an encrypted prompt).

        Raises:
            LocalProtocolError: no prompt is in progress.
            E2EError: SESSION_KEY_NOT_FOUND (answer with ``send_error(ENCRYPTION_FAILED, …)``).
        """
        answer = self._current("send a chunk")
        if answer is None:
            return
        rid = answer.event.prompt.request_id
        sealer = answer.sealer
        self._queue(StreamChunk(text, tokens, rid) if sealer is None else sealer.chunk(text, tokens, rid))
        answer.tokens += tokens

    def send_end(self, finish_reason: str, *, tokens_used: int | None = None, usage: Usage | None = None,
                 message_index: int | None = None, receipt: JSONObject | None = None,
                 session_id: str | None = None) -> None:
        """End the answer in progress (Rule S4); ``tokens_used`` defaults to the tokens sent.

        Raises:
            LocalProtocolError: no prompt is in progress.
            E2EError: SESSION_KEY_NOT_FOUND while sealing the closing frames (nothing was queued).
        """
        answer = self._current("end an answer")
        if answer is None:
            return
        prompt = answer.event.prompt
        cancelled = finish_reason == "cancelled"
        closing = [] if cancelled else (
            [StreamChunk("", 0, prompt.request_id)] if answer.sealer is None
            else answer.sealer.complete(finish_reason, prompt.request_id))
        index = message_index if message_index is not None else self._index_of(answer)
        for frame in closing:
            self._queue(frame)
        self._queue(StreamEnd(reason="cancelled" if cancelled else "complete",
                              tokens_used=answer.tokens if tokens_used is None else tokens_used,
                              finish_reason=finish_reason, usage=usage,
                              session_id=session_id or prompt.session_id or self.session_id,
                              message_index=index, request_id=prompt.request_id, receipt=receipt))
        self._finish()
        if index is not None:
            self.next_message_index = index + 1

    def _index_of(self, answer: Answer) -> int | None:
        if not self.extensions:
            return None
        for index in (answer.index, self.next_message_index, answer.event.prompt.message_index):
            if index is not None:
                return index
        return None

    def send_error(self, code: str, message: str, request_id: str | None = None, *,
                   details: dict[str, object] | None = None) -> None:
        """Refuse: ``error`` + ``stream_end`` for the prompt in progress, or for ``request_id`` with none.

        Raises:
            LocalProtocolError: ``request_id`` names another request than the one in progress.
        """
        if self.closed:
            return
        if self._answer is not None:
            rid = self._answer.event.request_id
            if request_id is not None and request_id != rid:
                raise LocalProtocolError(f"request {rid!r} is in progress, not {request_id!r}", code="NO_REQUEST")
            request_id = rid
            self._finish()
        self._refuse(code, message, request_id, details=details)

    def _finish(self) -> None:
        self._answer = None
        self._end_answer()
