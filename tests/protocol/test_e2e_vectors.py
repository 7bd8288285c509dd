"""Byte-for-byte interoperability with the TS SDK's E2E crypto (tests/data/vectors/e2e_vectors.json).

The vectors were produced by the public SDK's own code (see the README beside them); the repository
keeps a copy as test data, pinned by the sha256 its README gives. Every input, intermediate value and
output they give is checked here, from the client side (we reproduce the SDK's bytes) and from the
host side (we open the SDK's init and message, and produce the node's chunks from the given nonces).
Set ``FABSTIR_SHARED_VECTORS`` to another folder (or file) to check another copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import coincurve
import nacl.bindings
import pytest

from fabstir.protocol.e2e import (
    ALG,
    ClientE2ESession,
    InitReplayCache,
    ServerE2ESession,
    SessionInitPayload,
    address_of,
    build_encrypted_session_init,
    derive_init_key,
    e2eev1_preimage,
    ecdh_shared_point,
    encrypt_chunk_payload,
    encrypt_message_payload,
    encrypt_response_final_payload,
    hkdf_extract,
    open_encrypted_session_init,
    recover_address,
    xchacha_decrypt,
    xchacha_encrypt,
)

VECTORS_SHA256 = "14c8afde221e6886ff7f09e099764b9020dd78d133efe903f0df9e0d9785bc55"
AEAD_VECTORS = ["encrypted_session_init", "encrypted_message_0", "encrypted_chunk_0", "encrypted_chunk_1",
                "encrypted_chunk_2", "encrypted_response_final"]


VECTORS_DIR = Path(__file__).resolve().parents[1] / "data" / "vectors"
"""The repository's copy of the vectors and their README."""


def vectors_path() -> Path:
    base = Path(os.environ.get("FABSTIR_SHARED_VECTORS", VECTORS_DIR))
    return base if base.suffix == ".json" else base / "e2e_vectors.json"


@pytest.fixture(scope="module")
def raw() -> bytes:
    return vectors_path().read_bytes()


@pytest.fixture(scope="module")
def doc(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    return data


def vec(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(v for v in doc["vectors"] if v["name"] == name)
    return found


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.fixture(scope="module")
def init_payload(doc: dict[str, Any]) -> SessionInitPayload:
    fixed = doc["fixed_inputs"]
    return SessionInitPayload(job_id=fixed["job_id"], model_name=fixed["model_id"],
                              session_key=h(fixed["session_key"]["hex"]), price_per_token=fixed["price_per_token"],
                              recovery_public_key="0x" + doc["keys"]["client_static"]["public_key_compressed"])


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 written out here, independent of libsodium, to check the AEAD internals."""
    mask = 0xFFFFFFFF
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]

    def quarter(a: int, b: int, c: int, d: int) -> None:
        for x, y, z, r in ((a, b, d, 16), (c, d, b, 12), (a, b, d, 8), (c, d, b, 7)):
            s[x] = (s[x] + s[y]) & mask
            s[z] ^= s[x]
            s[z] = ((s[z] << r) & mask) | (s[z] >> (32 - r))

    for _ in range(10):
        for q in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                  (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            quarter(*q)
    return struct.pack("<8I", *s[0:4], *s[12:16])


# --- the file itself -----------------------------------------------------------


def test_file_is_the_pinned_one(raw: bytes) -> None:
    assert hashlib.sha256(raw).hexdigest() == VECTORS_SHA256


def test_repository_copy_matches_the_sha256_its_readme_pins() -> None:
    readme = (VECTORS_DIR / "README.md").read_text(encoding="utf-8")
    pinned = re.search(r"`e2e_vectors\.json` \(sha256 `([0-9a-f]{64})`, ([\d,]+) bytes\)", readme)
    assert pinned is not None, "the README no longer pins the file's sha256"
    data = (VECTORS_DIR / "e2e_vectors.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == pinned.group(1) == VECTORS_SHA256
    assert len(data) == int(pinned.group(2).replace(",", ""))


def test_fixed_inputs_derive_from_their_labels(doc: dict[str, Any]) -> None:
    fixed = doc["fixed_inputs"]
    items = [fixed[k] for k in ("client_static_private_key", "ephemeral_private_key", "host_private_key",
                                "session_key")] + list(fixed["nonces"].values())
    for item in items:
        digest = hashlib.sha256(("fabstir-e2e-vectors/v1/" + item["label"]).encode()).digest()
        assert digest[: len(h(item["hex"]))].hex() == item["hex"], item["label"]


@pytest.mark.parametrize("who", ["client_static", "host", "ephemeral"])
def test_keys_and_addresses(doc: dict[str, Any], who: str) -> None:
    key = doc["keys"][who]
    public = coincurve.PrivateKey(h(key["private_key"])).public_key
    assert public.format(compressed=True).hex() == key["public_key_compressed"]
    assert public.format(compressed=False).hex() == key["public_key_uncompressed"]
    assert address_of(h(key["public_key_compressed"])) == key["address_lower"]
    assert address_of(h(key["public_key_uncompressed"])) == key["address_eip55"].lower()


def test_hchacha20_reference_vector() -> None:
    # draft-irtf-cfrg-xchacha-03 §2.2.1
    key = bytes(range(32))
    nonce = h("000000090000004a0000000031415927")
    assert hchacha20(key, nonce).hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"


# --- session init: key derivation ------------------------------------------------


def test_ecdh_from_both_sides(doc: dict[str, Any]) -> None:
    inter, keys = vec(doc, "encrypted_session_init")["intermediates"], doc["keys"]
    client_side = ecdh_shared_point(h(keys["ephemeral"]["private_key"]), h(keys["host"]["public_key_compressed"]))
    host_side = ecdh_shared_point(h(keys["host"]["private_key"]), h(keys["ephemeral"]["public_key_uncompressed"]))
    assert client_side.hex() == host_side.hex() == inter["ecdh_shared_point_compressed"]
    assert client_side[1:].hex() == inter["ecdh_shared_x"]


def test_hkdf(doc: dict[str, Any]) -> None:
    v = vec(doc, "encrypted_session_init")
    inter, shared_x = v["intermediates"], h(v["intermediates"]["ecdh_shared_x"])
    assert v["inputs"]["hkdf_salt_hex"] == "00" * 32 and v["inputs"]["hkdf_info_hex"] == ""
    assert hkdf_extract(None, shared_x).hex() == inter["hkdf_prk"]
    assert hkdf_extract(bytes(32), shared_x).hex() == inter["hkdf_prk"]
    assert derive_init_key(shared_x).hex() == inter["k_init"]


# --- every AEAD vector: internals and output -------------------------------------


def aead_inputs(doc: dict[str, Any], name: str) -> tuple[bytes, bytes, bytes, bytes]:
    v = vec(doc, name)
    inputs = v["inputs"]
    key = h(v["intermediates"]["k_init"] if name == "encrypted_session_init" else inputs["key"])
    return key, h(inputs["nonce"]), h(inputs["plaintext_hex"]), h(inputs["aad_hex"])


@pytest.mark.parametrize("name", AEAD_VECTORS)
def test_aead_internals(doc: dict[str, Any], name: str) -> None:
    inter, payload = vec(doc, name)["intermediates"], vec(doc, name)["payload"]
    key, nonce, plaintext, aad = aead_inputs(doc, name)
    subkey, ietf_nonce = hchacha20(key, nonce[:16]), bytes(4) + nonce[16:]
    assert subkey.hex() == inter["hchacha20_subkey_hex"]
    assert ietf_nonce.hex() == inter["ietf_nonce_hex"]
    assert len(plaintext) == inter["plaintext_len"]
    ietf = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, aad, ietf_nonce, subkey)
    assert ietf.hex() == inter["ciphertext_body_hex"] + inter["poly1305_tag_hex"] == payload["ciphertextHex"]


@pytest.mark.parametrize("name", AEAD_VECTORS)
def test_aead_encrypt_and_decrypt(doc: dict[str, Any], name: str) -> None:
    payload = vec(doc, name)["payload"]
    key, nonce, plaintext, aad = aead_inputs(doc, name)
    assert payload["nonceHex"] == nonce.hex() and payload["aadHex"] == aad.hex()
    assert xchacha_encrypt(key, nonce, plaintext, aad).hex() == payload["ciphertextHex"]
    assert xchacha_decrypt(key, nonce, h(payload["ciphertextHex"]), aad) == plaintext


# --- session init: client side ---------------------------------------------------


def test_init_plaintext_is_the_sdks(doc: dict[str, Any], init_payload: SessionInitPayload) -> None:
    inputs = vec(doc, "encrypted_session_init")["inputs"]
    assert init_payload.to_json_bytes() == inputs["plaintext_json"].encode() == h(inputs["plaintext_hex"])


def test_e2eev1_preimage_digest_and_signature(doc: dict[str, Any]) -> None:
    v = vec(doc, "encrypted_session_init")
    inputs, inter, payload = v["inputs"], v["intermediates"], v["payload"]
    preimage = e2eev1_preimage(h(payload["ephPubHex"]), h(inputs["host_public_key_compressed"]),
                               h(inputs["hkdf_salt_hex"]), h(inputs["nonce"]), h(inputs["hkdf_info_hex"]),
                               h(inputs["aad_hex"]))
    assert preimage.hex() == inter["sig_preimage_hex"]
    assert hashlib.sha256(preimage).hexdigest() == inter["sig_digest_sha256_e2eev1"]
    signature = h(payload["signatureHex"])
    assert signature[:32].hex() == inter["sig_r"] and signature[32:64].hex() == inter["sig_s"]
    assert signature[64] == inter["sig_recid"] == payload["recid"]
    assert hashlib.sha256(h(payload["ciphertextHex"])).hexdigest() == inter["sha256_ciphertext"]


def test_build_reproduces_the_sdk_payload(doc: dict[str, Any], init_payload: SessionInitPayload) -> None:
    v = vec(doc, "encrypted_session_init")
    inputs = v["inputs"]
    payload = build_encrypted_session_init(
        inputs["host_public_key_compressed"], init_payload, inputs["client_static_private_key"],
        eph_private_key=inputs["ephemeral_private_key"], nonce=h(inputs["nonce"]), signature_scheme="e2eev1")
    assert payload == v["payload"]
    assert json.dumps(payload, ensure_ascii=False) == json.dumps(v["payload"], ensure_ascii=False)  # key order too
    assert payload == v["wire_message"]["payload"] and payload["alg"] == ALG
    assert v["scripted_randomness"][1]["bytesHex"] == inputs["nonce"]


def test_build_with_our_scheme_gives_the_informative_signature(doc: dict[str, Any],
                                                               init_payload: SessionInitPayload) -> None:
    inputs = vec(doc, "encrypted_session_init")["inputs"]
    alternative = vec(doc, "encrypted_session_init_signature_recovery")["informative_alternative"]
    payload = build_encrypted_session_init(
        h(inputs["host_public_key_compressed"]), init_payload, h(inputs["client_static_private_key"]),
        eph_private_key=h(inputs["ephemeral_private_key"]), nonce=h(inputs["nonce"]))
    assert payload["ciphertextHex"] == vec(doc, "encrypted_session_init")["payload"]["ciphertextHex"]
    assert payload["signatureHex"] == alternative["signature_hex"]
    opened = open_encrypted_session_init(payload, doc["keys"]["host"]["private_key"])
    assert opened.client_address == alternative["recovered_address"] == doc["keys"]["client_static"]["address_lower"]


# --- session init: host side -----------------------------------------------------


def test_host_opens_the_sdk_init(doc: dict[str, Any], init_payload: SessionInitPayload) -> None:
    v, recovery = vec(doc, "encrypted_session_init"), vec(doc, "encrypted_session_init_signature_recovery")
    opened = open_encrypted_session_init(v["wire_message"]["payload"], doc["keys"]["host"]["private_key"])
    assert opened.init == init_payload
    assert opened.init.session_key.hex() == doc["fixed_inputs"]["session_key"]["hex"]
    assert opened.client_address == recovery["node_view"]["recovered_address"]
    assert recovery["node_recovered_equals_client_static"] is False
    assert opened.client_address != recovery["client_static_address"]
    assert opened.init_id.hex() == doc["keys"]["ephemeral"]["public_key_compressed"][2:]
    cache = InitReplayCache()
    cache.remember(opened)
    assert len(cache) == 1


@pytest.mark.parametrize("view", ["node_view", "sdk_view"])
def test_signature_recovery_views(doc: dict[str, Any], view: str) -> None:
    recovery = vec(doc, "encrypted_session_init_signature_recovery")
    expected, signature = recovery[view], h(recovery["signature_hex"])
    key = coincurve.PublicKey.from_signature_and_message(signature, h(expected["digest_hex"]), hasher=None)
    assert key.format(compressed=False).hex() == expected["recovered_public_key_uncompressed"]
    assert recover_address(signature, h(expected["digest_hex"])) == expected["recovered_address"]
    assert address_of(h(expected["recovered_public_key_uncompressed"])) == expected["recovered_address"]


def test_sdk_view_is_the_client_static_address(doc: dict[str, Any]) -> None:
    recovery = vec(doc, "encrypted_session_init_signature_recovery")
    assert recovery["sdk_view"]["recovered_address"] == recovery["client_static_address"]
    assert recovery["sdk_view"]["recovered_address_eip55_by_sdk_recoverSenderAddress"].lower() == \
        recovery["client_static_address_eip55"].lower() == recovery["client_static_address"]


# --- session traffic ---------------------------------------------------------------


def test_client_encrypts_message_0_like_the_sdk(doc: dict[str, Any]) -> None:
    v = vec(doc, "encrypted_message_0")
    inputs = v["inputs"]
    assert inputs["aad_utf8"] == "message_0" and inputs["aad_hex"] == b"message_0".hex()
    payload = encrypt_message_payload(h(inputs["key"]), inputs["plaintext_json"], 0, nonce=h(inputs["nonce"]))
    assert payload == v["payload"] == v["wire_message"]["payload"]
    session = ClientE2ESession(h(inputs["key"]))
    assert session.encrypt_message(inputs["plaintext_json"], nonce=h(inputs["nonce"])) == v["payload"]
    assert session.next_message_index == 1


def test_host_decrypts_the_sdk_message_0(doc: dict[str, Any]) -> None:
    v = vec(doc, "encrypted_message_0")
    server = ServerE2ESession(h(doc["fixed_inputs"]["session_key"]["hex"]))
    prompt = server.decrypt_message(v["wire_message"]["payload"])
    assert prompt == v["inputs"]["plaintext_json"]
    assert json.loads(prompt)["prompt"] == doc["fixed_inputs"]["prompt"]
    assert server.expected_message_index == 1


def test_host_produces_the_chunks_and_final_response(doc: dict[str, Any]) -> None:
    key = h(doc["fixed_inputs"]["session_key"]["hex"])
    server = ServerE2ESession(key)
    server.decrypt_message(vec(doc, "encrypted_message_0")["payload"])
    for i, text in enumerate(doc["fixed_inputs"]["chunk_texts"]):
        v = vec(doc, f"encrypted_chunk_{i}")
        assert v["inputs"]["plaintext_utf8"] == text and v["inputs"]["aad_utf8"] == f"chunk_{i}"
        nonce = h(v["inputs"]["nonce"])
        assert server.encrypt_chunk(text, nonce=nonce) == v["payload"] == v["wire_message"]["payload"]
        assert encrypt_chunk_payload(key, text, i, nonce=nonce) == v["payload"]
        assert (v["wire_message"].get("final") is True) == (i == 2)
    final = vec(doc, "encrypted_response_final")
    reason = doc["fixed_inputs"]["finish_reason"]
    nonce = h(final["inputs"]["nonce"])
    assert server.encrypt_response_final(reason, nonce=nonce) == final["payload"] == final["wire_message"]["payload"]
    assert encrypt_response_final_payload(key, reason, nonce=nonce) == final["payload"]


def test_client_decrypts_the_node_stream(doc: dict[str, Any]) -> None:
    session = ClientE2ESession(h(doc["fixed_inputs"]["session_key"]["hex"]))
    message = vec(doc, "encrypted_message_0")["inputs"]
    session.encrypt_message(message["plaintext_json"], nonce=h(message["nonce"]))
    texts = []
    for i in range(3):
        wire = vec(doc, f"encrypted_chunk_{i}")["wire_message"]
        assert wire["type"] == "encrypted_chunk" and wire["payload"]["index"] == i
        texts.append(session.decrypt_chunk(wire["payload"], final=wire.get("final") is True))
    assert texts == doc["fixed_inputs"]["chunk_texts"]
    wire = vec(doc, "encrypted_response_final")["wire_message"]
    assert wire["type"] == "encrypted_response"
    assert session.decrypt_response_final(wire["payload"]) == doc["fixed_inputs"]["finish_reason"]
