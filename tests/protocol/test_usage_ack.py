"""``usage_ack`` (feature ``usage-countersign``) on the sans-I/O connections: frames in, events out."""

from __future__ import annotations

import json

import pytest

from fabstir.errors import RemoteProtocolError
from fabstir.protocol import (
    ClientConnection,
    Connected,
    Feature,
    PromptReceived,
    ServerConnection,
    UsageAcknowledgement,
)
from fabstir.protocol.parse import parse_client_message

ACK = UsageAcknowledgement(job_id=7, tokens=135, transcript_hash="0x" + "ab" * 32, signature="0x" + "cd" * 65,
                           session_id="7")


def test_a_usage_ack_round_trips_and_bad_fields_are_refused_with_codes() -> None:
    wire = ACK.to_wire()
    assert wire == {"type": "usage_ack", "session_id": "7", "job_id": 7, "tokens": 135,
                    "transcript_hash": "0x" + "ab" * 32, "signature": "0x" + "cd" * 65}
    assert parse_client_message(json.dumps(wire)) == ACK
    upper = {**wire, "transcript_hash": "AB" * 32, "jobId": "7", "job_id": None}
    assert parse_client_message(json.dumps(upper)) == ACK  # hex without 0x, any case; the job id's aliases
    for bad in ({"signature": "0x" + "cd" * 64}, {"transcript_hash": "0x" + "zz" * 32}, {"tokens": -1},
                {"tokens": None}, {"job_id": None}):
        with pytest.raises(RemoteProtocolError) as info:
            parse_client_message(json.dumps({**wire, **bad}))
        assert info.value.code in ("VALIDATION_ERROR", "INVALID_MESSAGE")


def test_the_node_takes_a_usage_ack_between_answers_and_while_one_streams() -> None:
    server = ServerConnection(greeting=Connected(version="1", features=(Feature.USAGE_COUNTERSIGN.value,)))
    server.frames_to_send()
    server.receive_frame(json.dumps(ACK.to_wire()))
    assert server.events_received() == [ACK] and server.frames_to_send() == []  # nothing answers it
    server.receive_frame(json.dumps({"type": "prompt", "prompt": "hi", "id": "p1"}))
    assert isinstance(server.events_received()[0], PromptReceived)
    server.receive_frame(json.dumps(ACK.to_wire()))  # mid-answer: not refused as REQUEST_IN_PROGRESS
    assert server.events_received() == [ACK] and server.frames_to_send() == []


def test_the_client_sends_a_usage_ack_without_waiting_for_an_answer() -> None:
    client = ClientConnection("7", job_id=7)
    client.send_usage_ack(ACK)
    [frame] = client.frames_to_send()
    assert json.loads(frame) == ACK.to_wire()
    assert not client.busy  # no reply is awaited: the next request may go at once
