"""The SDK's end of ``/v1/ws``, sans I/O: the SDK's requests in, frames out; node frames in, events out.

One :class:`ClientConnection` serves one session over one socket (a reconnect makes a new
one, seeded with the client's ``message_index``). Rules, on top of those in
:mod:`fabstir.protocol.connection`:

Rule C1 (states). It starts ``CONNECTED`` (the socket is open; the node's ``connected``
greeting, if any, is an event and sets :attr:`features`). ``session_init_ack`` or
``session_resumed`` → ``READY``. :meth:`send_prompt` → ``STREAMING``, :meth:`send_cancel` →
``CANCELLING``, the prompt's ``stream_end`` → ``READY`` (``CONNECTED`` if no session was acknowledged).

Rule C2 (one request at a time). At most one request awaits its answer: a prompt until its
``stream_end``; any other request until its reply, or the ``stream_end`` after its ``error``.
Sending another meanwhile raises ``LocalProtocolError`` (``REQUEST_IN_PROGRESS``) and changes
nothing. :meth:`send_cancel` is legal once per prompt, while it streams; :meth:`send_ping`
always. :meth:`abandon` gives up on the awaited request (after a timeout).

Rule C3 (matching). A frame belongs to the awaited request when it carries its ``id`` or no
``id`` at all (the public node omits it on the ``stream_end`` after a cancel). A prompt ends
with exactly one :class:`StreamEnded` (``snapshot.error`` set when it was refused); another
request with its reply (the message itself is the event) or one :class:`RequestRefused`. An
``error`` that belongs to nothing awaited is :class:`ErrorReceived`; stray stream frames are dropped.

Rule C4 (``message_index``). When the node advertises ``server-context`` and
``message-index`` each prompt carries :attr:`next_message_index`. A prompt that ends without
error (complete or cancelled) sets it to (its ``stream_end``'s index, else the one sent) + 1;
``session_resumed`` sets it to the node's; :meth:`set_message_index` sets it from a history.
An ack's ``message_index`` is reported, never adopted: when it differs, the node lost the
context and the SDK resumes.

Rule C5 (encryption). :meth:`send_encrypted_init` offers a fresh session key; its ack makes
it current, a refusal drops it. With a current key prompts go as ``encrypted_message`` (the
inner JSON, zlib-compressed when the node advertises ``e2e-compression``) and resumes sealed;
``encrypted_chunk`` frames are opened strictly in order (``chunk_0, chunk_1 …``) and become
:class:`ChunkReceived`; ``encrypted_response`` gives the finish reason; ``stream_end`` stays
plaintext. If it never comes after the ``final`` chunk, :meth:`end_after_final` ends the answer.

Rule C6 (position). :attr:`position` is the text and token count received so far of the
prompt in progress (or the last one): where a resumed stream would continue.

Rule C7 (bad frames). :meth:`receive_frame` raises ``RemoteProtocolError`` for a frame that
does not parse, or a sealed frame on a plaintext prompt, and ``E2EError`` for one that does
not open or comes out of order. The frame changes nothing; drop the connection.

Rule C8. After :meth:`close` the ``send_*`` calls raise ``LocalProtocolError``, received
frames are dropped, and the keys are zeroed.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Sequence

from fabstir.errors import LocalProtocolError
from fabstir.protocol.client_intake import Awaited, ClientIntake
from fabstir.protocol.codes import Feature
from fabstir.protocol.e2e_keys import KEY_SIZE, SessionInitPayload
from fabstir.protocol.messages import (
    AuthChallengeRequest,
    AuthRequest,
    ChatTurn,
    ClientMessage,
    EncryptedMessage,
    EncryptedSessionInit,
    EncryptedSessionResume,
    HistoryRequest,
    InferenceRequest,
    JSONObject,
    Ping,
    PromptMessage,
    SessionClear,
    SessionInit,
    SessionResume,
    StreamCancel,
    StreamEnd,
    TokenRefresh,
    UsageAcknowledgement,
)
from fabstir.protocol.parse import _dumps
from fabstir.protocol.state import SessionState
from fabstir.protocol.stream import StreamAccumulator

__all__ = ["ClientConnection", "ControlRequest"]

ControlRequest = AuthChallengeRequest | AuthRequest | TokenRefresh | HistoryRequest | SessionClear
"""Requests :meth:`ClientConnection.send_request` sends as given."""


class ClientConnection(ClientIntake):
    """One session's socket, seen from the SDK; see the module docstring.

    Args:
        session_id, job_id, chain_id: the session every request names.
        message_index: the index of the next prompt (the user turns in the client's history).
        sign: turns each outgoing wire object into its signed form (``sig``), reading the clock itself.
        id_prefix: request ids default to ``<prefix>1``, ``<prefix>2`` … (unique per connection).
    """

    def __init__(self, session_id: str | None = None, *, job_id: int | None = None, chain_id: int | None = None,
                 message_index: int = 0, sign: Callable[[JSONObject], JSONObject] | None = None,
                 id_prefix: str = "r") -> None:
        super().__init__(message_index)
        self.session_id, self.job_id, self.chain_id = session_id, job_id, chain_id
        self._sign = sign
        self._ids = (f"{id_prefix}{n}" for n in itertools.count(1))

    @property
    def server_context(self) -> bool:
        """The node keeps the conversation and checks ``message_index`` (Rule C4)."""
        return Feature.SERVER_CONTEXT in self.features and Feature.MESSAGE_INDEX in self.features

    @property
    def encrypted(self) -> bool:
        """A session key is current: prompts and resumes are sealed (Rule C5)."""
        return self._e2e.current is not None and self._e2e.current.active

    @property
    def key_fresh(self) -> bool:
        """The current key has sealed nothing yet."""
        return self._e2e.fresh

    @property
    def final_seen(self) -> bool:
        """The encrypted answer in progress got its ``final`` chunk or ``encrypted_response`` (Rule C5:
        start the grace timer for :meth:`end_after_final`)."""
        awaited = self._awaited
        return awaited is not None and awaited.encrypted and awaited.accumulator is not None and self._e2e.final_seen

    @property
    def awaiting(self) -> str | None:
        """The ``id`` of the request awaiting its answer (``None`` also when it has none: see :attr:`busy`)."""
        return self._awaited.request_id if self._awaited is not None else None

    @property
    def busy(self) -> bool:
        """A request awaits its answer (Rule C2)."""
        return self._awaited is not None

    # --- requests out -------------------------------------------------------------------

    def _check_free(self, action: str) -> None:
        self._require_open(action)
        if self._awaited is not None:
            raise LocalProtocolError(f"cannot {action}: request {self._awaited.request_id!r} awaits its answer",
                                     code="REQUEST_IN_PROGRESS")

    def _session(self, action: str) -> str:
        if self.session_id is None:
            raise LocalProtocolError(f"cannot {action} without a session_id", code="MISSING_SESSION_ID")
        return self.session_id

    def _send(self, message: ClientMessage, awaited: Awaited | None = None) -> str:
        if self._sign is None:
            self._queue(message)
        else:
            self._queue_text(_dumps(self._sign(message.to_wire())))
        if awaited is not None:
            self._awaited = awaited
        return message.request_id or ""

    def send_init(self, *, session_secret: str | None = None, request_id: str | None = None) -> str:
        """``session_init``; returns its ``id``. Raises LocalProtocolError (Rules C2, C8)."""
        self._check_free("send session_init")
        message = SessionInit(self._session("send session_init"), self.job_id, self.chain_id,
                              request_id or next(self._ids), session_secret)
        return self._send(message, Awaited(message))

    def send_encrypted_init(self, host_public_key: str | bytes, client_key: bytes, *, model: str,
                            price_per_token: int = 0, session_key: bytes | None = None,
                            request_id: str | None = None) -> str:
        """``encrypted_session_init`` offering a fresh session key (Rule C5); returns its ``id``.

        Raises:
            LocalProtocolError: Rules C2, C8, or no session id.
            E2EError: a bad host key or init field.
        """
        self._check_free("send encrypted_session_init")
        session_id = self._session("send encrypted_session_init")
        init = SessionInitPayload(job_id=str(self.job_id) if self.job_id is not None else session_id,
                                  model_name=model, session_key=session_key or os.urandom(KEY_SIZE),
                                  price_per_token=price_per_token)
        payload = self._e2e.offer(host_public_key, client_key, init)
        message = EncryptedSessionInit(payload=payload, session_id=session_id, job_id=self.job_id,
                                       chain_id=self.chain_id, request_id=request_id or next(self._ids))
        return self._send(message, Awaited(message, encrypted=True))

    def send_resume(self, conversation_context: Sequence[ChatTurn], last_message_index: int | None = None, *,
                    session_secret: str | None = None, request_id: str | None = None) -> str:
        """``session_resume`` (sealed under the current key, if any); returns its ``id``.

        ``last_message_index`` defaults to :attr:`next_message_index` - 1.
        """
        self._check_free("send session_resume")
        session_id = self._session("send session_resume")
        last = self.next_message_index - 1 if last_message_index is None else last_message_index
        rid = request_id or next(self._ids)
        message: SessionResume | EncryptedSessionResume
        if self.encrypted:
            payload = self._e2e.seal_resume(conversation_context, last, self.features)
            message = EncryptedSessionResume(session_id, payload, self.job_id, self.chain_id, rid)
        else:
            message = SessionResume(session_id, tuple(conversation_context), last, self.job_id, self.chain_id, rid,
                                    session_secret)
        return self._send(message, Awaited(message))

    def send_request(self, message: ControlRequest) -> str:
        """``auth_challenge``, ``auth``, ``token_refresh``, ``get_history`` or ``session_clear``; returns its ``id``
        (one is assigned when the message has none)."""
        self._check_free(f"send {type(message).__name__}")
        if message.request_id is None:
            message = dataclasses.replace(message, request_id=next(self._ids))
        return self._send(message, Awaited(message))

    def send_prompt(self, request: InferenceRequest, *, request_id: str | None = None, now: float = 0.0) -> str:
        """One chat turn (sealed under the current key, if any); returns its ``id``.

        The caller puts ``conversation_context`` in ``request`` when the node keeps no context.
        ``now`` starts the answer's clock (TTFT and duration in the snapshot).
        """
        self._check_free("send a prompt")
        rid = request_id or next(self._ids)
        index = self.next_message_index if self.server_context else None
        message: PromptMessage | EncryptedMessage
        if self.encrypted:
            payload = self._e2e.seal_prompt(request, index, self.features)
            message = EncryptedMessage(payload=payload, session_id=self.session_id, request_id=rid)
        else:
            message = PromptMessage(request=request, session_id=self.session_id, job_id=self.job_id,
                                    chain_id=self.chain_id, message_index=index, request_id=rid)
        awaited = Awaited(message, StreamAccumulator(rid, now), self.encrypted, index)
        self._send(message, awaited)
        self._last_prompt = awaited
        self._start_answer()
        return rid

    def send_cancel(self, reason: str = "user_cancelled") -> None:
        """``stream_cancel`` for the prompt in progress. Raises LocalProtocolError: none streams, or cancelled."""
        self._require_open("cancel")
        if self.state is not SessionState.STREAMING:
            raise LocalProtocolError("nothing to cancel: no prompt is streaming", code="NO_REQUEST")
        self._state.move(SessionState.CANCELLING)
        self._send(StreamCancel(self.session_id, reason))

    def send_usage_ack(self, message: UsageAcknowledgement) -> None:
        """``usage_ack`` (feature ``usage-countersign``): the depositor's countersignature; nothing answers it and
        it may go while an answer streams."""
        self._require_open("acknowledge usage")
        self._send(message)

    def send_ping(self) -> None:
        """The public SDK's keep-alive (the node ignores it)."""
        self._require_open("ping")
        self._send(Ping())

    def set_message_index(self, index: int) -> None:
        """The next prompt's index (from a restored history). Raises LocalProtocolError while a prompt streams."""
        if self.streaming:
            raise LocalProtocolError("cannot renumber while a prompt streams", code="REQUEST_IN_PROGRESS")
        self.next_message_index = index

    def abandon(self) -> None:
        """Give up on the awaited request (Rule C2, after a timeout): its late stream frames are dropped, a late
        ``error`` becomes :class:`ErrorReceived`; an offered key is dropped."""
        awaited, self._awaited = self._awaited, None
        if awaited is None:
            return
        if awaited.encrypted and awaited.accumulator is None:
            self._e2e.drop_offer()
        elif awaited.encrypted:
            self._e2e.end_response()
        self._end_answer()

    def end_after_final(self, now: float = 0.0) -> None:
        """Rule C5: the ``final`` chunk came and ``stream_end`` did not; end the answer as complete.

        Raises:
            LocalProtocolError: no encrypted answer in progress has seen its final frame.
        """
        awaited = self._awaited
        if awaited is None or awaited.accumulator is None or not self.final_seen:
            raise LocalProtocolError("no encrypted answer has seen its final chunk", code="NO_REQUEST")
        end = StreamEnd(reason="complete", tokens_used=awaited.tokens, finish_reason=self._e2e.finish_reason,
                        request_id=awaited.request_id)
        self._on_answer(awaited, awaited.accumulator, end, now)

    def close(self) -> None:
        """Rule C8."""
        super().close()
        self._awaited = None
        self._e2e.forget()
