"""Pure tests of frame parsing: bytes in, typed messages or coded errors out."""

from __future__ import annotations

import json

import pytest

from fabstir.errors import RemoteProtocolError
from fabstir.protocol import (
    ChatTurn,
    ErrorCode,
    ErrorMessage,
    InferenceRequest,
    PromptMessage,
    SessionInit,
    SessionInitAck,
    SessionResume,
    StreamCancel,
    StreamChunk,
    StreamEnd,
    UnknownMessage,
    Usage,
    encode_message,
    parse_client_message,
    parse_server_message,
)


def client(obj: object) -> object:
    return parse_client_message(json.dumps(obj))


def code_of(data: str | bytes, **kw: int) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        parse_client_message(data, **kw)
    return info.value.code


class TestSessionInit:
    def test_public_sdk_form(self) -> None:
        msg = client({"type": "session_init", "session_id": "139", "jobId": "139", "chain_id": 84532,
                      "user_address": "0xabc", "id": "r1"})
        assert msg == SessionInit(session_id="139", job_id=139, chain_id=84532, request_id="r1")

    @pytest.mark.parametrize("job", [139, "139", "139n"])
    def test_job_id_aliases(self, job: object) -> None:
        msg = client({"type": "session_init", "sessionId": "s", "job_id": job, "chainId": 5611})
        assert msg == SessionInit(session_id="s", job_id=139, chain_id=5611)

    def test_session_id_falls_back_to_job_id(self) -> None:
        assert client({"type": "session_init", "jobId": 7}) == SessionInit(session_id="7", job_id=7)

    def test_missing_session_id(self) -> None:
        assert code_of('{"type":"session_init"}') == ErrorCode.MISSING_SESSION_ID

    def test_bad_job_id(self) -> None:
        assert code_of('{"type":"session_init","session_id":"1","job_id":"abc"}') == ErrorCode.INVALID_MESSAGE
        assert code_of('{"type":"session_init","session_id":"1","job_id":-4}') == ErrorCode.INVALID_MESSAGE
        assert code_of('{"type":"session_init","session_id":"1","job_id":true}') == ErrorCode.INVALID_MESSAGE


class TestPrompt:
    def test_with_request(self) -> None:
        msg = client({"type": "prompt", "chain_id": 84532, "jobId": "139", "prompt": "hi", "id": "p1",
                      "request": {"model": "m", "prompt": "hi", "max_tokens": 12, "temperature": 0.0,
                                  "stream": True,
                                  "conversation_context": [{"role": "user", "content": "a"},
                                                           {"role": "assistant", "content": "b"}]}})
        assert isinstance(msg, PromptMessage)
        assert msg.request_id == "p1" and msg.job_id == 139 and msg.chain_id == 84532
        assert msg.request.max_tokens == 12 and msg.request.temperature == 0.0
        assert msg.request.conversation_context == (ChatTurn("user", "a"), ChatTurn("assistant", "b"))

    def test_top_level_defaults(self) -> None:
        msg = client({"type": "prompt", "prompt": "hello", "message_index": 3})
        assert isinstance(msg, PromptMessage)
        assert msg.request == InferenceRequest(prompt="hello", max_tokens=4000, temperature=0.7)
        assert msg.message_index == 3

    def test_content_field_is_not_read(self) -> None:
        assert code_of('{"type":"prompt","content":"hi"}') == ErrorCode.VALIDATION_ERROR

    @pytest.mark.parametrize("request_", [
        {"prompt": "x"},  # nested request needs max_tokens
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": 5, "temperature": 3},
        {"prompt": "", "max_tokens": 5},
        {"prompt": "x", "max_tokens": 5, "conversation_context": [{"role": "bot", "content": "x"}]},
        {"prompt": "x", "max_tokens": 5, "stream": "yes"},
    ])
    def test_invalid_request(self, request_: dict[str, object]) -> None:
        err = code_of(json.dumps({"type": "prompt", "id": 9, "request": request_}))
        assert err == ErrorCode.VALIDATION_ERROR

    def test_error_carries_request_id(self) -> None:
        with pytest.raises(RemoteProtocolError) as info:
            parse_client_message('{"type":"prompt","id":"abc","prompt":""}')
        assert info.value.request_id == "abc"

    def test_inference_form(self) -> None:
        msg = client({"type": "inference", "request": {"model": "m", "prompt": "p", "max_tokens": 50,
                                                        "stream": True, "job_id": 139}})
        assert isinstance(msg, PromptMessage)
        assert msg.wire_type == "inference" and msg.job_id == 139

    def test_round_trip(self) -> None:
        original = PromptMessage(request=InferenceRequest(prompt="hi", model="m", max_tokens=8, temperature=0.0),
                                 session_id="1", job_id=1, message_index=0, request_id="x")
        again = parse_client_message(encode_message(original))
        assert isinstance(again, PromptMessage)
        assert again.request.prompt == "hi" and again.message_index == 0 and again.job_id == 1


class TestOtherClientMessages:
    def test_stream_cancel(self) -> None:
        assert client({"type": "stream_cancel", "session_id": "139"}) == StreamCancel(session_id="139")

    def test_session_resume(self) -> None:
        msg = client({"type": "session_resume", "session_id": "s", "job_id": 1, "last_message_index": 4,
                      "conversation_context": [{"role": "user", "content": "q"}]})
        assert msg == SessionResume(session_id="s", job_id=1, last_message_index=4,
                                    conversation_context=(ChatTurn("user", "q"),))

    @pytest.mark.parametrize("data,code", [
        (b'{"type":"prompt"}', ErrorCode.BINARY_FRAME),
        ("{not json", ErrorCode.INVALID_JSON),
        ("[1,2]", ErrorCode.INVALID_MESSAGE),
        ('{"no":"type"}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"batch_prompt"}', ErrorCode.UNKNOWN_MESSAGE_TYPE),
        ("[" * 100000, ErrorCode.INVALID_JSON),
    ])
    def test_malformed(self, data: str | bytes, code: str) -> None:
        assert code_of(data) == code

    def test_oversized(self) -> None:
        frame = json.dumps({"type": "prompt", "prompt": "é" * 600}, ensure_ascii=False)
        assert code_of(frame, max_bytes=1000) == ErrorCode.FRAME_TOO_LARGE
        assert isinstance(parse_client_message(frame, max_bytes=2000), PromptMessage)


class TestServerMessages:
    def test_stream_end_with_usage(self) -> None:
        msg = parse_server_message('{"type":"stream_end","reason":"complete","tokens_used":3,"id":"a",'
                                   '"finish_reason":"stop","usage":{"prompt_tokens":5,"completion_tokens":3,'
                                   '"total_tokens":8,"context_window_size":512},"vlm_tokens":0}')
        assert msg == StreamEnd(reason="complete", tokens_used=3, finish_reason="stop",
                                usage=Usage(5, 3, 512), request_id="a")

    def test_both_error_shapes(self) -> None:
        bare = parse_server_message('{"type":"error","error":"Rate limit exceeded","id":"1"}')
        coded = parse_server_message('{"type":"error","code":"TOKEN_LIMIT_EXCEEDED","message":"too long",'
                                     '"prompt_tokens":900,"context_window_size":512}')
        assert bare == ErrorMessage(message="Rate limit exceeded", request_id="1")
        assert isinstance(coded, ErrorMessage) and coded.code == "TOKEN_LIMIT_EXCEEDED"
        assert dict(coded.details) == {"prompt_tokens": 900, "context_window_size": 512}

    def test_unknown_type_is_kept(self) -> None:
        msg = parse_server_message('{"type":"checkpoint","tokens":1000}')
        assert msg == UnknownMessage(type="checkpoint", data={"type": "checkpoint", "tokens": 1000})

    def test_public_ack(self) -> None:
        msg = parse_server_message('{"type":"session_init_ack","status":"success","session_id":"139",'
                                   '"job_id":null,"chain_id":null,"message":"ok"}')
        assert msg == SessionInitAck(session_id="139", message="ok")

    @pytest.mark.parametrize("message", [
        StreamChunk(content="Paris", request_id="r"),
        StreamChunk(content="", tokens=0),
        StreamEnd(reason="cancelled", tokens_used=4, finish_reason="cancelled", message_index=2),
        ErrorMessage(message="bad", code="VALIDATION_ERROR", request_id="z", details=(("field", "prompt"),)),
        SessionInitAck(session_id="1", job_id=1, chain_id=31337, features=("session-resume",), request_id="q"),
    ])
    def test_round_trip(self, message: object) -> None:
        assert parse_server_message(encode_message(message)) == message  # type: ignore[arg-type]


def test_deep_nesting_is_refused_even_with_a_huge_recursion_limit() -> None:
    """py-evm raises the recursion limit to 100,000; json.loads would then overflow the C stack."""
    import sys

    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 100_000))
    try:
        for frame in ("[" * 300_000, '{"a":' * 70 + "1" + "}" * 70, '{"type":"prompt","x":' + "[" * 65 + "]" * 65 + "}"):
            with pytest.raises(RemoteProtocolError) as info:
                parse_client_message(frame, max_bytes=1 << 20)
            assert info.value.code == ErrorCode.INVALID_JSON
        nested_ok = '{"type":"stream_cancel","x":' + "[" * 60 + "]" * 60 + "}"
        assert isinstance(parse_client_message(nested_ok), StreamCancel)
        strings_do_not_count = json.dumps({"type": "prompt", "prompt": "[" * 5000})
        assert isinstance(parse_client_message(strings_do_not_count), PromptMessage)
    finally:
        sys.setrecursionlimit(previous)
