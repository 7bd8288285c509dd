"""``InferenceStream``: one answer, as an async iterator of text pieces and an async context manager.

Theory of operation. The stream sends its prompt through its :class:`~fabstir.sdk.session.Session`'s
:class:`~fabstir.protocol.client_connection.ClientConnection` and yields the text of every
``ChunkReceived`` event until the prompt's ``StreamEnded`` (the connection matches, opens and
accumulates the frames), using only the session's public methods. An encrypted answer whose
``stream_end`` does not follow its ``final`` chunk ends :data:`~fabstir.sdk.e2e.END_GRACE_S` later. A prompt that fails before any token arrived is retried once on a
new connection (or after a resume, for an index conflict); one that fails mid-answer raises
:class:`ConnectionClosedError`. A prompt refused with ``RATE_LIMITED`` or ``TOO_MANY_REQUESTS``
is sent again after the node's ``retry_after`` (nothing was generated or billed), up to
``RetryPolicy.attempts`` times. Leaving ``async with`` (or :meth:`InferenceStream.aclose`)
before the end cancels the answer on the node and waits for its end, so the session is free for
the next request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

from fabstir.errors import (
    ConnectError,
    ConnectionClosedError,
    FabstirError,
    InvalidMessageIndexError,
    NodeError,
    RemoteProtocolError,
    RequestTimeoutError,
    SessionError,
)
from fabstir.protocol import Feature, SessionState, StreamSnapshot
from fabstir.protocol.e2e import E2EError
from fabstir.protocol.events import ChunkReceived, StreamEnded
from fabstir.protocol.signing import Receipt, SignatureError, verify_receipt
from fabstir.sdk import e2e as _e2e
from fabstir.sdk.types import AnswerPart, InferenceResult, PromptOptions

if TYPE_CHECKING:
    from fabstir.sdk.recording import AnswerRecorder
    from fabstir.sdk.session import Session

__all__ = ["InferenceStream", "new_request_id"]

MAX_FAILOVERS = 3
"""Hosts one answer may move to after the one it started on."""

_RETRY_LATER = ("RATE_LIMITED", "TOO_MANY_REQUESTS")

_HOST_LOST = (ConnectionClosedError, RemoteProtocolError, RequestTimeoutError)
"""How an answer ends when its host died or stalled (not when it sent something we refuse)."""
"""Refusals that mean "nothing was generated, try again after ``retry_after``"."""


class InferenceStream:
    """Async iterator over one answer's text; :attr:`result` holds the :class:`InferenceResult` after."""

    def __init__(self, session: Session, prompt: str, options: PromptOptions, *, catch_up: bool = False) -> None:
        self._session = session
        self._prompt = prompt
        self._options = options
        self._catch_up = catch_up
        """After the first piece, the frames already received go out as one piece (a consumer that fell behind
        catches up at once instead of one piece per frame); see :meth:`Session.stream`."""
        self._result: InferenceResult | None = None
        self._iterator: AsyncGenerator[str, None] | None = None
        self._answer: AnswerRecorder | None = None
        self.tokens_received = 0
        """Tokens of the answer received so far (as the host counted them in its chunks), across hosts."""
        self._text: list[str] = []
        """Every piece of the answer received so far, across hosts."""
        self._parts: list[AnswerPart] = []
        """The parts of hosts that failed mid-answer."""
        self._part_start = 0
        """Offset of the current host's first token in the answer."""
        self._part_text: list[str] = []
        """The pieces the current host streamed."""
        self._prefix = ""
        """The answer as it stood when it last moved to another host (what the next host continues)."""

    @property
    def result(self) -> InferenceResult:
        if self._result is None:
            raise SessionError("the stream has not finished yet", code="STREAM_NOT_FINISHED")
        return self._result

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def __aenter__(self) -> InferenceStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop early: cancel the answer on the node and wait for its end (the node records the partial
        turn, so our copy does too, as after :meth:`Session.cancel`); the session is then free again."""
        iterator = self._iterator
        if iterator is None:
            return
        if self._result is None and self._session.active_request is not None:
            with contextlib.suppress(FabstirError):
                await self._session.cancel()
                async for _ in iterator:
                    pass
        await iterator.aclose()

    async def until_done(self) -> InferenceResult:
        """Consume the rest of the stream and return the result."""
        async for _ in self:
            pass
        return self.result

    async def _run(self) -> AsyncGenerator[str, None]:
        session = self._session
        session.active_request = request_id = new_request_id()
        recovered = rate_limited = failovers = 0
        recorder = session.sdk.recorder
        try:
            if recorder is not None:  # the prompt is stored before it is sent
                self._answer = recorder.answer(session.session_id)
                await self._answer.prompt(self._prompt, model=self._options.model, host=session.host_url)
            while True:
                received_any = False
                if session.state.state in (SessionState.STREAMING, SessionState.CANCELLING):
                    session.state.move(SessionState.READY)  # a refused attempt is over
                try:
                    await session.ensure_ready()
                    if self._options.max_tokens - self.tokens_received <= 0:  # the host died after the last token
                        self._finish_without_end(request_id)
                    else:
                        async with contextlib.aclosing(self._attempt(request_id)) as attempt:
                            async for piece in attempt:
                                received_any = True
                                yield piece
                    if self._answer is not None:
                        await self._store_end(self.result)
                    await session.countersign_usage()
                    await session.sdk.billing.record(self.result)
                    return
                except SignatureError:
                    raise  # a bad receipt is the host's fault, not the connection's: never retried
                except E2EError:
                    # a frame that does not decrypt: never retried; drop the socket so the host stops
                    await session.close_channel()
                    raise
                except (ConnectionClosedError, RemoteProtocolError, RequestTimeoutError) as exc:
                    # a host that died or stalls mid-answer: another host continues the answer (failover)
                    mid_answer = received_any or bool(self._parts)
                    stalled = isinstance(exc, RequestTimeoutError)
                    if (mid_answer or stalled or recovered >= 1) and session.can_fail_over \
                            and failovers < MAX_FAILOVERS:
                        failovers += 1
                        await self._fail_over(exc)
                        continue
                    if stalled:
                        raise
                    recovered += 1
                    if mid_answer or recovered > 1:
                        raise ConnectionClosedError(f"lost the host mid-answer: {exc.message}") from None
                    try:
                        await session.reconnect()
                    except ConnectError as lost:
                        if not session.can_fail_over or failovers >= MAX_FAILOVERS:
                            raise
                        failovers += 1
                        await self._fail_over(lost)
                except InvalidMessageIndexError:
                    recovered += 1
                    if received_any or recovered > 1:
                        raise
                    await session.resume_on_node()
                except NodeError as exc:
                    rate_limited += 1
                    if exc.code not in _RETRY_LATER or received_any or rate_limited > session.sdk.retry.attempts:
                        raise
                    await asyncio.sleep(_retry_after(exc, session.sdk.retry.max_delay))
        finally:
            if self._answer is not None:
                self._answer.abort()  # no-op after a finished answer; else stored as partial
            if self._result is None:
                session.persist_usage()  # an answer cut off: what it streamed still counts for disputes
            ended_by = sys.exc_info()[1]
            if self._result is None and self._text and isinstance(ended_by, _HOST_LOST) \
                    and not isinstance(ended_by, E2EError | SignatureError):
                # the host died or stalled and no other took over: what the user saw stays in the history
                session.record_turn(self._prompt, "".join(self._text), None)
            session.active_request = None
            if session.state.state in (SessionState.STREAMING, SessionState.CANCELLING):
                session.state.move(SessionState.READY)

    async def _fail_over(self, cause: FabstirError) -> None:
        """Move the session to another host after ``cause``; the next attempt continues the answer there.

        Raises:
            ConnectionClosedError: no host could take over (the reason in its message).
        """
        session = self._session
        streamed = self.tokens_received - self._part_start
        if streamed > 0 or self._part_text:
            self._parts.append(AnswerPart(session.host_url, self._part_start, streamed, "".join(self._part_text),
                                          job_id=session.job_id))
        self._part_start, self._part_text[:] = self.tokens_received, []
        self._prefix = "".join(self._text)
        try:
            await session.switch_host(failed=True)
        except FabstirError as exc:
            raise ConnectionClosedError(f"lost the host mid-answer ({cause.message}) and no other host took over: "
                                        f"{exc.message}") from None
        if self._prefix and Feature.CONTINUE_FROM not in session.features:
            raise ConnectionClosedError(f"lost the host mid-answer ({cause.message}); the next host, "
                                        f"{session.host_url}, cannot continue an answer (no continue-from)")

    async def _store_end(self, result: InferenceResult) -> None:
        assert self._answer is not None
        receipt = result.receipt.to_wire() if result.receipt is not None else None
        error = await self._answer.finish(result.text, receipt)
        if error is not None:
            self._result = dataclasses.replace(result, storage_error=error)

    async def _attempt(self, request_id: str) -> AsyncGenerator[str, None]:
        session = self._session
        channel = session.channel()
        channel.settle()
        request = await session.prompt_request(self._prompt, self._options)
        if self._prefix:  # another host streamed the start of this answer: continue it
            request = dataclasses.replace(request, continue_from=self._prefix,
                                          max_tokens=self._options.max_tokens - self.tokens_received)
        protocol = channel.protocol
        protocol.set_message_index(session.next_index)
        protocol.send_prompt(request, request_id=request_id, now=time.perf_counter())
        try:
            await channel.flush()
            session.state.move(SessionState.STREAMING)
            timeouts = session.sdk.timeouts
            timeout, between = timeouts.first_token, timeouts.between_frames
            # the per-token path: the frame that arrived (and, catching up, those already behind it) in, their
            # events out, their text as one piece; no lookups beyond these
            transport = channel.transport
            receive, drain = transport.receive, transport.drain
            feed, events = protocol.receive_frame, protocol.events_received
            clock, sealed, catch_up = time.perf_counter, protocol.encrypted, self._catch_up
            text_append, part_append = self._text.append, self._part_text.append
            while True:
                failure: Exception | None = None
                try:
                    feed(await receive(timeout), now=clock())
                except RequestTimeoutError:
                    if not protocol.final_seen:
                        raise
                    protocol.end_after_final(clock())  # no stream_end after the final chunk: finish anyway
                else:
                    for frame in drain() if catch_up and self._part_text else ():  # the first piece goes alone
                        try:
                            feed(frame, now=clock())
                        except Exception as exc:  # raised once the pieces before it are delivered
                            failure = exc
                            break
                piece: list[str] = []
                piece_tokens = 0
                for event in events():
                    if type(event) is ChunkReceived:
                        self.tokens_received += event.tokens
                        session.job_tokens += event.tokens
                        text_append(event.text)
                        part_append(event.text)
                        piece.append(event.text)
                        piece_tokens += event.tokens
                    elif type(event) is StreamEnded and event.request_id == request_id:
                        if piece:
                            yield self._deliver(piece, piece_tokens)
                        self._end(event.snapshot, request_id)
                        return
                if piece:
                    yield self._deliver(piece, piece_tokens)
                if failure is not None:
                    raise failure
                timeout = _e2e.END_GRACE_S if sealed and protocol.final_seen else between
        finally:
            if protocol.busy and protocol.awaiting == request_id:
                protocol.abandon()

    def _deliver(self, texts: list[str], tokens: int) -> str:
        """One piece for the consumer from the chunks taken together; the recorder stores it as delivered, so a
        stored partial answer ends where a piece the user saw ended."""
        text = texts[0] if len(texts) == 1 else "".join(texts)
        if self._answer is not None:
            self._answer.add(text, tokens)
        return text

    def _end(self, snapshot: StreamSnapshot, request_id: str) -> None:
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
        greeting = session.channel().protocol.greeting
        announced = greeting.signing_key if greeting is not None else None
        verify_receipt(receipt, text=snapshot.text, tokens=snapshot.tokens_used,
                       expected_key=session.host_signing_key or announced)
        if receipt.session_id != session.wire_session_id:
            raise SignatureError("receipt names another session", code="RECEIPT_INVALID")
        return receipt

    def _finish(self, snapshot: StreamSnapshot, request_id: str) -> None:
        receipt = self._verified_receipt(snapshot)
        session = self._session
        earlier = self._parts
        text = self._prefix + snapshot.text
        parts = (*earlier, AnswerPart(session.host_url, self._part_start, snapshot.tokens_used, snapshot.text,
                                      receipt, session.job_id))
        usage = snapshot.usage
        if earlier and usage is not None:  # the answer's tokens, all hosts together
            usage = dataclasses.replace(usage, completion_tokens=self._part_start + usage.completion_tokens)
        session.record_turn(self._prompt, text, snapshot.message_index)
        session.usage.add(snapshot.text, snapshot.tokens_used)  # this host's answer, as its node records it
        self._result = InferenceResult(
            text=text,
            finish_reason=snapshot.finish_reason,
            usage=usage,
            tokens_used=self._part_start + snapshot.tokens_used,
            message_index=snapshot.message_index,
            ttft_ms=None if snapshot.ttft_s is None else snapshot.ttft_s * 1000.0,
            tokens_per_s=snapshot.tokens_per_s,
            session_id=session.session_id,
            request_id=request_id,
            receipt=receipt,
            parts=parts,
        )

    def _finish_without_end(self, request_id: str) -> None:
        """Every token asked for arrived before the host died: the answer is whole without another host."""
        session = self._session
        text = "".join(self._text)
        session.record_turn(self._prompt, text, None)
        self._result = InferenceResult(
            text=text, finish_reason="length", usage=None, tokens_used=self.tokens_received, message_index=None,
            ttft_ms=None, tokens_per_s=0.0, session_id=session.session_id, request_id=request_id,
            parts=tuple(self._parts))


def _retry_after(error: NodeError, cap: float) -> float:
    """The node's ``retry_after`` (seconds), within ``[0.05, cap]``; nothing is billed for a refused prompt."""
    value = error.details.get("retry_after")
    seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 1.0
    return min(max(seconds, 0.05), cap)


def new_request_id() -> str:
    """A fresh request ``id`` (16 hex digits)."""
    return uuid.uuid4().hex[:16]
