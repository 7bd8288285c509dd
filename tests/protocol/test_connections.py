"""Frame-level tests of the sans-I/O connections: text frames in, events and frames out, no event loop."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import coincurve
import pytest
from nacl.signing import SigningKey

from fabstir.errors import InvalidMessageIndexError, LocalProtocolError, RemoteProtocolError
from fabstir.protocol import (
    CancelReceived,
    ChatTurn,
    ChunkReceived,
    ClientConnection,
    Connected,
    EncryptedInitReceived,
    ErrorReceived,
    Feature,
    History,
    HistoryRequest,
    InferenceRequest,
    PromptReceived,
    RequestRefused,
    ResumeReceived,
    ServerConnection,
    SessionInit,
    SessionInitAck,
    SessionResumed,
    SessionState,
    StreamCancel,
    StreamEnded,
    StreamPosition,
)
from fabstir.protocol.e2e import (
    ClientE2ESession,
    E2EError,
    InitReplayCache,
    SessionInitPayload,
    address_of,
    build_encrypted_session_init,
)
from fabstir.protocol.signing import ReplayCache, sign_message

HOST_KEY = hashlib.sha256(b"fabstir-tests/connections/host").digest()
HOST_PUB = coincurve.PrivateKey(HOST_KEY).public_key.format().hex()
CLIENT_KEY = hashlib.sha256(b"fabstir-tests/connections/client").digest()
CLIENT_ADDRESS = address_of(coincurve.PrivateKey(CLIENT_KEY).public_key.format())
FEATURES = (Feature.SERVER_CONTEXT.value, Feature.MESSAGE_INDEX.value, Feature.SESSION_RESUME.value)


def frames(conn: ServerConnection | ClientConnection) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in conn.frames_to_send()]


def send(server: ServerConnection, obj: dict[str, Any] | str, **kwargs: Any) -> list[dict[str, Any]]:
    server.receive_frame(obj if isinstance(obj, str) else json.dumps(obj), **kwargs)
    return frames(server)


def prompt(text: str = "hi", *, rid: str | None = "p1", index: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": "prompt", "session_id": "s", "prompt": text}
    if rid is not None:
        obj["id"] = rid
    if index is not None:
        obj["message_index"] = index
    return obj


def ready_server(**kwargs: Any) -> ServerConnection:
    server = ServerConnection(**kwargs)
    server.receive_frame(json.dumps({"type": "session_init", "session_id": "s", "job_id": 7, "id": "i"}))
    (init,) = server.events_received()
    assert isinstance(init, SessionInit)
    server.accept_session(init, features=FEATURES, message_index=0)
    server.frames_to_send()
    return server


def sealed_init(session: ClientE2ESession, job_id: str = "7") -> dict[str, Any]:
    init = SessionInitPayload(job_id=job_id, model_name="m", session_key=session.session_key, price_per_token=0)
    return {"type": "encrypted_session_init", "session_id": "s", "chain_id": 5, "id": "e",
            "payload": build_encrypted_session_init(HOST_PUB, init, CLIENT_KEY)}


class TestServer:
    def test_greeting_is_the_first_frame(self) -> None:
        server = ServerConnection(greeting=Connected(version="1", features=FEATURES))
        assert frames(server) == [{"type": "connected", "message": "WebSocket connected successfully",
                                   "version": "1", "features": list(FEATURES)}]
        assert server.state is SessionState.CONNECTED

    def test_init_ack_binds_the_session(self) -> None:
        server = ServerConnection()
        assert send(server, {"type": "session_init", "session_id": "s", "job_id": "7", "id": "i"}) == []
        (event,) = server.events_received()
        assert event == SessionInit("s", 7, request_id="i")
        server.accept_session(event, features=("message-index",), message_index=3, session_secret="ab" * 16)
        assert frames(server) == [{"type": "session_init_ack", "status": "success", "session_id": "s", "job_id": 7,
                                   "chain_id": None, "message": "Session initialized successfully",
                                   "features": ["message-index"], "message_index": 3, "session_secret": "ab" * 16,
                                   "id": "i"}]
        assert server.state is SessionState.READY and server.session_id == "s" and server.next_message_index == 3

    def test_prompt_chunks_sentinel_and_end(self) -> None:
        server = ready_server()
        assert send(server, prompt(index=0)) == []
        (event,) = server.events_received()
        assert isinstance(event, PromptReceived) and event.request_id == "p1" and not event.encrypted
        assert server.state is SessionState.STREAMING and server.request is event
        server.check_message_index()
        server.send_chunk("Hel")
        server.send_chunk("lo", tokens=2)
        assert server.tokens_sent == 3
        server.send_end("stop", receipt={"sig": "x"})
        assert server.frames_to_send() == [
            '{"type":"stream_chunk","content":"Hel","tokens":1,"id":"p1"}',
            '{"type":"stream_chunk","content":"lo","tokens":2,"id":"p1"}',
            '{"type":"stream_chunk","content":"","tokens":0,"id":"p1"}',
            '{"type":"stream_end","reason":"complete","tokens_used":3,"finish_reason":"stop","session_id":"s",'
            '"message_index":0,"receipt":{"sig":"x"},"id":"p1"}',
        ]
        assert server.state is SessionState.READY and server.request is None and server.next_message_index == 1

    def test_a_second_request_while_streaming_is_refused_without_ending_the_stream(self) -> None:
        server = ready_server()
        send(server, prompt())
        server.events_received()
        refused = send(server, prompt(rid="p2"))
        assert [f["type"] for f in refused] == ["error", "stream_end"]
        assert refused[0]["code"] == "REQUEST_IN_PROGRESS" and {f["id"] for f in refused} == {"p2"}
        assert [f["type"] for f in send(server, prompt(rid=None))] == ["error"]  # no id: the error alone
        assert send(server, {"type": "get_history", "session_id": "s"})[0]["code"] == "REQUEST_IN_PROGRESS"
        assert server.events_received() == [] and server.state is SessionState.STREAMING
        server.send_chunk("x")
        assert frames(server)[0]["id"] == "p1"

    @pytest.mark.parametrize(("frame", "code"), [("{nope", "INVALID_JSON"), ('{"type":"warp"}', "UNKNOWN_MESSAGE_TYPE")])
    def test_a_bad_frame_gets_error_and_stream_end_when_idle_but_the_error_alone_mid_stream(
            self, frame: str, code: str) -> None:
        server = ready_server()
        idle = send(server, frame)
        assert [(f["type"], f.get("code"), f.get("session_id")) for f in idle] == [
            ("error", code, "s"), ("stream_end", None, "s")]
        send(server, prompt())
        assert [f["type"] for f in send(server, frame)] == ["error"]
        with_id = send(server, {"type": "prompt", "id": "bad"})  # no prompt text: refused, and it had an id
        assert [(f["type"], f["id"]) for f in with_id] == [("error", "bad"), ("stream_end", "bad")]
        assert server.state is SessionState.STREAMING

    def test_cancel_once_then_end_without_sentinel(self) -> None:
        server = ready_server()
        assert send(server, {"type": "stream_cancel", "session_id": "s"}) == []  # nothing streams: no effect
        assert server.events_received() == []
        send(server, prompt())
        server.events_received()
        server.send_chunk("a")
        send(server, {"type": "stream_cancel", "session_id": "s"})
        send(server, {"type": "stream_cancel", "session_id": "s"})
        assert server.events_received() == [CancelReceived(StreamCancel("s"), "p1")]
        assert server.cancelled and server.state is SessionState.CANCELLING
        frames(server)
        server.send_end("cancelled")
        (end,) = frames(server)
        assert end["type"] == "stream_end" and end["reason"] == "cancelled" and end["tokens_used"] == 1
        assert server.state is SessionState.READY

    def test_ping_is_ignored_even_mid_stream(self) -> None:
        server = ready_server()
        assert send(server, {"type": "ping"}) == [] and server.events_received() == []
        send(server, prompt())
        server.events_received()
        assert send(server, {"type": "ping", "id": "k"}) == [] and server.events_received() == []

    def test_answers_outside_a_request_are_local_errors_that_change_nothing(self) -> None:
        server = ready_server()
        for action in (lambda: server.send_chunk("x"), lambda: server.send_end("stop"),
                       lambda: server.check_message_index(0)):
            with pytest.raises(LocalProtocolError):
                action()
        assert server.frames_to_send() == [] and server.state is SessionState.READY
        send(server, prompt())
        (event,) = server.events_received()
        with pytest.raises(LocalProtocolError):
            server.answer(History("s", (), 0))
        with pytest.raises(LocalProtocolError):
            server.accept_session(SessionInit("s"))
        with pytest.raises(LocalProtocolError):
            server.send_error("X", "y", request_id="other")
        assert server.frames_to_send() == [] and server.request is event

    def test_message_index_gap_is_refused_and_the_count_stays(self) -> None:
        server = ready_server()
        send(server, prompt(index=4))
        server.events_received()
        with pytest.raises(InvalidMessageIndexError) as info:
            server.check_message_index()
        assert info.value.details == {"expected_message_index": 0} and info.value.request_id == "p1"
        server.send_error(info.value.code, info.value.message, details=info.value.details)
        error, end = frames(server)
        assert error == {"type": "error", "code": "INVALID_MESSAGE_INDEX", "message": "expected message_index 0, got 4",
                         "expected_message_index": 0, "session_id": "s", "id": "p1"}
        assert end == {"type": "stream_end", "reason": "error", "tokens_used": 0, "session_id": "s", "id": "p1"}
        assert server.next_message_index == 0 and server.state is SessionState.READY
        send(server, prompt(index=0))
        server.check_message_index(0)  # the node's own count may be passed in
        server.send_end("cancelled")
        assert frames(server)[-1]["message_index"] == 0 and server.next_message_index == 1

    def test_without_extensions_there_is_no_index_and_no_resume(self) -> None:
        server = ServerConnection(extensions=False)
        resume = {"type": "session_resume", "session_id": "s", "conversation_context": [], "last_message_index": 0,
                  "id": "r"}
        refused = send(server, resume)
        assert refused[0]["code"] == "UNKNOWN_MESSAGE_TYPE" and refused[1]["type"] == "stream_end"
        send(server, prompt(index=9))
        server.check_message_index(0)
        server.send_end("stop")
        assert "message_index" not in frames(server)[-1]
        assert server.state is SessionState.CONNECTED  # no session was bound

    def test_resume_and_control_replies(self) -> None:
        server = ServerConnection()
        turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        send(server, {"type": "session_resume", "session_id": "s", "conversation_context": turns,
                      "last_message_index": 0, "id": "r"})
        (event,) = server.events_received()
        assert isinstance(event, ResumeReceived) and not event.encrypted
        assert event.resume.conversation_context == (ChatTurn("user", "a"), ChatTurn("assistant", "b"))
        server.accept_resume(event, message_index=1, kept_messages=2, dropped_messages=0)
        assert frames(server) == [{"type": "session_resumed", "session_id": "s", "message_index": 1,
                                   "kept_messages": 2, "dropped_messages": 0, "id": "r"}]
        send(server, {"type": "get_history", "session_id": "s", "id": "h"})
        assert server.events_received() == [HistoryRequest("s", "h")]
        server.answer(History("s", (ChatTurn("user", "a"),), 1, "h"))
        assert frames(server)[0]["type"] == "history"
        send(server, {"type": "session_clear", "session_id": "s", "id": "c"})
        server.events_received()
        server.send_error("PERMISSION_DENIED", "admin only", "c")
        assert [(f["type"], f["id"]) for f in frames(server)] == [("error", "c"), ("stream_end", "c")]
        assert server.state is SessionState.READY

    def test_encrypted_session_prompt_and_sealed_answer(self) -> None:
        replays = InitReplayCache()
        server = ServerConnection(host_key=HOST_KEY, init_replays=replays)
        client = ClientE2ESession()
        init = sealed_init(client)
        assert send(server, init) == []
        (event,) = server.events_received()
        assert isinstance(event, EncryptedInitReceived) and event.session_id == "s"
        assert event.opened.client_address == CLIENT_ADDRESS
        assert send(server, init)[0]["code"] == "REPLAYED_MESSAGE"
        server.accept_session(event, message_index=0)
        (ack,) = frames(server)
        assert ack["client_address"] == CLIENT_ADDRESS and ack["job_id"] == 7 and ack["chain_id"] == 5
        assert ack["message"] == "Encrypted session initialized successfully"
        payload = client.encrypt_message(json.dumps({"prompt": "secret", "max_tokens": 5, "message_index": 0}))
        send(server, {"type": "encrypted_message", "session_id": "s", "id": "m", "payload": payload})
        (event,) = server.events_received()
        assert isinstance(event, PromptReceived) and event.encrypted and event.signers[0] == CLIENT_ADDRESS
        assert event.prompt.request.prompt == "secret" and event.prompt.request.max_tokens == 5
        server.check_message_index()
        server.send_chunk("Par")
        server.send_chunk("is")
        server.send_end("stop")
        out = frames(server)
        assert [f["type"] for f in out] == ["encrypted_chunk"] * 3 + ["encrypted_response", "stream_end"]
        assert [client.decrypt_chunk(f["payload"], final=f.get("final", False)) for f in out[:3]] == ["Par", "is", ""]
        assert client.decrypt_response_final(out[3]["payload"]) == "stop"
        assert out[4]["reason"] == "complete" and out[4]["tokens_used"] == 2 and out[4]["message_index"] == 0

    def test_refused_sealed_messages_change_nothing(self) -> None:
        no_key = ServerConnection()
        assert send(no_key, sealed_init(ClientE2ESession()))[0]["code"] == "ENCRYPTION_NOT_SUPPORTED"
        server = ServerConnection(host_key=HOST_KEY)
        stray = ClientE2ESession().encrypt_message("x")
        refused = send(server, {"type": "encrypted_message", "session_id": "s", "id": "m", "payload": stray})
        assert [(f["type"], f.get("code")) for f in refused] == [("error", "SESSION_KEY_NOT_FOUND"),
                                                                 ("stream_end", None)]
        client = ClientE2ESession()
        send(server, sealed_init(client))
        (event,) = server.events_received()
        server.accept_session(event)
        frames(server)
        first = client.encrypt_message("one")
        assert send(server, {"type": "encrypted_message", "session_id": "s", "payload": {"bad": 1}})[0]["code"] == \
            "MISSING_PAYLOAD_FIELDS"
        send(server, {"type": "encrypted_message", "session_id": "s", "payload": first})
        server.events_received()
        server.send_end("stop")
        frames(server)
        assert send(server, {"type": "encrypted_message", "session_id": "s", "payload": first})[0]["code"] == \
            "REPLAYED_MESSAGE"
        assert server.state is SessionState.READY and server.events_received() == []

    def test_signed_frames(self) -> None:
        key = SigningKey(b"\x07" * 32)
        server = ServerConnection(verify_signatures=True, require_signed=True, replay_cache=ReplayCache())
        with pytest.raises(LocalProtocolError):
            server.receive_frame('{"type":"ping"}')
        unsigned = send(server, {"type": "get_history", "session_id": "s", "id": "h"}, now_ms=1000)
        assert unsigned[0]["code"] == "SIGNATURE_REQUIRED" and unsigned[0]["id"] == "h"
        signed = sign_message({"type": "get_history", "session_id": "s", "id": "h"}, key, now_ms=1000)
        assert send(server, signed, now_ms=1500) == []
        assert server.events_received() == [HistoryRequest("s", "h")]
        assert send(server, signed, now_ms=1500)[0]["code"] == "REPLAYED_NONCE"

    def test_after_close_nothing_is_sent(self) -> None:
        server = ready_server()
        send(server, prompt())
        server.events_received()
        server.close()
        server.send_chunk("x")
        server.send_end("stop")
        server.send_error("X", "y")
        assert send(server, prompt(rid="p2")) == [] and server.events_received() == []
        assert server.state is SessionState.CLOSED


def ack(rid: str = "r1", **fields: Any) -> str:
    return json.dumps({"type": "session_init_ack", "status": "success", "session_id": "s", "id": rid, **fields})


def ready_client(**kwargs: Any) -> ClientConnection:
    client = ClientConnection("s", job_id=7, **kwargs)
    client.receive_frame(json.dumps({"type": "connected", "features": list(FEATURES)}))
    client.send_init()
    client.receive_frame(ack(message_index=0))
    client.events_received()
    client.frames_to_send()
    return client


class TestClient:
    def test_greeting_init_and_ack(self) -> None:
        client = ClientConnection("s", job_id=7, chain_id=5)
        client.receive_frame('{"type":"connected","message":"hi","features":["message-index"]}')
        assert client.events_received() == [Connected(message="hi", features=("message-index",))]
        assert client.send_init() == "r1"
        assert frames(client) == [{"type": "session_init", "session_id": "s", "jobId": "7", "chain_id": 5, "id": "r1"}]
        assert client.busy and client.state is SessionState.CONNECTED
        client.receive_frame(ack(features=list(FEATURES), message_index=4))
        (event,) = client.events_received()
        assert isinstance(event, SessionInitAck) and event.message_index == 4
        assert client.state is SessionState.READY and not client.busy and client.server_context
        assert client.next_message_index == 0  # reported, not adopted

    def test_prompt_streams_and_numbers_turns(self) -> None:
        client = ready_client()
        rid = client.send_prompt(InferenceRequest(prompt="hi", max_tokens=5), now=10.0)
        (sent,) = frames(client)
        assert sent["type"] == "prompt" and sent["message_index"] == 0 and sent["id"] == rid == "r2"
        assert client.state is SessionState.STREAMING
        client.receive_frame(json.dumps({"type": "stream_chunk", "content": "He", "tokens": 1, "id": rid}), now=10.5)
        client.receive_frame(json.dumps({"type": "stream_chunk", "content": "y", "tokens": 1, "id": "other"}))
        assert client.position == StreamPosition(rid, "He", 1, False)
        client.receive_frame(json.dumps({"type": "stream_chunk", "content": "", "tokens": 0, "id": rid}))
        client.receive_frame(json.dumps({"type": "stream_end", "reason": "complete", "tokens_used": 1,
                                         "finish_reason": "stop", "message_index": 0, "id": rid}), now=11.0)
        chunk, end = client.events_received()
        assert chunk == ChunkReceived("He", 1, rid)
        assert isinstance(end, StreamEnded) and end.snapshot.text == "He" and end.snapshot.ttft_s == 0.5
        assert end.snapshot.error is None and client.next_message_index == 1 and client.state is SessionState.READY
        assert client.position == StreamPosition(rid, "He", 1, True)

    def test_one_request_at_a_time(self) -> None:
        client = ready_client()
        client.send_prompt(InferenceRequest(prompt="a"))
        client.frames_to_send()
        for action in (lambda: client.send_prompt(InferenceRequest(prompt="b")), client.send_init,
                       lambda: client.send_resume([]), lambda: client.send_request(HistoryRequest("s")),
                       lambda: client.set_message_index(3)):
            with pytest.raises(LocalProtocolError) as info:
                action()
            assert info.value.code == "REQUEST_IN_PROGRESS"
        assert client.frames_to_send() == [] and client.state is SessionState.STREAMING
        client.send_ping()
        assert frames(client) == [{"type": "ping"}]

    def test_cancel_once_and_a_stream_end_without_id(self) -> None:
        client = ready_client()
        with pytest.raises(LocalProtocolError):
            client.send_cancel()
        client.send_prompt(InferenceRequest(prompt="a"))
        client.send_cancel()
        with pytest.raises(LocalProtocolError):
            client.send_cancel()
        assert [f["type"] for f in frames(client)] == ["prompt", "stream_cancel"]
        assert client.state is SessionState.CANCELLING
        client.receive_frame('{"type":"stream_end","reason":"cancelled","tokens_used":0,"finish_reason":"cancelled"}')
        (end,) = client.events_received()
        assert isinstance(end, StreamEnded) and end.snapshot.reason == "cancelled"
        assert client.next_message_index == 1 and client.state is SessionState.READY

    def test_refused_prompt_and_refused_init(self) -> None:
        client = ready_client()
        rid = client.send_prompt(InferenceRequest(prompt="a"))
        client.receive_frame(json.dumps({"type": "error", "code": "INVALID_MESSAGE_INDEX", "message": "gap",
                                         "expected_message_index": 2, "id": rid}))
        client.receive_frame(json.dumps({"type": "stream_end", "reason": "error", "tokens_used": 0, "id": rid}))
        (end,) = client.events_received()
        assert isinstance(end, StreamEnded) and isinstance(end.snapshot.error, InvalidMessageIndexError)
        assert client.next_message_index == 0 and not client.busy
        rid = client.send_init()
        client.receive_frame(json.dumps({"type": "error", "code": "AUTH_REQUIRED", "message": "no", "id": rid}))
        assert client.events_received() == [] and client.busy
        client.receive_frame(json.dumps({"type": "stream_end", "reason": "error", "tokens_used": 0, "id": rid}))
        (refused,) = client.events_received()
        assert isinstance(refused, RequestRefused) and refused.error.code == "AUTH_REQUIRED" and not client.busy

    def test_stray_frames(self) -> None:
        client = ready_client()
        client.receive_frame('{"type":"stream_chunk","content":"x","tokens":1}')
        client.receive_frame('{"type":"stream_end","reason":"complete","tokens_used":1}')
        assert client.events_received() == []
        client.receive_frame('{"type":"error","code":"RATE_LIMITED","message":"slow"}')
        (event,) = client.events_received()
        assert isinstance(event, ErrorReceived) and event.error.code == "RATE_LIMITED"

    def test_a_malformed_frame_raises_and_changes_nothing(self) -> None:
        client = ready_client()
        client.send_prompt(InferenceRequest(prompt="a"))
        with pytest.raises(RemoteProtocolError):
            client.receive_frame("{nope")
        with pytest.raises(RemoteProtocolError):  # a sealed frame on a plaintext prompt
            client.receive_frame('{"type":"encrypted_chunk","tokens":1,"payload":{}}')
        assert client.events_received() == [] and client.state is SessionState.STREAMING

    def test_resume_sets_the_index_and_abandon_frees_the_connection(self) -> None:
        client = ready_client()
        client.send_resume([ChatTurn("user", "a"), ChatTurn("assistant", "b")], 0)
        (sent,) = frames(client)
        assert sent["type"] == "session_resume" and sent["last_message_index"] == 0
        client.receive_frame(json.dumps({"type": "session_resumed", "session_id": "s", "message_index": 1,
                                         "kept_messages": 2, "dropped_messages": 0, "id": sent["id"]}))
        assert isinstance(client.events_received()[0], SessionResumed) and client.next_message_index == 1
        client.send_prompt(InferenceRequest(prompt="c"))
        client.abandon()
        assert not client.busy and client.state is SessionState.READY
        client.send_prompt(InferenceRequest(prompt="d"))
        assert [f["message_index"] for f in frames(client)] == [1, 1]

    def test_signing_and_close(self) -> None:
        client = ClientConnection("s", sign=lambda wire: {**wire, "sig": {"alg": "test"}})
        client.send_init(request_id="x")
        assert frames(client)[0]["sig"] == {"alg": "test"}
        client.close()
        with pytest.raises(LocalProtocolError):
            client.send_prompt(InferenceRequest(prompt="a"))
        client.receive_frame(ack("x"))
        assert client.events_received() == [] and client.state is SessionState.CLOSED


class TestPair:
    """A client and a server connection talking to each other, encrypted."""

    @staticmethod
    def pump(client: ClientConnection, server: ServerConnection) -> None:
        for frame in client.frames_to_send():
            server.receive_frame(frame)
        for frame in server.frames_to_send():
            client.receive_frame(frame)

    def test_encrypted_turn_end_to_end(self) -> None:
        server = ServerConnection(greeting=Connected(features=FEATURES + ("e2e-v1", "e2e-compression")),
                                  host_key=HOST_KEY)
        client = ClientConnection("s", job_id=7)
        self.pump(client, server)
        client.send_encrypted_init(HOST_PUB, CLIENT_KEY, model="m")
        self.pump(client, server)
        (init,) = server.events_received()
        assert isinstance(init, EncryptedInitReceived)
        server.accept_session(init, features=FEATURES + ("e2e-compression",), message_index=0)
        self.pump(client, server)
        assert client.encrypted and client.key_fresh and client.client_address == CLIENT_ADDRESS
        client.send_prompt(InferenceRequest(prompt="x" * 3000))
        (sealed,) = client.frames_to_send()
        assert len(json.loads(sealed)["payload"]["ciphertextHex"]) < 1000  # the inner JSON went compressed
        server.receive_frame(sealed)
        (event,) = server.events_received()
        assert isinstance(event, PromptReceived) and event.encrypted and event.prompt.request.prompt == "x" * 3000
        assert event.prompt.message_index == 0
        server.send_chunk("Hello")
        server.send_chunk(" world", 2)
        server.send_end("length")
        *sealed_frames, _ = server.frames_to_send()  # the stream_end is lost
        for frame in sealed_frames[:2]:
            client.receive_frame(frame)
        assert not client.final_seen
        for frame in sealed_frames[2:]:
            client.receive_frame(frame)
        assert client.final_seen
        chunks = [e for e in client.events_received() if isinstance(e, ChunkReceived)]
        assert [c.text for c in chunks] == ["Hello", " world"]
        client.end_after_final(now=1.0)
        (end,) = client.events_received()
        assert isinstance(end, StreamEnded) and end.snapshot.finish_reason == "length"
        assert end.snapshot.text == "Hello world" and client.next_message_index == 1 and not client.key_fresh

    def test_a_tampered_chunk_raises(self) -> None:
        server = ServerConnection(host_key=HOST_KEY)
        client = ClientConnection("s")
        client.send_encrypted_init(HOST_PUB, CLIENT_KEY, model="m")
        self.pump(client, server)
        (init,) = server.events_received()
        server.accept_session(init)
        self.pump(client, server)
        client.send_prompt(InferenceRequest(prompt="q"))
        self.pump(client, server)
        server.events_received()
        server.send_chunk("a")
        server.send_chunk("b")
        first, second = server.frames_to_send()
        with pytest.raises(E2EError):
            client.receive_frame(second)  # chunk_1 before chunk_0
        client.receive_frame(first)
        assert [e.text for e in client.events_received() if isinstance(e, ChunkReceived)] == ["a"]
