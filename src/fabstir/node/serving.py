"""Generating one admitted answer: the part every serving path shares (WebSocket, encrypted, HTTP, SSE).

Every path runs the same pipeline: admit (:mod:`fabstir.node.admission`) -> limit
(:func:`check_rate`) -> prepare -> stream -> account (:func:`generate`) -> receipt
(:func:`receipt_for`).

Theory of operation. After :mod:`fabstir.node.admission` admitted the caller, a path calls
:func:`generate` with the request, the session's history and a callback that puts one piece
on its wire. :func:`generate` then, in this order: clamps ``max_tokens`` to what the job's
deposit still covers (``DEPOSIT_EXHAUSTED`` at zero), fits the prompt into the window
(``TOKEN_LIMIT_EXCEEDED``; text the engine cannot tokenize is ``INVALID_PROMPT``), counts
the answer against the client's cap (``TOO_MANY_REQUESTS``), waits its turn at the engines
(round robin over clients), and streams. Every piece is billed as it goes out
(:meth:`BillingService.record_served`) and the answer's end is recorded whatever way it ends,
so a paid token is billed exactly once on every path, and only tokens the client was sent (a stop
sequence the engine generated but never showed is not billed; the receipt's count is the bill). Any failure leaves as a
:class:`~fabstir.errors.FabstirError` with a code; the caller turns it into its wire's error.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence

from fabstir.errors import FabstirError, NodeError
from fabstir.node.admission import AdmittedJob
from fabstir.node.engines.base import Finished, TokenPiece
from fabstir.node.inference import PreparedPrompt
from fabstir.node.runtime import NodeRuntime
from fabstir.protocol import ChatTurn, ErrorCode, InferenceRequest
from fabstir.protocol.signing import Receipt, sign_receipt, text_digest

__all__ = ["Answer", "as_coded_error", "check_rate", "generate", "open_billing", "receipt_for"]

log = logging.getLogger("fabstir.node.serving")

PieceSink = Callable[[str, int], Awaitable[None]]
"""Puts one piece of text (and the tokens it took) on the wire."""


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One generated answer."""

    text: str
    finished: Finished
    prepared: PreparedPrompt
    tokens_sent: int
    """Tokens in the pieces handed to the wire (stop tokens, generated but never shown, excluded)."""


def check_rate(runtime: NodeRuntime, client: str, session_id: str | None) -> None:
    """The per-client and per-session request limits.

    Raises:
        NodeError: RATE_LIMITED, with ``retry_after`` (seconds) in its details.
    """
    assert runtime.limiter is not None
    wait = runtime.limiter.check(client, session_id)
    if wait > 0:
        raise NodeError(f"too many requests; retry after {wait:.2f} s", code=ErrorCode.RATE_LIMITED,
                        details={"retry_after": round(wait, 3)})


def open_billing(runtime: NodeRuntime, admitted: AdmittedJob) -> None:
    """Start (or continue) billing ``admitted``'s job on this node."""
    assert runtime.billing is not None
    runtime.billing.open_job(admitted.job_id, admitted.max_tokens, admitted.proof_interval)


def prepare(runtime: NodeRuntime, request: InferenceRequest, history: Sequence[ChatTurn]) -> PreparedPrompt:
    """Fit the request into the window.

    Raises:
        TokenLimitExceededError: it cannot fit.
        NodeError: INVALID_PROMPT, the engine cannot tokenize its text.
    """
    try:
        return runtime.inference.prepare(request, history)
    except FabstirError:
        raise
    except (UnicodeError, ValueError, RuntimeError, TypeError) as exc:
        raise NodeError(f"the prompt holds text the model cannot tokenize ({type(exc).__name__})",
                        code=ErrorCode.INVALID_PROMPT) from None


async def generate(runtime: NodeRuntime, admitted: AdmittedJob | None, request: InferenceRequest,
                   history: Sequence[ChatTurn], *, client: str, cancel: threading.Event,
                   on_piece: PieceSink, check: Callable[[], None] | None = None, coalesce: bool = False) -> Answer:
    """Generate and stream one answer; see the module docstring.

    ``check`` runs before the prompt is fitted (a path's own precondition, such as the WebSocket
    message index). With ``coalesce``, a piece handed to ``on_piece`` may join several the engine
    produced while the previous one was going out (its ``tokens`` is their sum, and that is what is
    billed); see :meth:`fabstir.node.engines.pool.EnginePool.stream`.

    Raises:
        NodeError: DEPOSIT_EXHAUSTED, TOKEN_LIMIT_EXCEEDED, INVALID_PROMPT, TOO_MANY_REQUESTS,
            or what ``check`` raises.
        EngineError: generation failed.
        FabstirError: ``on_piece`` failed (an encryption error, say).
    """
    billing = runtime.billing if admitted is not None else None
    job_id = admitted.job_id if admitted is not None else 0
    if billing is not None:
        remaining = billing.remaining_tokens(job_id)
        if remaining <= 0:
            raise NodeError(f"job {job_id}'s deposit is used up; open a new session",
                            code=ErrorCode.DEPOSIT_EXHAUSTED)
        request = dataclasses.replace(request, max_tokens=min(request.max_tokens, remaining))
    if check is not None:
        check()
    prepared = prepare(runtime, request, history)
    assert runtime.concurrency is not None
    parts: list[str] = []
    sent = 0
    finished = Finished("cancelled", 0)
    with runtime.concurrency.hold(client):
        try:
            async with runtime.inference.open_stream(prepared, cancel, client=client, coalesce=coalesce) as events:
                async for event in events:
                    if isinstance(event, TokenPiece):
                        parts.append(event.text)
                        await on_piece(event.text, event.tokens)
                        sent += event.tokens
                        if billing is not None:
                            billing.record_served(job_id, event.tokens)
                    else:
                        finished = event
        finally:
            if billing is not None:  # billed: exactly the tokens put on the wire, which the receipt states
                billing.end_response(job_id)
    return Answer("".join(parts), finished, prepared, sent)


def as_coded_error(exc: BaseException, where: str) -> FabstirError:
    """Any failure while serving as a coded error (unexpected ones are logged with their traceback)."""
    if isinstance(exc, FabstirError):
        return exc
    log.exception("unexpected failure while serving %s", where, exc_info=exc)
    return NodeError(f"the node failed while serving this request ({type(exc).__name__})",
                     code=ErrorCode.INTERNAL_ERROR)


def receipt_for(runtime: NodeRuntime, session_id: str, index: int, answer: Answer,
                admitted: AdmittedJob | None) -> dict[str, object]:
    """The host's signed receipt for an answer: tokens sent, price, and the SHA-256 of the text; from an engine
    that fingerprints, the answer's activation fingerprint and the SHA-256 of the rendered prompt."""
    billing = runtime.billing
    fingerprint = answer.finished.fingerprint
    receipt = Receipt(
        host=billing.host.address if billing is not None else "",
        model=runtime.inference.model_id,
        session_id=session_id,
        message_index=index,
        tokens=answer.tokens_sent,
        price_per_token=admitted.price_per_token if admitted is not None else None,
        text_sha256=text_digest(answer.text),
        key="",
        fingerprint=fingerprint.to_text() if fingerprint is not None else None,
        prompt_sha256=text_digest(answer.prepared.fitted.text) if fingerprint is not None else None,
    )
    return sign_receipt(receipt, runtime.signing_key).to_wire()
