"""Property tests: no input makes the parsers raise anything but the coded protocol error."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir.errors import RemoteProtocolError
from fabstir.protocol import ErrorCode, parse_client_message, parse_server_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
    max_leaves=30,
)
known_types = st.sampled_from(["session_init", "prompt", "inference", "stream_cancel", "session_resume",
                               "connected", "session_init_ack", "session_resumed", "stream_chunk",
                               "stream_end", "error"])
keys = st.sampled_from(["id", "session_id", "sessionId", "job_id", "jobId", "chain_id", "prompt", "request",
                        "max_tokens", "temperature", "conversation_context", "message_index", "content",
                        "tokens", "usage", "reason", "features", "code", "message", "last_message_index"])
messages = st.builds(lambda t, extra: {"type": t, **extra}, known_types,
                     st.dictionaries(keys, json_values, max_size=8))
nested_requests = st.builds(lambda t, req: {"type": t, "request": req}, known_types,
                            st.dictionaries(keys, json_values, max_size=8))
ERROR_CODES = set(ErrorCode)


def assert_only_protocol_errors(data: str | bytes) -> None:
    for parse in (parse_client_message, parse_server_message):
        try:
            parse(data)
        except RemoteProtocolError as exc:
            assert exc.code in ERROR_CODES


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    assert_only_protocol_errors(data)
    assert_only_protocol_errors(data.decode("utf-8", "replace"))


@settings(max_examples=400)
@given(json_values)
def test_arbitrary_json(value: object) -> None:
    assert_only_protocol_errors(json.dumps(value))


@settings(max_examples=300)
@given(messages | nested_requests)
def test_message_shaped_json(value: dict[str, object]) -> None:
    assert_only_protocol_errors(json.dumps(value))
