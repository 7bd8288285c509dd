"""Pure tests of the stream accumulator and the session state table."""

from __future__ import annotations

import pytest

from fabstir.errors import LocalProtocolError, NodeError, TokenLimitExceededError
from fabstir.protocol import (
    TRANSITIONS,
    ErrorMessage,
    SessionState,
    SessionStateMachine,
    StreamAccumulator,
    StreamChunk,
    StreamEnd,
    TextDelta,
    Usage,
)


def test_accumulates_text_usage_and_timings() -> None:
    acc = StreamAccumulator("r1", started_at=10.0)
    assert acc.feed(StreamChunk("Once", request_id="r1"), now=10.5) == TextDelta("Once", 1)
    assert acc.feed(StreamChunk(" upon", request_id="r1"), now=10.75) == TextDelta(" upon", 1)
    assert acc.feed(StreamChunk("", tokens=0, request_id="r1"), now=10.8) is None
    assert not acc.done
    acc.feed(StreamEnd("complete", tokens_used=2, finish_reason="length", usage=Usage(4, 2, 512),
                       message_index=0, request_id="r1"), now=11.0)
    assert acc.done
    snap = acc.snapshot()
    assert snap.text == "Once upon"
    assert snap.ttft_s == pytest.approx(0.5) and snap.duration_s == pytest.approx(1.0)
    assert snap.completion_tokens == 2 and snap.tokens_per_s == pytest.approx(2.0)
    assert snap.finish_reason == "length" and snap.message_index == 0 and snap.error is None


def test_ignores_other_requests_and_frames_after_end() -> None:
    acc = StreamAccumulator("mine", started_at=0.0)
    assert acc.feed(StreamChunk("x", request_id="other"), now=1.0) is None
    acc.feed(StreamChunk("y"), now=1.0)  # no id: accepted (public node's cancel path)
    acc.feed(StreamEnd("cancelled", tokens_used=1, finish_reason="cancelled"), now=2.0)
    acc.feed(StreamChunk("z", request_id="mine"), now=3.0)
    assert acc.snapshot().text == "y"
    assert acc.snapshot().reason == "cancelled"


def test_error_then_stream_end_yields_typed_error() -> None:
    acc = StreamAccumulator("r", started_at=0.0)
    acc.feed(ErrorMessage("Prompt (900 tokens) exceeds", code="TOKEN_LIMIT_EXCEEDED", request_id="r",
                          details=(("prompt_tokens", 900),)), now=0.1)
    acc.feed(StreamEnd("error", request_id="r"), now=0.1)
    error = acc.snapshot().error
    assert isinstance(error, TokenLimitExceededError)
    assert error.details == {"prompt_tokens": 900}


def test_stream_end_error_without_message_is_still_an_error() -> None:
    acc = StreamAccumulator(None, started_at=0.0)
    acc.feed(StreamEnd("error"), now=1.0)
    assert isinstance(acc.snapshot().error, NodeError)


def test_no_usage_falls_back_to_tokens_used() -> None:
    acc = StreamAccumulator(None, started_at=0.0)
    acc.feed(StreamEnd("complete", tokens_used=0), now=1.0)
    assert acc.snapshot().completion_tokens == 0 and acc.snapshot().tokens_per_s == 0.0


def test_state_machine_happy_path() -> None:
    sm = SessionStateMachine()
    for target in (SessionState.CONNECTING, SessionState.CONNECTED, SessionState.READY,
                   SessionState.STREAMING, SessionState.CANCELLING, SessionState.READY,
                   SessionState.RECONNECTING, SessionState.CONNECTED, SessionState.CLOSED):
        sm.move(target)
    assert sm.state is SessionState.CLOSED


@pytest.mark.parametrize("start,target", [
    (SessionState.IDLE, SessionState.STREAMING),
    (SessionState.CONNECTING, SessionState.READY),
    (SessionState.CLOSED, SessionState.CONNECTING),
    (SessionState.RECONNECTING, SessionState.STREAMING),
])
def test_illegal_transitions_raise_and_keep_state(start: SessionState, target: SessionState) -> None:
    sm = SessionStateMachine(start)
    with pytest.raises(LocalProtocolError):
        sm.move(target)
    assert sm.state is start


def test_every_state_can_close_and_closed_is_final() -> None:
    for state, targets in TRANSITIONS.items():
        assert state is SessionState.CLOSED or SessionState.CLOSED in targets
    assert TRANSITIONS[SessionState.CLOSED] == frozenset()
