"""A client and a server connection driven against each other through random legal and illegal sequences.

Frames travel through two FIFO queues that hypothesis delivers one frame at a time, so
cancels cross ends, requests wait in flight, and the node (simulated here, acting only
through :class:`ServerConnection`'s calls) answers in its own time. Invariants:

- every request the client sent ends exactly once (``StreamEnded``, ``RequestRefused`` or its reply);
- the server never emits a chunk (plain or sealed) outside the prompt in progress;
- a finished answer's text is exactly what the node sent for it, encrypted or not;
- ``message_index`` agrees on both ends (unless the client renumbered and has not resumed since);
- an illegal action (client or node) raises ``LocalProtocolError`` and changes nothing;
- a bad frame gets ``error``, plus ``stream_end`` exactly when nothing streams or it had an ``id``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import coincurve
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fabstir.errors import InvalidMessageIndexError, LocalProtocolError
from fabstir.protocol import (
    AuthChallenge,
    AuthChallengeRequest,
    CancelReceived,
    ChatTurn,
    ChunkReceived,
    ClientConnection,
    Connected,
    EncryptedInitReceived,
    History,
    HistoryRequest,
    InferenceRequest,
    PromptReceived,
    RequestRefused,
    ResumeReceived,
    ServerConnection,
    ServerEvent,
    SessionInit,
    SessionInitAck,
    SessionResumed,
    StreamEnded,
)

HOST_KEY = hashlib.sha256(b"fabstir-tests/state-machine/host").digest()
HOST_PUB = coincurve.PrivateKey(HOST_KEY).public_key.format().hex()
CLIENT_KEY = hashlib.sha256(b"fabstir-tests/state-machine/client").digest()
FEATURES = ("server-context", "message-index", "session-resume", "e2e-v1")
BAD_FRAMES = [
    "{nope", "[1,2]", b"\x00binary", '{"type":"prompt"}', '{"type":"warp","id":"w"}', '{"type":"prompt","id":"bad"}',
    # well-formed, refused when idle (no key for that session) and while streaming (REQUEST_IN_PROGRESS)
    '{"type":"encrypted_message","session_id":"zz","payload":{}}',
    '{"type":"encrypted_message","session_id":"zz","payload":{},"id":"q"}',
    '{"type":"session_resume","session_id":"zz","payload":{"x":1}}',
]
texts = st.text(alphabet="abc é😀", min_size=1, max_size=4)


class ConnectionPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.client = ClientConnection("s", job_id=7)
        self.server = ServerConnection(greeting=Connected(features=FEATURES), host_key=HOST_KEY)
        self.to_server: list[str] = []
        self.to_client: list[str | bytes] = []
        self.controls: list[ServerEvent] = []
        self.sent: dict[str, str] = {}
        self.ended: Counter[str] = Counter()
        self.node_text: dict[str, str] = {}
        self.client_text: dict[str, str] = {}
        self.open_rid: str | None = None
        self.diverged = False
        self.now = 0.0
        self._collect()

    # --- plumbing -------------------------------------------------------------------

    def _collect(self) -> None:
        self.to_server.extend(self.client.frames_to_send())
        for frame in self.server.frames_to_send():
            self._watch_server_frame(json.loads(frame))
            self.to_client.append(frame)

    def _watch_server_frame(self, obj: dict[str, Any]) -> None:
        if obj["type"] in ("stream_chunk", "encrypted_chunk", "encrypted_response"):
            assert self.open_rid is not None and obj.get("id") == self.open_rid, f"chunk outside a request: {obj}"
        if obj["type"] == "stream_end" and self.open_rid is not None and obj.get("id") == self.open_rid:
            self.open_rid = None

    def _client_try(self, action: Callable[[], object], kind: str) -> None:
        before = (self.client.state, self.client.busy, self.client.next_message_index, self.client.encrypted)
        try:
            rid = action()
        except LocalProtocolError:
            after = (self.client.state, self.client.busy, self.client.next_message_index, self.client.encrypted)
            assert after == before and self.client.frames_to_send() == []
            return
        if isinstance(rid, str):
            assert rid not in self.sent
            self.sent[rid] = kind
        self._collect()

    def _on_server_event(self, event: ServerEvent) -> None:
        if isinstance(event, PromptReceived):
            assert event.request_id is not None and self.open_rid is None
            self.open_rid = event.request_id
            self.node_text[event.request_id] = ""
            try:
                self.server.check_message_index()
            except InvalidMessageIndexError as exc:
                assert self.diverged
                self.server.send_error(exc.code, exc.message, details=exc.details)
        elif not isinstance(event, CancelReceived):  # the node notices server.cancelled between tokens
            self.controls.append(event)

    def _on_client_event(self, event: object) -> None:
        rid = getattr(event, "request_id", None)
        if isinstance(event, ChunkReceived):
            assert rid == self.client.awaiting and self.sent[rid] == "prompt"
            self.client_text[rid] = self.client_text.get(rid, "") + event.text
            return
        if isinstance(event, (StreamEnded, RequestRefused, SessionInitAck, SessionResumed, History, AuthChallenge)):
            assert rid in self.sent, event
            self.ended[rid] += 1
            assert self.ended[rid] == 1, f"{rid} ended twice"
        if isinstance(event, StreamEnded):
            assert event.snapshot.text == self.node_text[rid] == self.client_text.get(rid, "")
        if isinstance(event, SessionResumed):
            self.diverged = False

    # --- the client -----------------------------------------------------------------

    @initialize(mode=st.sampled_from(["none", "plain", "encrypted"]))
    def open_session(self, mode: str) -> None:
        if mode != "none":
            self.client_init(mode == "encrypted")
            self.settle()

    @precondition(lambda self: not self.client.busy)
    @rule(pieces=st.lists(st.tuples(texts, st.integers(1, 3)), max_size=4), cancel=st.booleans(),
          fail=st.booleans(), bad=st.none() | st.sampled_from(BAD_FRAMES))
    def client_turn(self, pieces: list[tuple[str, int]], cancel: bool, fail: bool, bad: str | bytes | None) -> None:
        """A whole turn, crossing a cancel with the answer when ``cancel``, a foreign bad frame mid-stream."""
        self.client_prompt("turn")
        self.settle()
        if self.server.request is None:  # refused (its index)
            return
        self.node_chunks(pieces)
        if bad is not None:
            self.bad_frame(bad)
        if cancel:
            self.client_cancel()
        self.deliver(4, to_server=False)
        if fail:
            self.node_fails()
        else:
            self.settle()
            self.node_ends("stop")
        self.settle()

    @rule(encrypted=st.booleans())
    def client_init(self, encrypted: bool) -> None:
        if encrypted:
            self._client_try(lambda: self.client.send_encrypted_init(HOST_PUB, CLIENT_KEY, model="m"), "init")
        else:
            self._client_try(self.client.send_init, "init")

    @rule(text=texts)
    def client_prompt(self, text: str) -> None:
        self.now += 1
        self._client_try(lambda: self.client.send_prompt(InferenceRequest(prompt=text), now=self.now), "prompt")

    @rule()
    def client_cancel(self) -> None:
        self._client_try(self.client.send_cancel, "cancel")

    @rule()
    def client_resume(self) -> None:
        self._client_try(lambda: self.client.send_resume([ChatTurn("user", "a"), ChatTurn("assistant", "b")]),
                         "resume")

    @rule(kind=st.sampled_from(["history", "challenge", "ping"]))
    def client_request(self, kind: str) -> None:
        if kind == "ping":
            self._client_try(self.client.send_ping, "ping")
        else:
            message = HistoryRequest("s") if kind == "history" else AuthChallengeRequest(7)
            self._client_try(lambda: self.client.send_request(message), "control")

    @rule(index=st.integers(0, 5))
    def client_renumber(self, index: int) -> None:
        def renumber() -> None:
            previous = self.client.next_message_index
            self.client.set_message_index(index)
            self.diverged = self.diverged or index != previous  # until a resume brings both ends together

        self._client_try(renumber, "renumber")

    def server_index(self) -> int:
        return self.server.next_message_index if self.server.next_message_index is not None else 0

    # --- the wire -------------------------------------------------------------------

    @precondition(lambda self: self.to_server or self.to_client)
    @rule(count=st.integers(1, 4), to_server=st.booleans())
    def deliver(self, count: int, to_server: bool) -> None:
        for _ in range(count):
            if to_server and self.to_server and not self.controls:  # the node reads on once it has answered
                self.deliver_to_server()
            elif self.to_client:
                self.deliver_to_client()

    def deliver_to_server(self) -> None:
        self.server.receive_frame(self.to_server.pop(0))
        for event in self.server.events_received():
            self._on_server_event(event)
        self._collect()

    def deliver_to_client(self) -> None:
        self.now += 1
        self.client.receive_frame(self.to_client.pop(0), now=self.now)
        for event in self.client.events_received():
            self._on_client_event(event)
        self._collect()

    @precondition(lambda self: not self.controls)
    @rule(frame=st.sampled_from(BAD_FRAMES))
    def bad_frame(self, frame: str | bytes) -> None:
        streaming, state, request = self.server.streaming, self.server.state, self.server.request
        self.server.receive_frame(frame)
        assert self.server.events_received() == []
        answer = [json.loads(f) for f in self.server.frames_to_send()]  # a foreign client's: not delivered
        has_id = '"id"' in str(frame)
        assert [f["type"] for f in answer] == (["error"] if streaming and not has_id else ["error", "stream_end"])
        assert (self.server.state, self.server.request) == (state, request)

    # --- the node -------------------------------------------------------------------

    @precondition(lambda self: self.controls)
    @rule()
    def node_accepts(self) -> None:
        event = self.controls.pop(0)
        server = self.server
        if isinstance(event, (SessionInit, EncryptedInitReceived)):
            server.accept_session(event, features=FEATURES, message_index=self.server_index())
        elif isinstance(event, ResumeReceived):
            resume = event.resume
            server.accept_resume(event, message_index=resume.last_message_index + 1,
                                 kept_messages=len(resume.conversation_context), dropped_messages=0)
        elif isinstance(event, HistoryRequest):
            server.answer(History("s", (), self.server_index(), event.request_id))
        else:
            assert isinstance(event, AuthChallengeRequest)
            server.answer(AuthChallenge(7, "sign me", 99, event.request_id))
        self._collect()

    @precondition(lambda self: self.controls)
    @rule()
    def node_refuses(self) -> None:
        event = self.controls.pop(0)
        self.server.send_error("AUTH_REQUIRED", "prove it", event.request_id)
        self._collect()

    @precondition(lambda self: self.server.request is not None)
    @rule(pieces=st.lists(st.tuples(texts, st.integers(1, 3)), min_size=1, max_size=3))
    def node_chunks(self, pieces: list[tuple[str, int]]) -> None:
        request = self.server.request
        assert request is not None and request.request_id is not None
        rid = request.request_id
        for text, tokens in pieces:
            self.server.send_chunk(text, tokens)
            self.node_text[rid] += text
        self._collect()

    @precondition(lambda self: self.server.request is not None)
    @rule(finish=st.sampled_from(["stop", "length"]))
    def node_ends(self, finish: str) -> None:
        self.server.send_end("cancelled" if self.server.cancelled else finish)
        self._collect()

    @precondition(lambda self: self.server.request is not None)
    @rule()
    def node_fails(self) -> None:
        self.server.send_error("ENGINE_ERROR", "the engine failed")
        self._collect()

    @precondition(lambda self: self.server.request is None)
    @rule()
    def node_acts_outside_a_request(self) -> None:
        state = self.server.state
        for action in (lambda: self.server.send_chunk("x"), lambda: self.server.send_end("stop"),
                       self.server.check_message_index):
            try:
                action()
            except LocalProtocolError:
                pass
            else:
                raise AssertionError("an answer outside a request was accepted")
        assert self.server.frames_to_send() == [] and self.server.state is state

    @precondition(lambda self: self.server.request is not None)
    @rule()
    def node_acts_illegally_inside_a_request(self) -> None:
        state, request = self.server.state, self.server.request
        for action in (lambda: self.server.accept_session(SessionInit("s")),
                       lambda: self.server.answer(History("s", (), 0)),
                       lambda: self.server.send_error("X", "y", request_id="not-the-one")):
            try:
                action()
            except LocalProtocolError:
                pass
            else:
                raise AssertionError("an illegal call inside a request was accepted")
        assert self.server.frames_to_send() == [] and (self.server.state, self.server.request) == (state, request)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def states_agree_with_requests(self) -> None:
        assert self.server.streaming == (self.server.request is not None)
        assert (self.server.request is None) == (self.open_rid is None)
        assert not self.client.streaming or self.client.busy
        assert all(count == 1 for count in self.ended.values())

    @invariant()
    def indices_agree_when_quiet(self) -> None:
        quiet = not (self.to_server or self.to_client or self.controls or self.client.busy or self.server.streaming)
        if quiet and not self.diverged and self.server.next_message_index is not None:
            assert self.client.next_message_index == self.server.next_message_index

    def settle(self) -> None:
        """Deliver everything in flight; the node answers every request (never a prompt: that is the caller's)."""
        for _ in range(100):
            while self.to_server and not self.controls:
                self.deliver_to_server()
            while self.controls:
                self.node_accepts()
            while self.to_client:
                self.deliver_to_client()
            if not (self.to_server or self.to_client or self.controls):
                return

    def teardown(self) -> None:
        """Let everything land and the node finish; then every request has ended exactly once."""
        self.settle()
        if self.server.request is not None:
            self.node_ends("stop")
            self.settle()
        self.states_agree_with_requests()
        assert not self.client.busy and not self.server.streaming
        waited = {rid for rid, kind in self.sent.items() if kind in ("init", "prompt", "resume", "control")}
        assert waited == set(self.ended), (waited, self.ended)


ConnectionPair.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestConnectionPair = ConnectionPair.TestCase
