"""The rules every backend keeps, run against each one (SQLite, S3 on a real SeaweedFS, S5 on a fake portal)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from fabstir.errors import StorageError
from fabstir.storage import ConversationStore, Pointer, SqliteBackend, StorageKey, blob_id, sign_pointer
from fabstir.storage.s5 import S5Backend
from fabstir.testing.s5_fake import FakePortal, serve
from tests.storage.conftest import s3_backend


def _code(call: object, *args: object) -> str:
    with pytest.raises(StorageError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code


@pytest.fixture(params=["sqlite", "s3", "s5"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        opened: Any = SqliteBackend(tmp_path / "c.sqlite")
    elif request.param == "s3":
        opened = s3_backend(request.getfixturevalue("seaweed"))
    else:
        with serve(FakePortal()) as url, S5Backend(url, bytes(range(32))) as s5:
            yield s5
        return
    try:
        yield opened
    finally:
        opened.close()


def test_blobs_put_get_list_delete(any_backend: Any) -> None:
    first, second = any_backend.put(b"one"), any_backend.put(b"two")
    assert first == blob_id(b"one") and any_backend.put(b"one") == first
    assert any_backend.get(first) == b"one"
    assert any_backend.list_blobs() == sorted([first, second])
    any_backend.delete(first)
    any_backend.delete(first)
    assert any_backend.list_blobs() == [second]
    assert _code(any_backend.get, first) == "STORAGE_NOT_FOUND"


def test_pointer_sequence_only_moves_forward(any_backend: Any) -> None:
    key = SigningKey.generate()
    any_backend.set_pointer(sign_pointer(key, "p", 2, b"new"))
    assert _code(any_backend.set_pointer, sign_pointer(key, "p", 1, b"old")) == "STORAGE_STALE_POINTER"
    assert _code(any_backend.set_pointer, sign_pointer(key, "p", 2, b"same seq")) == "STORAGE_STALE_POINTER"
    any_backend.set_pointer(sign_pointer(key, "p", 3, b"newer"))
    found = any_backend.get_pointer("p")
    assert found is not None and (found.seq, found.data) == (3, b"newer")
    assert any_backend.list_pointers() == ["p"] and any_backend.get_pointer("q") is None


def test_pointer_of_another_key_or_forged_is_refused(any_backend: Any) -> None:
    any_backend.set_pointer(sign_pointer(SigningKey.generate(), "p", 1, b"mine"))
    code = _code(any_backend.set_pointer, sign_pointer(SigningKey.generate(), "p", 9, b"theirs"))
    assert code == "STORAGE_KEY_INVALID"
    good = sign_pointer(SigningKey.generate(), "q", 1, b"data")
    forged = Pointer(good.name, good.owner, good.seq, b"other data", good.signature)
    assert _code(any_backend.set_pointer, forged) == "STORAGE_TAMPERED"
    assert any_backend.get_pointer("q") is None


def test_pointer_names_with_odd_characters(any_backend: Any) -> None:
    key = SigningKey.generate()
    for name in ("a/b", "key-check", "with space?&%", "é"):
        any_backend.set_pointer(sign_pointer(key, name, 1, name.encode()))
    assert sorted(any_backend.list_pointers()) == sorted(["a/b", "key-check", "with space?&%", "é"])
    found = any_backend.get_pointer("a/b")
    assert found is not None and found.data == b"a/b"


def test_conversation_round_trip(any_backend: Any, key: StorageKey) -> None:
    store = ConversationStore.open(any_backend, key)
    store.add_user_message("s1", "What is the capital of France?", model="m", host="h")
    store.add_answer_chunk("s1", "Paris")
    store.add_answer_chunk("s1", " it is.", done=True)
    store.add_receipt("s1", {"tokens": 4})
    again = ConversationStore.open(any_backend, key)
    conversation = again.load("s1")
    assert [m.content for m in conversation.messages] == ["What is the capital of France?", "Paris it is."]
    assert again.list_conversations() == ["s1"]
    again.delete("s1")
    assert again.list_conversations() == [] and _code(again.load, "s1") == "STORAGE_NOT_FOUND"
    assert _code(ConversationStore.open, any_backend, StorageKey.from_secret(b"\x01" * 32)) == "STORAGE_KEY_INVALID"
