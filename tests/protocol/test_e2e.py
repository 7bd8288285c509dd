"""Pure tests of the E2E core: round trips, every coded failure, the enforced AAD order, key zeroization."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir.errors import RemoteProtocolError
from fabstir.protocol.e2e import (
    INIT_PAYLOAD_FIELDS,
    ClientE2ESession,
    E2EError,
    E2EErrorCode,
    InitReplayCache,
    ReplayGuard,
    ServerE2ESession,
    SessionCipher,
    SessionInitPayload,
    address_of,
    build_encrypted_session_init,
    derive_init_key,
    ecdh_shared_point,
    open_encrypted_session_init,
    recover_address,
    xchacha_encrypt,
)

C = E2EErrorCode
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def secret(label: str) -> bytes:
    return hashlib.sha256(f"fabstir-tests/{label}".encode()).digest()


HOST_KEY, CLIENT_KEY, SESSION_KEY = secret("host"), secret("client"), secret("session")
HOST_PUB = coincurve.PrivateKey(HOST_KEY).public_key.format()
CLIENT_ADDRESS = address_of(coincurve.PrivateKey(CLIENT_KEY).public_key.format())
INIT = SessionInitPayload(job_id="42", model_name="model-é", session_key=SESSION_KEY, price_per_token=2000)


def code(fn: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(E2EError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, RemoteProtocolError)
    return str(info.value.code)


def sealed_init(**overrides: Any) -> dict[str, Any]:
    return build_encrypted_session_init(HOST_PUB, INIT, CLIENT_KEY, **overrides)


def seal_raw_init(plaintext: bytes, aad: bytes = b"") -> dict[str, Any]:
    """A well-formed init around any plaintext, signed over SHA256(ciphertext)."""
    eph = coincurve.PrivateKey(secret("eph"))
    nonce = secret("nonce")[:24]
    ciphertext = xchacha_encrypt(derive_init_key(ecdh_shared_point(eph.secret, HOST_PUB)[1:]), nonce, plaintext, aad)
    signature = coincurve.PrivateKey(CLIENT_KEY).sign_recoverable(hashlib.sha256(ciphertext).digest(), hasher=None)
    return {"ephPubHex": eph.public_key.format().hex(), "ciphertextHex": ciphertext.hex(),
            "signatureHex": signature.hex(), "nonceHex": nonce.hex(), "aadHex": aad.hex()}


def open_init(payload: object) -> Any:
    return open_encrypted_session_init(payload, HOST_KEY)


# --- session init ----------------------------------------------------------------


class TestInitRoundTrip:
    def test_our_scheme_recovers_the_client_address(self) -> None:
        opened = open_init(sealed_init())
        assert opened.init == INIT and opened.client_address == CLIENT_ADDRESS

    def test_sdk_scheme_opens_with_an_unrelated_address(self) -> None:
        opened = open_init(sealed_init(signature_scheme="e2eev1"))
        assert opened.init == INIT
        assert opened.client_address.startswith("0x") and len(opened.client_address) == 42
        assert opened.client_address != CLIENT_ADDRESS

    def test_fresh_ephemeral_key_and_nonce_each_time(self) -> None:
        a, b = sealed_init(), sealed_init()
        assert a["ephPubHex"] != b["ephPubHex"] and a["nonceHex"] != b["nonceHex"]
        assert open_init(a).init == open_init(b).init == INIT

    def test_deterministic_given_key_and_nonce(self) -> None:
        fixed = {"eph_private_key": secret("eph"), "nonce": secret("n")[:24]}
        assert sealed_init(**fixed) == sealed_init(**fixed)

    def test_host_key_as_hex_or_uncompressed(self) -> None:
        fixed = {"eph_private_key": secret("eph"), "nonce": secret("n")[:24]}
        uncompressed = coincurve.PublicKey(HOST_PUB).format(compressed=False)
        assert build_encrypted_session_init("0x" + uncompressed.hex(), INIT, "0x" + CLIENT_KEY.hex(), **fixed) == \
            sealed_init(**fixed)
        assert open_encrypted_session_init(sealed_init(), "0x" + HOST_KEY.hex()).init == INIT

    def test_payload_shape(self) -> None:
        payload = sealed_init()
        assert list(payload) == ["ephPubHex", "saltHex", "nonceHex", "ciphertextHex", "signatureHex", "recid",
                                 "alg", "info", "aadHex"]
        assert len(bytes.fromhex(payload["ephPubHex"])) == 33 and len(bytes.fromhex(payload["nonceHex"])) == 24
        assert bytes.fromhex(payload["signatureHex"])[64] == payload["recid"] in (0, 1)
        assert payload["aadHex"] == "" and payload["saltHex"] == "00" * 32

    def test_accepts_0x_uppercase_and_uncompressed_ephemeral_key(self) -> None:
        payload = sealed_init()
        eph = coincurve.PublicKey(bytes.fromhex(payload["ephPubHex"])).format(compressed=False)
        variant = {**payload, "ephPubHex": "0x" + eph.hex().upper(), "ciphertextHex": "0x" + payload["ciphertextHex"],
                   "nonceHex": payload["nonceHex"].upper(), "aadHex": "0x"}
        assert open_init(variant).init == INIT
        assert open_init(variant).init_id == open_init(payload).init_id

    @pytest.mark.parametrize("v_offset", [27])
    def test_v_27_28(self, v_offset: int) -> None:
        payload = sealed_init()
        signature = bytearray.fromhex(payload["signatureHex"])
        signature[64] += v_offset
        assert open_init({**payload, "signatureHex": signature.hex()}).client_address == CLIENT_ADDRESS

    def test_never_rejects_a_wrong_address(self) -> None:
        payload = sealed_init()
        other = coincurve.PrivateKey(secret("someone")).sign_recoverable(b"\x01" * 32, hasher=None)
        opened = open_init({**payload, "signatureHex": other.hex()})
        assert opened.init == INIT and opened.client_address != CLIENT_ADDRESS

    def test_extra_and_optional_fields(self) -> None:
        body = {"jobId": "7", "modelName": "m", "sessionKey": "0x" + SESSION_KEY.hex().upper(), "pricePerToken": 0,
                "recoveryPublicKey": None, "vectorDatabase": {"manifestPath": "x", "userAddress": "0x0"}, "z": [1]}
        opened = open_init(seal_raw_init(json.dumps(body).encode()))
        assert opened.init == SessionInitPayload("7", "m", SESSION_KEY, 0, None)
        assert opened.client_address == CLIENT_ADDRESS

    def test_init_json_is_raw_utf8_in_sdk_key_order(self) -> None:
        init = SessionInitPayload("1", "é\n", SESSION_KEY, 5, recovery_public_key="0x02")
        assert init.to_json_bytes() == ('{"sessionKey":"' + SESSION_KEY.hex() + '","jobId":"1","modelName":"é\\n",'
                                        '"pricePerToken":5,"recoveryPublicKey":"0x02"}').encode()
        assert SESSION_KEY.hex() not in repr(init)


class TestInitErrors:
    def test_missing_payload(self) -> None:
        assert code(open_init, None) == C.MISSING_PAYLOAD

    @pytest.mark.parametrize("field", INIT_PAYLOAD_FIELDS)
    def test_missing_or_mistyped_field(self, field: str) -> None:
        payload = sealed_init()
        assert code(open_init, {k: v for k, v in payload.items() if k != field}) == C.INVALID_PAYLOAD
        assert code(open_init, {**payload, field: 12}) == C.INVALID_PAYLOAD
        assert code(open_init, {**payload, field: None}) == C.INVALID_PAYLOAD

    @pytest.mark.parametrize("payload", [{}, [], "x", 5, True])
    def test_not_an_object(self, payload: object) -> None:
        assert code(open_init, payload) == C.INVALID_PAYLOAD

    @pytest.mark.parametrize("field", INIT_PAYLOAD_FIELDS)
    @pytest.mark.parametrize("bad", ["zz", "abc", "0X00", " 00", "00 ", "0x0x00", "é0"])
    def test_bad_hex(self, field: str, bad: str) -> None:
        assert code(open_init, {**sealed_init(), field: bad}) == C.INVALID_HEX_ENCODING

    @pytest.mark.parametrize("size", [0, 12, 23, 25, 32])
    def test_nonce_size(self, size: int) -> None:
        assert code(open_init, {**sealed_init(), "nonceHex": "11" * size}) == C.INVALID_NONCE_SIZE

    def test_tampering(self) -> None:
        payload = sealed_init()
        ciphertext = bytearray.fromhex(payload["ciphertextHex"])
        ciphertext[3] ^= 1
        nonce = bytearray.fromhex(payload["nonceHex"])
        nonce[0] ^= 1
        for variant in ({"ciphertextHex": ciphertext.hex()}, {"nonceHex": nonce.hex()}, {"aadHex": "00"},
                        {"ciphertextHex": payload["ciphertextHex"][:-2]}, {"ciphertextHex": ""}):
            assert code(open_init, {**payload, **variant}) == C.DECRYPTION_FAILED, variant

    def test_wrong_host_key(self) -> None:
        assert code(open_encrypted_session_init, sealed_init(), secret("other host")) == C.DECRYPTION_FAILED

    @pytest.mark.parametrize("eph", ["", "02" + "00" * 32, "05" + "11" * 32, "04" + "11" * 64, "11" * 32,
                                     "02" + "ff" * 32])
    def test_bad_ephemeral_key(self, eph: str) -> None:
        assert code(open_init, {**sealed_init(), "ephPubHex": eph}) == C.DECRYPTION_FAILED

    def test_bad_signatures(self) -> None:
        payload = sealed_init()
        signature = bytes.fromhex(payload["signatureHex"])
        r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
        high_s = r + (N - s).to_bytes(32, "big") + bytes([v ^ 1])
        for bad in (signature[:64], signature + b"\x00", r + signature[32:64] + b"\x05", r + signature[32:64] + b"\x1f",
                    high_s, bytes(32) + signature[32:], r + bytes(32) + b"\x00", N.to_bytes(32, "big") + signature[32:]):
            assert code(open_init, {**payload, "signatureHex": bad.hex()}) == C.DECRYPTION_FAILED, bad.hex()

    @pytest.mark.parametrize("body", [
        b"not json", b"\xff\xfe", b"[]", b'"x"', b"{}", b'{"jobId":"1"}',
        b'{"jobId":1,"modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":1}',
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":"1"}',
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":-1}',
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":1.0}',
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":true}',
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":NaN}',
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":'
        + str(1 << 64).encode() + b"}",
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode()[:-2] + b'","pricePerToken":1}',
        b'{"jobId":"1","modelName":"m","sessionKey":"zz","pricePerToken":1}',
        b'{"jobId":"1","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":1,'
        b'"recoveryPublicKey":5}',
        b'{"jobId":"1","jobId":"2","modelName":"m","sessionKey":"' + SESSION_KEY.hex().encode()
        + b'","pricePerToken":1}',
        b'{"jobId":"1","modelName":"\\ud800","sessionKey":"' + SESSION_KEY.hex().encode() + b'","pricePerToken":1}',
        b"[" * 100_000,
        b'{"a":' + b"9" * 5000 + b"}",
    ])
    def test_bad_plaintext(self, body: bytes) -> None:
        assert code(open_init, seal_raw_init(body)) == C.DECRYPTION_FAILED

    def test_bad_local_keys(self) -> None:
        assert code(open_encrypted_session_init, sealed_init(), bytes(32)) == C.INVALID_KEY
        assert code(open_encrypted_session_init, sealed_init(), N.to_bytes(32, "big")) == C.INVALID_KEY
        assert code(open_encrypted_session_init, sealed_init(), "zz") == C.INVALID_HEX_ENCODING
        assert code(build_encrypted_session_init, HOST_PUB[:32], INIT, CLIENT_KEY) == C.INVALID_KEY
        assert code(build_encrypted_session_init, HOST_PUB, INIT, b"\x00" * 31) == C.INVALID_KEY
        assert code(build_encrypted_session_init, HOST_PUB, INIT, CLIENT_KEY, eph_private_key=bytes(32)) == \
            C.INVALID_KEY
        assert code(build_encrypted_session_init, HOST_PUB, INIT, CLIENT_KEY, nonce=bytes(12)) == C.INVALID_NONCE_SIZE

    @pytest.mark.parametrize("kwargs", [
        {"session_key": bytes(31)}, {"price_per_token": -1}, {"price_per_token": True}, {"price_per_token": 1 << 64},
        {"job_id": 1}, {"model_name": "\ud800"}, {"recovery_public_key": 3},
    ])
    def test_invalid_init_payload(self, kwargs: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"job_id": "1", "model_name": "m", "session_key": SESSION_KEY, "price_per_token": 1}
        assert code(SessionInitPayload, **{**fields, **kwargs}) == C.INVALID_PAYLOAD


class TestInitReplay:
    def test_replayed_init_is_refused_however_reencoded(self) -> None:
        payload, cache = sealed_init(), InitReplayCache()
        cache.remember(open_init(payload))
        eph = coincurve.PublicKey(bytes.fromhex(payload["ephPubHex"])).format(compressed=False)
        negated = bytes([payload["ephPubHex"][:2] == "02" and 3 or 2]) + bytes.fromhex(payload["ephPubHex"])[1:]
        for variant in (payload, {**payload, "ephPubHex": eph.hex()}, {**payload, "ephPubHex": negated.hex()}):
            opened = open_init(variant)  # the negated point has the same ECDH x, so it decrypts too
            assert code(cache.remember, opened) == C.REPLAYED_MESSAGE
        cache.remember(open_init(sealed_init()))
        assert len(cache) == 2

    def test_capacity(self) -> None:
        cache = InitReplayCache(capacity=2)
        first, second, third = (open_init(sealed_init()) for _ in range(3))
        for opened in (first, second, third):
            cache.remember(opened)
        assert len(cache) == 2
        cache.remember(first)  # evicted, so accepted again
        assert code(cache.remember, third) == C.REPLAYED_MESSAGE


# --- session traffic ----------------------------------------------------------------


def payload_with_aad(key: bytes, aad: bytes, plaintext: bytes = b"hi") -> dict[str, Any]:
    return SessionCipher(key).encrypt(plaintext, aad)


class TestSessionCipher:
    def test_round_trip_and_fresh_nonces(self) -> None:
        cipher = SessionCipher(SESSION_KEY)
        a, b = cipher.encrypt(b"x", b"aad"), cipher.encrypt(b"x", b"aad")
        assert a["nonceHex"] != b["nonceHex"] and a["ciphertextHex"] != b["ciphertextHex"]
        assert cipher.decrypt(a) == cipher.decrypt(b) == b"x"
        assert cipher.decrypt({k: "0x" + v.upper() for k, v in a.items()}) == b"x"

    def test_wrong_key_aad_or_tampering(self) -> None:
        payload = SessionCipher(SESSION_KEY).encrypt(b"hello", b"message_0")
        ciphertext = bytearray.fromhex(payload["ciphertextHex"])
        ciphertext[-1] ^= 0x80
        assert code(SessionCipher(secret("other")).decrypt, payload) == C.DECRYPTION_FAILED
        cipher = SessionCipher(SESSION_KEY)
        for variant in ({"aadHex": b"message_1".hex()}, {"aadHex": ""}, {"ciphertextHex": ciphertext.hex()},
                        {"ciphertextHex": payload["ciphertextHex"][:30]}, {"ciphertextHex": ""}):
            assert code(cipher.decrypt, {**payload, **variant}) == C.DECRYPTION_FAILED

    def test_payload_errors(self) -> None:
        cipher, payload = SessionCipher(SESSION_KEY), SessionCipher(SESSION_KEY).encrypt(b"x", b"a")
        assert code(cipher.decrypt, None) == C.MISSING_PAYLOAD
        for bad in ({}, [], "x", {**payload, "nonceHex": 1}, {k: v for k, v in payload.items() if k != "aadHex"}):
            assert code(cipher.decrypt, bad) == C.MISSING_PAYLOAD_FIELDS
        assert code(cipher.decrypt, {**payload, "aadHex": "0g"}) == C.INVALID_HEX_ENCODING
        for size in (0, 12, 23, 25):
            assert code(cipher.decrypt, {**payload, "nonceHex": "00" * size}) == C.INVALID_NONCE_SIZE
            assert code(cipher.encrypt, b"x", b"a", bytes(size)) == C.INVALID_NONCE_SIZE

    def test_key_size(self) -> None:
        assert code(SessionCipher, bytes(31)) == C.INVALID_KEY
        assert code(SessionCipher, "00" * 32) == C.INVALID_KEY

    def test_forget_zeroizes(self) -> None:
        cipher = SessionCipher(SESSION_KEY)
        payload = cipher.encrypt(b"x", b"a")
        cipher.forget()
        assert cipher._key == bytearray(32) and not cipher.active  # the key buffer itself is wiped
        assert code(cipher.decrypt, payload) == C.SESSION_KEY_NOT_FOUND
        assert code(cipher.encrypt, b"x", b"a") == C.SESSION_KEY_NOT_FOUND


class TestReplayGuard:
    @pytest.mark.parametrize("aad", [b"message_01", b"message_-1", b"message_", b"msg_0", b"message_0 ",
                                     b" message_0", b"message_+0", b"message_\xd9\xa0", b"", b"chunk_0",
                                     b"message_" + b"1" * 30])
    def test_malformed_labels(self, aad: bytes) -> None:
        assert code(ReplayGuard("message_").check, aad) == C.INVALID_MESSAGE_INDEX

    def test_order(self) -> None:
        guard = ReplayGuard("chunk_")
        assert guard.check(b"chunk_0") == 0
        assert guard.check(b"chunk_0") == 0  # check alone does not advance
        guard.advance()
        assert code(guard.check, b"chunk_0") == C.REPLAYED_MESSAGE
        assert code(guard.check, b"chunk_2") == C.INVALID_MESSAGE_INDEX
        assert guard.check(b"chunk_1") == 1 and guard.expected == 1
        guard.reset()
        assert guard.expected == 0


def converse(client: ClientE2ESession, server: ServerE2ESession, prompt: str,
             tokens: list[str]) -> tuple[str, list[str], str]:
    received = server.decrypt_message(client.encrypt_message(prompt))
    chunks = [server.encrypt_chunk(t) for t in tokens] + [server.encrypt_chunk("")]
    texts = [client.decrypt_chunk(c, final=i == len(tokens)) for i, c in enumerate(chunks)]
    return received, texts, client.decrypt_response_final(server.encrypt_response_final("stop"))


class TestSessions:
    def test_conversation_round_trip(self) -> None:
        client = ClientE2ESession()
        opened = open_init(build_encrypted_session_init(
            HOST_PUB, SessionInitPayload("1", "m", client.session_key, 10), CLIENT_KEY))
        server = ServerE2ESession.from_init(opened)
        for turn in range(3):
            prompt = json.dumps({"prompt": f"turn {turn} ✓"})
            assert converse(client, server, prompt, ["Par", "is"]) == (prompt, ["Par", "is", ""], "stop")
        assert client.next_message_index == server.expected_message_index == 3

    def test_server_rejects_replayed_and_reordered_messages(self) -> None:
        client, server = ClientE2ESession(SESSION_KEY), ServerE2ESession(SESSION_KEY)
        m0, m1, m2 = (client.encrypt_message(f"p{i}") for i in range(3))
        assert code(server.decrypt_message, m1) == C.INVALID_MESSAGE_INDEX  # reordered: nothing consumed
        assert server.decrypt_message(m0) == "p0"
        assert code(server.decrypt_message, m0) == C.REPLAYED_MESSAGE
        assert code(server.decrypt_message, m2) == C.INVALID_MESSAGE_INDEX
        assert server.decrypt_message(m1) == "p1" and server.decrypt_message(m2) == "p2"
        assert code(server.decrypt_message, m1) == C.REPLAYED_MESSAGE

    def test_forged_message_does_not_advance(self) -> None:
        server = ServerE2ESession(SESSION_KEY)
        assert code(server.decrypt_message, payload_with_aad(secret("x"), b"message_0")) == C.DECRYPTION_FAILED
        assert server.expected_message_index == 0
        assert server.decrypt_message(payload_with_aad(SESSION_KEY, b"message_0")) == "hi"

    def test_invalid_utf8_is_consumed(self) -> None:
        server = ServerE2ESession(SESSION_KEY)
        assert code(server.decrypt_message, payload_with_aad(SESSION_KEY, b"message_0", b"\xff")) == C.INVALID_UTF8
        assert server.expected_message_index == 1

    def test_server_chunk_indices(self) -> None:
        server = ServerE2ESession(SESSION_KEY)
        server.decrypt_message(payload_with_aad(SESSION_KEY, b"message_0"))
        assert [server.encrypt_chunk("t")["index"] for _ in range(3)] == [0, 1, 2]
        server.encrypt_response_final("stop")
        assert server.encrypt_chunk("t")["index"] == 0
        server.decrypt_message(payload_with_aad(SESSION_KEY, b"message_1"))
        chunk = server.encrypt_chunk(b"t")
        assert chunk["index"] == 0 and chunk["aadHex"] == b"chunk_0".hex()

    def test_client_rejects_replayed_and_reordered_chunks(self) -> None:
        client, server = ClientE2ESession(SESSION_KEY), ServerE2ESession(SESSION_KEY)
        server.decrypt_message(client.encrypt_message("p"))
        c0, c1, c2 = server.encrypt_chunk("a"), server.encrypt_chunk("b"), server.encrypt_chunk("")
        assert code(client.decrypt_chunk, c1) == C.INVALID_MESSAGE_INDEX
        assert client.decrypt_chunk(c0) == "a"
        assert code(client.decrypt_chunk, c0) == C.REPLAYED_MESSAGE
        assert client.decrypt_chunk(c1) == "b" and client.decrypt_chunk(c2, final=True) == ""
        assert code(client.decrypt_chunk, server.encrypt_chunk("late")) == C.INVALID_MESSAGE_INDEX
        final = server.encrypt_response_final("length")
        assert client.decrypt_response_final(final) == "length"
        assert code(client.decrypt_response_final, final) == C.REPLAYED_MESSAGE
        assert code(client.decrypt_chunk, c0) == C.REPLAYED_MESSAGE  # no response in progress

    def test_chunk_index_field_must_match_its_aad(self) -> None:
        client = ClientE2ESession(SESSION_KEY)
        client.encrypt_message("p")
        chunk = SessionCipher(SESSION_KEY).encrypt(b"a", b"chunk_0")
        for bad in (1, True, "0", 0.0):
            assert code(client.decrypt_chunk, {**chunk, "index": bad}) == C.INVALID_MESSAGE_INDEX
        assert client.decrypt_chunk(chunk) == "a"  # index is optional; the AAD is what counts

    def test_response_final_needs_its_aad(self) -> None:
        client = ClientE2ESession(SESSION_KEY)
        client.encrypt_message("p")
        assert code(client.decrypt_response_final, payload_with_aad(SESSION_KEY, b"chunk_0")) == \
            C.INVALID_MESSAGE_INDEX
        assert code(client.decrypt_response_final,
                    payload_with_aad(secret("x"), b"encrypted_response_final")) == C.DECRYPTION_FAILED
        assert client.decrypt_response_final(payload_with_aad(SESSION_KEY, b"encrypted_response_final")) == "hi"

    def test_end_response_after_cancel(self) -> None:
        client, server = ClientE2ESession(SESSION_KEY), ServerE2ESession(SESSION_KEY)
        server.decrypt_message(client.encrypt_message("p"))
        client.decrypt_chunk(server.encrypt_chunk("a"))
        client.end_response()  # stream_end{reason: cancelled}, no encrypted_response
        assert code(client.decrypt_chunk, server.encrypt_chunk("b")) == C.REPLAYED_MESSAGE
        assert converse(client, server, "q", ["c"])[1] == ["c", ""]

    def test_cross_response_chunk_replay_needs_a_new_key(self) -> None:
        # Within one key, "chunk_0" of an old response looks like "chunk_0" of the next one: the public
        # protocol's AAD does not name the message. A fresh init (new key) per prompt, as the TS SDK does, stops it.
        client, server = ClientE2ESession(SESSION_KEY), ServerE2ESession(SESSION_KEY)
        server.decrypt_message(client.encrypt_message("p"))
        old = server.encrypt_chunk("old")
        fresh = ClientE2ESession()
        fresh.encrypt_message("q")
        assert code(fresh.decrypt_chunk, old) == C.DECRYPTION_FAILED

    def test_forget(self) -> None:
        client, server = ClientE2ESession(SESSION_KEY), ServerE2ESession(SESSION_KEY)
        message = client.encrypt_message("p")
        for session in (client, server):
            session.forget()
            assert not session.active and session._cipher._key == bytearray(32)
        assert code(server.decrypt_message, message) == C.SESSION_KEY_NOT_FOUND
        assert code(server.encrypt_chunk, "x") == C.SESSION_KEY_NOT_FOUND
        assert code(server.encrypt_response_final, "stop") == C.SESSION_KEY_NOT_FOUND
        assert code(client.encrypt_message, "p") == C.SESSION_KEY_NOT_FOUND
        assert code(client.decrypt_chunk, message) == C.SESSION_KEY_NOT_FOUND
        assert code(client.decrypt_response_final, message) == C.SESSION_KEY_NOT_FOUND
        with pytest.raises(E2EError):
            client.session_key  # noqa: B018


# --- recovery details ------------------------------------------------------------


def test_recover_address_accepts_v_0_1_27_28_only_when_valid() -> None:
    digest = hashlib.sha256(b"m").digest()
    signature = coincurve.PrivateKey(CLIENT_KEY).sign_recoverable(digest, hasher=None)
    assert recover_address(signature, digest) == CLIENT_ADDRESS
    assert recover_address(signature[:64] + bytes([signature[64] + 27]), digest) == CLIENT_ADDRESS
    assert recover_address(signature[:64] + bytes([signature[64] ^ 1]), digest) != CLIENT_ADDRESS
    for v in (4, 26, 31, 255):
        assert code(recover_address, signature[:64] + bytes([v]), digest) == C.DECRYPTION_FAILED
    assert code(recover_address, signature, digest[:31]) == C.DECRYPTION_FAILED


# --- fuzz: nothing but the coded protocol error ------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
hexish = st.one_of(st.binary(max_size=80).map(bytes.hex), st.binary(max_size=80).map(lambda b: "0x" + b.hex()),
                   st.sampled_from(["", "0x", "zz", "0", "0X00", "\u0660\u0661"]), st.text(max_size=20))
field_names = st.sampled_from([*INIT_PAYLOAD_FIELDS, "index", "recid", "saltHex"])
payloads = st.one_of(json_values, st.binary(max_size=60),
                     st.dictionaries(field_names, st.one_of(hexish, json_values, st.binary(max_size=8)), max_size=7))
ALL_CODES = set(E2EErrorCode)


def only_e2e_errors(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except E2EError as exc:
        assert exc.code in ALL_CODES
        return exc


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_fuzz_every_decrypt_path(payload: object) -> None:
    only_e2e_errors(lambda: open_init(payload))
    only_e2e_errors(lambda: SessionCipher(SESSION_KEY).decrypt(payload))
    only_e2e_errors(lambda: ServerE2ESession(SESSION_KEY).decrypt_message(payload))
    client = ClientE2ESession(SESSION_KEY)
    client.encrypt_message("p")
    only_e2e_errors(lambda: client.decrypt_chunk(payload, final=True))
    only_e2e_errors(lambda: client.decrypt_response_final(payload))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(INIT_PAYLOAD_FIELDS), st.integers(0, 200), st.integers(1, 255))
def test_fuzz_mutated_init(field: str, position: int, flip: int) -> None:
    payload = sealed_init(eph_private_key=secret("eph"), nonce=secret("n")[:24])
    raw = bytearray.fromhex(payload[field] or "00")
    raw[position % len(raw)] ^= flip
    result = only_e2e_errors(lambda: open_init({**payload, field: raw.hex()}))
    if not isinstance(result, E2EError):
        # a different valid signature only changes the address; 02<->03 negates E, with the same ECDH x
        assert field == "signatureHex" or (field == "ephPubHex" and raw[0] in (2, 3) and position % 33 == 0)


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=100)))
def test_fuzz_init_plaintext(body: bytes) -> None:
    result = only_e2e_errors(lambda: open_init(seal_raw_init(body)))
    assert not isinstance(result, E2EError) or result.code == C.DECRYPTION_FAILED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 3))
def test_fuzz_aad_labels(aad: bytes, expected: int) -> None:
    guard = ReplayGuard("message_")
    for _ in range(expected):
        guard.advance()
    result = only_e2e_errors(lambda: guard.check(aad))
    assert result == expected or isinstance(result, E2EError)
    if result == expected:
        assert aad == f"message_{expected}".encode()
