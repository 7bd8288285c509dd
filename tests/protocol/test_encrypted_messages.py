"""Pure tests of the encrypted message types, the inner request and the inner compression format."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir.errors import RemoteProtocolError
from fabstir.protocol import (
    ChatTurn,
    Connected,
    EncryptedChunk,
    EncryptedMessage,
    EncryptedResponse,
    EncryptedSessionInit,
    EncryptedSessionResume,
    ErrorCode,
    InferenceRequest,
    PromptMessage,
    SessionInitAck,
    SessionResume,
    decode_inner_payload,
    encode_inner_payload,
    encode_message,
    encrypted_request_body,
    encrypted_resume_body,
    parse_client_message,
    parse_encrypted_request,
    parse_encrypted_resume,
    parse_server_message,
)
from fabstir.protocol.inner import INNER_COMPRESSION_THRESHOLD

PAYLOAD = {"ciphertextHex": "ab", "nonceHex": "00" * 24, "aadHex": "6d6573736167655f30"}


def client(obj: object) -> object:
    return parse_client_message(json.dumps(obj))


def code_of(obj: object) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        parse_client_message(json.dumps(obj))
    return info.value.code


class TestClientMessages:
    def test_encrypted_session_init(self) -> None:
        frame = {"type": "encrypted_session_init", "session_id": "139", "job_id": "139", "chain_id": 84532,
                 "id": "i", "payload": {"ephPubHex": "02", "extra": 1}}
        assert client(frame) == EncryptedSessionInit(payload={"ephPubHex": "02", "extra": 1}, session_id="139",
                                                     job_id=139, chain_id=84532, request_id="i")
        assert client({"type": "encrypted_session_init", "sessionId": "s"}) == EncryptedSessionInit(None, "s")
        # the outer job id is informational (the sealed jobId counts): a malformed one is not an error
        assert client({"type": "encrypted_session_init", "session_id": "s", "job_id": "abc", "payload": 5}) == \
            EncryptedSessionInit(5, "s")

    def test_encrypted_message_public_sdk_form(self) -> None:
        frame = {"type": "encrypted_message", "session_id": "139", "id": "1739-abc", "payload": PAYLOAD,
                 "web_search": False, "max_searches": 0, "search_queries": None}
        assert client(frame) == EncryptedMessage(payload=PAYLOAD, session_id="139", request_id="1739-abc",
                                                 web_search=False, max_searches=0)

    def test_encrypted_message_outer_fields(self) -> None:
        msg = client({"type": "encrypted_message", "payload": PAYLOAD, "model": "m", "max_tokens": 5,
                      "temperature": 0, "stream": False, "thinking": "high", "search_queries": ["a"]})
        assert msg == EncryptedMessage(payload=PAYLOAD, model="m", max_tokens=5, temperature=0.0, stream=False,
                                       thinking="high", search_queries=("a",))

    @pytest.mark.parametrize("field,value", [("max_tokens", 0), ("max_tokens", "x"), ("temperature", "hot"),
                                             ("stream", "yes"), ("search_queries", [1]), ("web_search", 1)])
    def test_encrypted_message_bad_outer_fields(self, field: str, value: object) -> None:
        assert code_of({"type": "encrypted_message", "payload": PAYLOAD, field: value}) == ErrorCode.VALIDATION_ERROR

    def test_session_resume_with_a_sealed_payload(self) -> None:
        msg = client({"type": "session_resume", "session_id": "s", "job_id": 3, "payload": PAYLOAD, "id": "r"})
        assert msg == EncryptedSessionResume(session_id="s", payload=PAYLOAD, job_id=3, request_id="r")
        assert isinstance(client({"type": "session_resume", "session_id": "s"}), SessionResume)
        assert code_of({"type": "session_resume", "payload": PAYLOAD}) == ErrorCode.MISSING_SESSION_ID

    def test_round_trips(self) -> None:
        for message in (EncryptedSessionInit(PAYLOAD, "s", 7, 84532, "i"),
                        EncryptedMessage(PAYLOAD, "s", "r", max_tokens=3, search_queries=("q",)),
                        EncryptedSessionResume("s", PAYLOAD, 7, None, "r")):
            assert parse_client_message(encode_message(message)) == message


class TestServerMessages:
    def test_encrypted_chunk(self) -> None:
        chunk = EncryptedChunk(payload={**PAYLOAD, "index": 0}, tokens=1, session_id="139", request_id="r")
        text = encode_message(chunk)
        assert json.loads(text) == {"type": "encrypted_chunk", "tokens": 1, "id": "r", "session_id": "139",
                                    "payload": {**PAYLOAD, "index": 0}}
        assert json.loads(text) == chunk.to_wire()
        assert parse_server_message(text) == chunk
        final = EncryptedChunk(payload=PAYLOAD, tokens=0, final=True)
        assert json.loads(encode_message(final)) == {"type": "encrypted_chunk", "tokens": 0, "payload": PAYLOAD,
                                                     "final": True}
        assert parse_server_message(encode_message(final)) == final
        assert parse_server_message('{"type":"encrypted_chunk","final":"yes"}') == EncryptedChunk(None, 0)

    def test_encrypted_response(self) -> None:
        response = EncryptedResponse(payload=PAYLOAD, session_id="139", request_id="r")
        assert parse_server_message(encode_message(response)) == response
        assert response.to_wire()["type"] == "encrypted_response"

    def test_ack_and_connected_fields(self) -> None:
        ack = SessionInitAck(session_id="139", job_id=139, chain_id=84532, client_address="0xabc",
                             message="Encrypted session initialized successfully", request_id="i")
        assert ack.to_wire()["client_address"] == "0xabc"
        assert parse_server_message(encode_message(ack)) == ack
        assert "client_address" not in SessionInitAck(session_id="1").to_wire()
        hello = Connected(public_key="02" + "ab" * 32)
        assert parse_server_message(encode_message(hello)) == hello
        assert "public_key" not in Connected().to_wire()


class TestInnerRequest:
    outer = EncryptedMessage(payload=PAYLOAD, session_id="s", request_id="r")

    def test_sdk_body(self) -> None:
        request = InferenceRequest(prompt="hi", model="m", max_tokens=9, temperature=0.0)
        body = encrypted_request_body(request, message_index=4)
        assert body == {"prompt": "hi", "model": "m", "max_tokens": 9, "temperature": 0.0, "stream": True,
                        "message_index": 4}
        parsed = parse_encrypted_request(json.dumps(body), self.outer)
        assert parsed == PromptMessage(request=InferenceRequest(prompt="hi", model="m", max_tokens=9,
                                                                temperature=0.0),
                                       session_id="s", message_index=4, request_id="r")

    def test_plain_text_is_the_prompt(self) -> None:
        for text in ("hello", "[1, 2]", '"quoted"', "{not json", "42"):
            assert parse_encrypted_request(text, self.outer).request.prompt == text

    def test_precedence_inner_outer_default(self) -> None:
        outer = EncryptedMessage(payload=PAYLOAD, model="outer", max_tokens=7, temperature=1.5, thinking="low")
        request = parse_encrypted_request('{"prompt":"p","model":"inner","temperature":null}', outer).request
        assert (request.model, request.max_tokens, request.temperature, request.thinking) == ("inner", 7, 1.5, "low")
        defaults = parse_encrypted_request("p", EncryptedMessage(payload=PAYLOAD)).request
        assert (defaults.max_tokens, defaults.temperature, defaults.stream) == (4000, 0.7, True)

    def test_ignored_inner_fields(self) -> None:
        body = {"prompt": "p", "conversation_context": [{"role": "user", "content": "x"}], "job_id": 5,
                "session_id": "other", "request": {"prompt": "nested"}, "images": []}
        prompt = parse_encrypted_request(json.dumps(body), self.outer)
        assert prompt.request == InferenceRequest(prompt="p") and prompt.session_id == "s"

    @pytest.mark.parametrize("body,code", [
        ({"prompt": "p", "action": "image_generation"}, ErrorCode.UNSUPPORTED_ACTION),
        ({"prompt": "p", "action": {"x": 1}}, ErrorCode.UNSUPPORTED_ACTION),
        ({"prompt": ""}, ErrorCode.VALIDATION_ERROR),
        ({"model": "m"}, ErrorCode.VALIDATION_ERROR),
        ({"prompt": "p", "max_tokens": -1}, ErrorCode.VALIDATION_ERROR),
        ({"prompt": "p", "message_index": "x"}, ErrorCode.VALIDATION_ERROR),
    ])
    def test_refusals(self, body: dict[str, object], code: str) -> None:
        with pytest.raises(RemoteProtocolError) as info:
            parse_encrypted_request(json.dumps(body), self.outer)
        assert info.value.code == code and info.value.request_id == "r"

    def test_resume_body(self) -> None:
        turns = (ChatTurn("user", "a"), ChatTurn("assistant", "b"))
        outer = EncryptedSessionResume("s", PAYLOAD, 3, 84532, "r")
        resume = parse_encrypted_resume(json.dumps(encrypted_resume_body(turns, 0)), outer)
        assert resume == SessionResume("s", turns, 0, 3, 84532, "r")
        for bad in ("text", '{"conversation_context": [{"role": "robot", "content": "x"}]}',
                    '{"last_message_index": -5}'):
            with pytest.raises(RemoteProtocolError) as info:
                parse_encrypted_resume(bad, outer)
            assert info.value.code == ErrorCode.INVALID_MESSAGE


class TestCompression:
    def test_small_bodies_stay_plain(self) -> None:
        body = {"prompt": "short"}
        assert encode_inner_payload(body, compress=True) == json.dumps(body, separators=(",", ":")).encode()

    def test_large_bodies_are_compressed_and_round_trip(self) -> None:
        body = {"prompt": "the same words again " * 200}
        packed = encode_inner_payload(body, compress=True)
        assert packed[0] == 0xFF and len(packed) < INNER_COMPRESSION_THRESHOLD
        assert json.loads(decode_inner_payload(packed, allow_compressed=True, max_bytes=1 << 20)) == body
        assert encode_inner_payload(body, compress=False)[0] == ord("{")

    def test_incompressible_bodies_stay_plain(self) -> None:
        import os

        body = {"prompt": os.urandom(2000).hex()}
        packed = encode_inner_payload(body, compress=True, threshold=10)
        assert packed[0] == ord("{") or len(packed) < len(json.dumps(body))

    def test_marker_is_never_utf8(self) -> None:
        with pytest.raises(UnicodeDecodeError):
            b"\xff".decode()

    @pytest.mark.parametrize("data,allow,code", [
        (b"\xff" + zlib.compress(b"{}"), False, "INVALID_UTF8"),
        (b"\xffnot zlib", True, "INVALID_PAYLOAD"),
        (b"\xff" + zlib.compress(b"{}")[:-2], True, "INVALID_PAYLOAD"),
        (b"\xff" + zlib.compress(b"{}") + b"junk", True, "INVALID_PAYLOAD"),
        (b"\xff" + zlib.compress(b"x" * 5000), True, ErrorCode.FRAME_TOO_LARGE),
        (b"\xff" + zlib.compress(b"\xc3\x28"), True, "INVALID_UTF8"),
        (b"\xc3\x28", True, "INVALID_UTF8"),
    ])
    def test_decode_refusals(self, data: bytes, allow: bool, code: str) -> None:
        with pytest.raises(RemoteProtocolError) as info:
            decode_inner_payload(data, allow_compressed=allow, max_bytes=4096)
        assert info.value.code == code

    def test_exactly_at_the_limit(self) -> None:
        body = b"x" * 4096
        assert decode_inner_payload(b"\xff" + zlib.compress(body), allow_compressed=True, max_bytes=4096) == \
            body.decode()


INNER_CODES = {ErrorCode.UNSUPPORTED_ACTION, ErrorCode.VALIDATION_ERROR}
DECODE_CODES = {"INVALID_UTF8", "INVALID_PAYLOAD", ErrorCode.FRAME_TOO_LARGE}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
    max_leaves=30,
)
inner_keys = st.sampled_from(["prompt", "model", "max_tokens", "temperature", "stream", "thinking", "action",
                              "message_index", "conversation_context", "images"])


@settings(max_examples=300)
@given(st.text(max_size=200) | st.builds(json.dumps, st.dictionaries(inner_keys, json_values, max_size=6)))
def test_inner_request_only_coded_errors(text: str) -> None:
    try:
        parse_encrypted_request(text, EncryptedMessage(payload=None))
    except RemoteProtocolError as exc:
        assert exc.code in INNER_CODES


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_decode_only_coded_errors(data: bytes, allow: bool) -> None:
    for candidate in (data, b"\xff" + data, b"\xff" + zlib.compress(data)):
        try:
            decode_inner_payload(candidate, allow_compressed=allow, max_bytes=100)
        except RemoteProtocolError as exc:
            assert exc.code in DECODE_CODES


@settings(max_examples=200)
@given(st.sampled_from(["encrypted_session_init", "encrypted_message", "session_resume", "encrypted_chunk",
                        "encrypted_response", "session_init_ack", "connected"]),
       st.dictionaries(st.sampled_from(["payload", "session_id", "job_id", "id", "final", "tokens", "max_tokens",
                                        "temperature", "web_search", "search_queries", "client_address",
                                        "public_key", "max_searches", "stream"]), json_values, max_size=6))
def test_encrypted_frames_only_coded_errors(kind: str, extra: dict[str, object]) -> None:
    data = json.dumps({"type": kind, **extra})
    for parse in (parse_client_message, parse_server_message):
        try:
            parse(data)
        except RemoteProtocolError as exc:
            assert exc.code in set(ErrorCode)
