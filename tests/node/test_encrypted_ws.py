"""End-to-end encryption on /v1/ws: the public SDK's flow over a raw socket against a real node (tiny model)."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import coincurve
import pytest

from fabstir.node.admission import job_id_from_session
from fabstir.node.server import NodeServer
from fabstir.protocol.e2e import address_of, encrypt_message_payload
from fabstir.protocol.e2e_session import ServerE2ESession
from fabstir.protocol.signing import Receipt, verify_receipt
from tests.conftest import NodeFactory
from tests.e2e_helpers import CLIENT_ADDRESS, CLIENT_KEY, E2EWire, random_key
from tests.helpers import WireClient, prompt, text_of

HOST_KEY = "0x" + "5a" * 32


async def test_connected_announces_the_public_key_and_features(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    assert client.hello["public_key"] == node.runtime.e2e_public_key
    assert len(bytes.fromhex(client.hello["public_key"])) == 33
    assert {"e2e-v1", "e2e-compression"} <= set(client.hello["features"])
    await client.close()


async def test_configured_host_key_is_the_e2e_key(node_factory: NodeFactory) -> None:
    node: NodeServer = await node_factory(host_key=HOST_KEY)
    expected = coincurve.PrivateKey(bytes.fromhex(HOST_KEY[2:])).public_key.format(compressed=True).hex()
    assert node.runtime.e2e_public_key == expected
    other: NodeServer = await node_factory()
    assert other.runtime.e2e_public_key != expected, "without host_key: a random key per run"


async def test_public_sdk_flow_matches_plaintext(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    ack = await client.init("139", "139", outer_job="999", rid="i1")
    assert ack == {"type": "session_init_ack", "status": "success", "session_id": "139", "job_id": 139,
                   "chain_id": 84532, "client_address": CLIENT_ADDRESS,
                   "message": "Encrypted session initialized successfully", "features": client.hello["features"],
                   "message_index": 0, "id": "i1"}, "the job id comes from the sealed jobId, not the outer one"
    answer = await client.ask("hello there", rid="p1", max_tokens=6)
    chunks = [f for f in answer.frames if f["type"] == "encrypted_chunk"]
    assert [f["payload"]["index"] for f in chunks] == list(range(len(chunks)))
    assert [bytes.fromhex(f["payload"]["aadHex"]) for f in chunks] == [f"chunk_{i}".encode()
                                                                      for i in range(len(chunks))]
    assert all(f["id"] == "p1" and f["session_id"] == "139" for f in chunks)
    assert all(f["tokens"] == 1 and "final" not in f for f in chunks[:-1]) and all(answer.pieces[:-1])
    assert chunks[-1]["final"] is True and chunks[-1]["tokens"] == 0 and answer.pieces[-1] == ""
    response, end = answer.frames[-2], answer.end
    assert response["type"] == "encrypted_response" and response["id"] == "p1" and response["session_id"] == "139"
    assert bytes.fromhex(response["payload"]["aadHex"]) == b"encrypted_response_final"
    assert answer.finish == end["finish_reason"] in ("length", "stop")
    assert end["type"] == "stream_end" and end["reason"] == "complete" and end["session_id"] == "139"
    assert end["tokens_used"] == len(chunks) - 1 and end["usage"]["completion_tokens"] <= 6
    assert end["message_index"] == 0 and end["id"] == "p1"
    verify_receipt(Receipt.from_wire(end["receipt"]), text=answer.text, tokens=end["tokens_used"],
                   expected_key=node.runtime.signing_public_key)
    everything = json.dumps(answer.frames)
    assert all(piece not in everything for piece in answer.pieces if len(piece) > 3), "no plaintext on the wire"
    await client.close()

    plain = await WireClient.open(node.ws_url)
    await plain.init("plain-twin")
    await plain.send(prompt("hello there", rid="q", max_tokens=6))
    frames = await plain.until_end()
    assert text_of(frames) == answer.text and frames[-1]["usage"] == end["usage"]
    await plain.close()


async def test_ts_sdk_signature_digest_is_accepted(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    ack = await client.init("ts", scheme="e2eev1")
    assert ack["client_address"].startswith("0x") and ack["client_address"] != CLIENT_ADDRESS
    assert (await client.ask("hi", max_tokens=2)).end["reason"] == "complete"
    await client.close()


async def test_multi_turn_with_server_side_context(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    usage = []
    for turn in range(3):  # a fresh init (new key, message_0) per prompt, as the TS SDK does
        ack = await client.init("ctx", rid=f"i{turn}")
        assert ack["message_index"] == turn
        answer = await client.ask(f"question {turn}", rid=f"p{turn}", max_tokens=4)
        assert answer.end["message_index"] == turn
        usage.append(answer.end["usage"]["prompt_tokens"])
    for turn in range(3, 5):  # several messages under one key: message_1, message_2 …
        answer = await client.ask(f"question {turn}", rid=f"p{turn}", max_tokens=4)
        usage.append(answer.end["usage"]["prompt_tokens"])
    assert usage == sorted(usage) and len(set(usage)) == 5, "the node kept the history across re-inits"
    session = node.runtime.sessions.find("ctx")
    assert session is not None and [t.content for t in session.history[::2]] == [f"question {i}" for i in range(5)]
    await client.close()


async def attack_rows(node: NodeServer, session_id: str, job_id: str | None = None, *,
                      client_key: bytes = CLIENT_KEY) -> E2EWire:
    """Every refusal row on one connection; each refused message changes nothing. Returns the client,
    whose next message (``message_1``) must still be served."""
    client = await E2EWire.open(node.ws_url, client_key=client_key)
    init = client.init_frame(session_id, job_id)
    await client.send(init)
    assert (await client.recv())["type"] == "session_init_ack"
    first = client.message_frame({"prompt": "first", "max_tokens": 3, "temperature": 0.0}, rid="ok")
    await client.send(first)
    assert (await client.answer()).end["reason"] == "complete"

    await client.send({**first, "id": "replay"})                                           # replayed message
    await client.expect_error("REPLAYED_MESSAGE", "replay")
    await client.send(client.forged_frame("skip ahead", 2, rid="gap"))                      # reordered / gap
    await client.expect_error("INVALID_MESSAGE_INDEX", "gap")
    tampered = client.forged_frame({"prompt": "x"}, 1, rid="tamper")
    sealed = bytearray(bytes.fromhex(tampered["payload"]["ciphertextHex"]))
    sealed[0] ^= 1
    tampered["payload"]["ciphertextHex"] = sealed.hex()
    await client.send(tampered)                                                             # tampered ciphertext
    await client.expect_error("DECRYPTION_FAILED", "tamper")
    await client.send(client.forged_frame({"prompt": "x"}, 1, key=random_key(), rid="key"))  # wrong session key
    await client.expect_error("DECRYPTION_FAILED", "key")
    await client.send({**init, "id": "reinit"})                                             # replayed init
    await client.expect_error("REPLAYED_MESSAGE", "reinit")
    await client.send({**client.forged_frame({"prompt": "x"}, 1, rid="nokey"), "session_id": "never-opened"})
    await client.expect_error("SESSION_KEY_NOT_FOUND", "nokey")                             # unknown session
    # a key lives on its own connection only
    thief = await E2EWire.open(node.ws_url)
    await thief.send(client.forged_frame({"prompt": "steal"}, 1, rid="thief"))
    await thief.expect_error("SESSION_KEY_NOT_FOUND", "thief")
    await thief.close()
    return client


async def test_attacks_are_refused_with_codes_and_change_nothing(node: NodeServer) -> None:
    client = await attack_rows(node, "attacked")
    answer = await client.ask("second", rid="after", max_tokens=3)  # message_1: nothing above consumed it
    assert answer.end["reason"] == "complete" and answer.end["message_index"] == 1
    session = node.runtime.sessions.find("attacked")
    assert session is not None and session.next_index == 2 and len(session.history) == 4
    other = await E2EWire.open(node.ws_url)
    await other.init("bystander")
    assert (await other.ask("still serving", max_tokens=3)).end["reason"] == "complete"
    await asyncio.gather(client.close(), other.close())


@pytest.mark.parametrize("mutate,code", [
    (lambda f: f.pop("payload"), "MISSING_PAYLOAD"),
    (lambda f: f["payload"].pop("signatureHex"), "INVALID_PAYLOAD"),
    (lambda f: f.update(payload="not an object"), "INVALID_PAYLOAD"),
    (lambda f: f["payload"].update(nonceHex="00" * 12), "INVALID_NONCE_SIZE"),
    (lambda f: f["payload"].update(ciphertextHex="zz"), "INVALID_HEX_ENCODING"),
    (lambda f: f["payload"].update(ciphertextHex="00" * 40), "DECRYPTION_FAILED"),
    (lambda f: f["payload"].update(ephPubHex="02" + "00" * 32), "DECRYPTION_FAILED"),
    (lambda f: f["payload"].update(signatureHex="00" * 64 + "09"), "DECRYPTION_FAILED"),
])
async def test_bad_inits(node: NodeServer, mutate: Any, code: str) -> None:
    client = await E2EWire.open(node.ws_url)
    frame = client.init_frame("bad", rid="b")
    mutate(frame)
    await client.send(frame)
    await client.expect_error(code, "b")
    assert (await client.init("bad", rid="good"))["status"] == "success", "the connection still works"
    await client.close()


@pytest.mark.parametrize("mutate,code", [
    (lambda f: f.pop("payload"), "MISSING_PAYLOAD"),
    (lambda f: f["payload"].pop("aadHex"), "MISSING_PAYLOAD_FIELDS"),
    (lambda f: f["payload"].update(nonceHex="0x" + "00" * 23), "INVALID_NONCE_SIZE"),
    (lambda f: f["payload"].update(ciphertextHex="0xg0"), "INVALID_HEX_ENCODING"),
    (lambda f: f["payload"].update(aadHex=b"message_x".hex()), "INVALID_MESSAGE_INDEX"),
    (lambda f: f.update(session_id="other"), "SESSION_KEY_NOT_FOUND"),
])
async def test_bad_messages(node: NodeServer, mutate: Any, code: str) -> None:
    client = await E2EWire.open(node.ws_url)
    await client.init("badmsg")
    frame = {"type": "encrypted_message", "session_id": "badmsg", "id": "b",
             "payload": encrypt_message_payload(client.e2e.session_key, "hello", 0)}
    mutate(frame)
    await client.send(frame)
    await client.expect_error(code, "b")
    assert (await client.ask("hello", max_tokens=2)).end["reason"] == "complete"
    await client.close()


async def test_message_without_any_session(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    await client.send({"type": "encrypted_message", "id": "x",
                       "payload": encrypt_message_payload(random_key(), "hello", 0)})
    await client.expect_error("MISSING_SESSION_ID", "x")
    await client.close()


async def test_inner_payload_forms_and_precedence(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    await client.init("inner")
    await client.send(client.message_frame("just a prompt, not JSON", rid="t", max_tokens=3))
    text_only = await client.answer()
    assert text_only.end["usage"]["completion_tokens"] == 3, "outer max_tokens applies when the inner has none"
    await client.send(client.message_frame({"prompt": "inner wins", "max_tokens": 2}, rid="o", max_tokens=5))
    assert (await client.answer()).end["usage"]["completion_tokens"] == 2
    refusals: list[tuple[dict[str, Any], str]] = [({"prompt": "draw a cat", "action": "image_generation"}, "UNSUPPORTED_ACTION"),
                       ({"prompt": ""}, "VALIDATION_ERROR"),
                       ({"prompt": "x", "max_tokens": "lots"}, "VALIDATION_ERROR"),
                       ({"prompt": "x", "temperature": 9}, "VALIDATION_ERROR")]
    for body, code in refusals:
        await client.send(client.message_frame(body, rid="bad"))
        await client.expect_error(code, "bad")
    # an inner conversation_context is ignored, as on the public node: context is the node's own history
    before = await client.ask("same question", max_tokens=1)
    context = [{"role": "user", "content": "made up " * 20}, {"role": "assistant", "content": "history " * 20}]
    after = await client.ask("same question", max_tokens=1, conversation_context=context)
    history_growth = after.end["usage"]["prompt_tokens"] - before.end["usage"]["prompt_tokens"]
    assert 0 < history_growth < 40
    await client.close()


async def test_cancel_ends_without_final_or_response(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    await client.init("cancel")
    await client.send(client.message_frame({"prompt": "go on", "max_tokens": 400, "temperature": 0.0}, rid="c"))
    first = await client.recv()
    assert first["type"] == "encrypted_chunk"
    await client.send({"type": "stream_cancel", "session_id": "cancel", "reason": "user_cancelled"})
    rest = await client.wire.until_end()
    frames = [first, *rest]
    end = frames[-1]
    assert end["reason"] == "cancelled" and end["finish_reason"] == "cancelled" and end["id"] == "c"
    assert all(f["type"] == "encrypted_chunk" and "final" not in f for f in frames[:-1])
    pieces = [client.e2e.decrypt_chunk(f["payload"]) for f in frames[:-1]]
    assert len(pieces) == end["tokens_used"] < 400
    client.e2e.end_response()
    after = await client.ask("next", rid="n", max_tokens=2)  # message_1, chunk indices restart at 0
    assert after.end["reason"] == "complete" and after.frames[0]["payload"]["index"] == 0
    await client.close()


async def test_request_in_progress_does_not_consume_an_index(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    await client.init("busy")
    await client.send(client.message_frame({"prompt": "long", "max_tokens": 300, "temperature": 0.0}, rid="a"))
    assert (await client.recv())["type"] == "encrypted_chunk"
    await client.send(client.forged_frame({"prompt": "meanwhile"}, 1, rid="b"))
    frames = await client.wire.until_end()
    busy = [f for f in frames if f["type"] == "error"]
    assert busy and busy[0]["code"] == "REQUEST_IN_PROGRESS"
    if frames[-1].get("id") == "b":  # the refusal's own stream_end came first; then the answer's
        frames = await client.wire.until_end()
    assert frames[-1]["id"] == "a" and frames[-1]["reason"] == "complete"
    client.e2e.end_response()
    await client.send(client.forged_frame({"prompt": "now", "max_tokens": 2}, 1, rid="c"))
    frames = await client.wire.until_end()
    assert frames[-1]["reason"] == "complete" and frames[-1]["id"] == "c"
    await client.close()


def compressed(body: dict[str, Any]) -> bytes:
    return b"\xff" + zlib.compress(json.dumps(body).encode())


async def test_compressed_inner_payloads(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    await client.init("zip")
    long_prompt = "tell me a story about " + "a very long river " * 20
    await client.send(client.message_frame(compressed({"prompt": long_prompt, "max_tokens": 3, "temperature": 0}),
                                           rid="z"))
    zipped = await client.answer()
    await client.init("zip-twin")
    plain = await client.ask(long_prompt, max_tokens=3)
    assert zipped.text == plain.text and zipped.end["usage"] == plain.end["usage"]
    bad = b"\xff" + b"not zlib at all"
    await client.send(client.message_frame(bad, rid="bad"))
    await client.expect_error("INVALID_PAYLOAD", "bad")
    bomb = b"\xff" + zlib.compress(b" " * (5 << 20), 9)
    await client.send(client.message_frame(bomb, rid="bomb"))
    await client.expect_error("FRAME_TOO_LARGE", "bomb")
    truncated = compressed({"prompt": "x"})[:-3]
    await client.send(client.message_frame(truncated, rid="cut"))
    await client.expect_error("INVALID_PAYLOAD", "cut")
    await client.close()


async def test_encrypted_session_resume(node: NodeServer) -> None:
    client = await E2EWire.open(node.ws_url)
    await client.init("resume")
    history = [{"role": "user", "content": "my name is Ada"}, {"role": "assistant", "content": "hello Ada"},
               {"role": "user", "content": "what is my name"}, {"role": "assistant", "content": "Ada"}]
    body = compressed({"conversation_context": history * 20, "last_message_index": 39})
    await client.send({"type": "session_resume", "session_id": "resume", "id": "r",
                       "payload": client.e2e.encrypt_message(body)})
    resumed = await client.recv()
    assert resumed["type"] == "session_resumed" and resumed["message_index"] == 40 and resumed["id"] == "r"
    assert 0 < resumed["kept_messages"] < 80 and resumed["kept_messages"] + resumed["dropped_messages"] == 80
    client.e2e.end_response()
    answer = await client.ask("and now?", max_tokens=2, message_index=40)  # message_1 under the same key
    assert answer.end["message_index"] == 40
    await client.send({"type": "session_resume", "session_id": "resume", "id": "r2",
                       "payload": client.e2e.encrypt_message("not json")})
    await client.expect_error("INVALID_MESSAGE", "r2")
    await client.close()


async def test_public_subset_node_serves_encrypted_sessions(node_factory: NodeFactory) -> None:
    node: NodeServer = await node_factory(extensions=False)
    client = await E2EWire.open(node.ws_url, host_public_key=node.runtime.e2e_public_key)
    assert client.hello == {"type": "connected", "message": "WebSocket connected successfully"}
    ack = await client.init("pub", "7")
    assert "features" not in ack and "message_index" not in ack and ack["client_address"] == CLIENT_ADDRESS
    first = await client.ask("first", max_tokens=2)
    await client.init("pub", "7")
    second = await client.ask("second", max_tokens=2)
    assert "receipt" not in second.end and "message_index" not in second.end
    assert second.end["usage"]["prompt_tokens"] > first.end["usage"]["prompt_tokens"], "history kept per session"
    await client.send(client.message_frame(compressed({"prompt": "zipped"}), rid="z"))
    await client.expect_error("INVALID_UTF8", "z")  # no e2e-compression here: the public node's answer
    await client.send({"type": "session_resume", "session_id": "pub", "id": "r",
                       "payload": client.e2e.encrypt_message("{}")})
    await client.expect_error("UNKNOWN_MESSAGE_TYPE", "r")
    await client.close()


async def test_encryption_switched_off(node_factory: NodeFactory) -> None:
    node: NodeServer = await node_factory(encryption=False)
    client = await E2EWire.open(node.ws_url, host_public_key=node.runtime.e2e_public_key)
    assert "public_key" not in client.hello and "e2e-v1" not in client.hello["features"]
    await client.send(client.init_frame("off", rid="i"))
    await client.expect_error("ENCRYPTION_NOT_SUPPORTED", "i")
    await client.close()


async def test_keys_are_zeroed_when_the_connection_closes(node: NodeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    forgotten: list[ServerE2ESession] = []
    original = ServerE2ESession.forget

    def spy(self: ServerE2ESession) -> None:
        forgotten.append(self)
        original(self)

    monkeypatch.setattr(ServerE2ESession, "forget", spy)
    client = await E2EWire.open(node.ws_url)
    await client.init("z1")
    await client.init("z1", rid="again")  # the first key is zeroed by the re-init
    assert len(forgotten) == 1
    await client.init("z2")
    await client.close()
    async with asyncio.timeout(5):
        while len(forgotten) < 3:
            await asyncio.sleep(0.02)
    assert all(not session.active for session in forgotten)
    assert all(session._cipher._key == bytearray(32) for session in forgotten)


def test_job_id_of() -> None:
    assert job_id_from_session("139") == 139 and job_id_from_session("139n") == 139
    assert job_id_from_session("abc") is None and job_id_from_session("") is None
    assert job_id_from_session("9" * 40) is None
    assert address_of(coincurve.PrivateKey(b"\x01" * 32).public_key.format()).startswith("0x")
