"""End-to-end encryption of the Fabstir protocol: the public surface (sans-I/O).

The session init (secp256k1 ECDH → HKDF-SHA256 → XChaCha20-Poly1305, a recoverable
ECDSA signature) lives in :mod:`fabstir.protocol.e2e_keys`; the session traffic, the
enforced AAD ordering and key zeroization in :mod:`fabstir.protocol.e2e_session`.

Typical use::

    # SDK
    session = ClientE2ESession()
    init = SessionInitPayload(job_id="139", model_name=model_id, session_key=session.session_key,
                              price_per_token=2000)
    send({"type": "encrypted_session_init", "session_id": "139", "chain_id": 84532,
          "payload": build_encrypted_session_init(host_pub, init, client_key)})
    send({"type": "encrypted_message", "session_id": "139", "id": rid,
          "payload": session.encrypt_message(json.dumps(request))})
    text = session.decrypt_chunk(frame["payload"], final=frame.get("final") is True)

    # node
    opened = open_encrypted_session_init(frame.get("payload"), host_key)
    replays.remember(opened)                          # optional: refuse a replayed init
    server = ServerE2ESession.from_init(opened)       # ack with opened.client_address
    prompt = server.decrypt_message(frame.get("payload"))
    chunk_payload = server.encrypt_chunk("Paris")
    server.forget()                                   # when the session ends

Every failure raises :class:`E2EError` (a :class:`~fabstir.errors.RemoteProtocolError`)
whose ``code`` is an :class:`E2EErrorCode`.
"""

from __future__ import annotations

from fabstir.protocol.e2e_keys import (
    ALG,
    INIT_PAYLOAD_FIELDS,
    NONCE_SIZE,
    E2EError,
    E2EErrorCode,
    OpenedSessionInit,
    SessionInitPayload,
    SignatureScheme,
    address_of,
    build_encrypted_session_init,
    decode_hex,
    derive_init_key,
    e2eev1_preimage,
    ecdh_shared_point,
    hkdf_extract,
    hkdf_sha256,
    open_encrypted_session_init,
    recover_address,
    xchacha_decrypt,
    xchacha_encrypt,
)
from fabstir.protocol.e2e_session import (
    CHUNK_AAD_PREFIX,
    MESSAGE_AAD_PREFIX,
    RESPONSE_FINAL_AAD,
    ClientE2ESession,
    InitReplayCache,
    ReplayGuard,
    SealedPayload,
    ServerE2ESession,
    SessionCipher,
    encrypt_chunk_payload,
    encrypt_message_payload,
    encrypt_response_final_payload,
    parse_sealed_payload,
)

__all__ = [
    "ALG",
    "CHUNK_AAD_PREFIX",
    "INIT_PAYLOAD_FIELDS",
    "MESSAGE_AAD_PREFIX",
    "NONCE_SIZE",
    "RESPONSE_FINAL_AAD",
    "ClientE2ESession",
    "E2EError",
    "E2EErrorCode",
    "InitReplayCache",
    "OpenedSessionInit",
    "ReplayGuard",
    "SealedPayload",
    "ServerE2ESession",
    "SessionCipher",
    "SessionInitPayload",
    "SignatureScheme",
    "address_of",
    "build_encrypted_session_init",
    "decode_hex",
    "derive_init_key",
    "e2eev1_preimage",
    "ecdh_shared_point",
    "encrypt_chunk_payload",
    "encrypt_message_payload",
    "encrypt_response_final_payload",
    "hkdf_extract",
    "hkdf_sha256",
    "open_encrypted_session_init",
    "parse_sealed_payload",
    "recover_address",
    "xchacha_decrypt",
    "xchacha_encrypt",
]
