"""The node recovers the real client from an init the public TypeScript SDK signed (its E2EEv1 digest).

Checked against the interoperability vectors (a copy in tests/data/vectors), byte for byte as the SDK made them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fabstir.protocol.e2e import open_encrypted_session_init

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors" / "e2e_vectors.json"


def test_the_public_sdks_init_names_its_real_signer() -> None:
    doc: dict[str, Any] = json.loads(VECTORS.read_bytes())
    init = next(v for v in doc["vectors"] if v["name"] == "encrypted_session_init")
    recovery = next(v for v in doc["vectors"] if v["name"] == "encrypted_session_init_signature_recovery")
    opened = open_encrypted_session_init(init["payload"], doc["keys"]["host"]["private_key"])
    client = doc["keys"]["client_static"]["address_lower"]
    assert opened.client_address == recovery["node_view"]["recovered_address"] != client
    assert opened.sdk_digest_address == recovery["sdk_view"]["recovered_address"] == client
    assert opened.signer_candidates == (opened.client_address, client)


def test_a_tampered_salt_names_nobody_real() -> None:
    doc: dict[str, Any] = json.loads(VECTORS.read_bytes())
    init = next(v for v in doc["vectors"] if v["name"] == "encrypted_session_init")
    payload = {**init["payload"], "saltHex": "11" * 32}
    opened = open_encrypted_session_init(payload, doc["keys"]["host"]["private_key"])
    assert opened.sdk_digest_address != doc["keys"]["client_static"]["address_lower"]
