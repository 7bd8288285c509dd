from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fabstir.errors import StorageError
from fabstir.storage import ConversationStore, Message, SqliteBackend, StorageKey, sign_pointer

from .conftest import SECRET


def _chat(store: ConversationStore, session_id: str = "s1") -> None:
    store.add_user_message(session_id, "What is 2+2?", model="llama-3-8b", host="https://host.example:8080")
    store.add_answer_chunk(session_id, "It is ")
    store.add_answer_chunk(session_id, "4.", done=True)
    store.add_receipt(session_id, {"job_id": 7, "tokens": 3})


def _code(call: object, *args: object) -> str:
    with pytest.raises(StorageError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code


def test_a_conversation_loads_in_order(store: ConversationStore) -> None:
    _chat(store)
    conversation = store.load("s1")
    assert conversation.messages == (
        Message("user", "What is 2+2?", model="llama-3-8b", host="https://host.example:8080"),
        Message("assistant", "It is 4.", model="llama-3-8b", host="https://host.example:8080"),
    )
    assert conversation.receipts == ({"job_id": 7, "tokens": 3},) and not conversation.partial


def test_an_unfinished_answer_is_kept_and_marked_partial(store: ConversationStore) -> None:
    store.add_user_message("s1", "tell me a story")
    store.add_answer_chunk("s1", "Once upon")
    assert store.load("s1").partial and store.load("s1").messages[-1] == Message("assistant", "Once upon", True)
    store.add_user_message("s1", "go on")
    store.add_answer_chunk("s1", "a time", done=True)
    assert [m.partial for m in store.load("s1").messages] == [False, True, False, False]


def test_list_delete_and_no_resurrection(store: ConversationStore, backend: SqliteBackend, key: StorageKey) -> None:
    _chat(store, "a")
    _chat(store, "b")
    assert store.list_conversations() == ["a", "b"]
    old = backend.get_pointer(key.name("a"))
    store.delete("a")
    assert store.list_conversations() == ["b"]
    assert _code(store.load, "a") == "STORAGE_NOT_FOUND"
    assert _code(store.delete, "a") == "STORAGE_NOT_FOUND"
    assert len(backend.list_blobs()) == 4
    assert old is not None and _code(backend.set_pointer, old) == "STORAGE_STALE_POINTER"
    store.add_user_message("a", "fresh start")
    assert [m.content for m in store.load("a").messages] == ["fresh start"]


def test_the_wrong_key_is_refused(store: ConversationStore, backend: SqliteBackend, key: StorageKey) -> None:
    _chat(store)
    other = StorageKey.from_secret(b"\xff" * 32)
    assert _code(ConversationStore.open, backend, other) == "STORAGE_KEY_INVALID"
    unchecked = ConversationStore(backend, other)
    assert unchecked.list_conversations() == []
    assert _code(unchecked.load, "s1") == "STORAGE_NOT_FOUND"
    pointer = backend.get_pointer(key.name("s1"))
    assert pointer is not None
    assert _code(unchecked._head, pointer.name) == "STORAGE_KEY_INVALID"


def test_a_tampered_record_is_detected(store: ConversationStore, backend: SqliteBackend) -> None:
    _chat(store)
    blob = backend.list_blobs()[0]
    with sqlite3.connect(backend.path) as raw:
        data = raw.execute("SELECT data FROM blobs WHERE id = ?", (blob,)).fetchone()[0]
        raw.execute("UPDATE blobs SET data = ? WHERE id = ?", (data[:-1] + bytes([data[-1] ^ 1]), blob))
    assert _code(store.load, "s1") == "STORAGE_TAMPERED"


def test_a_record_rehashed_by_a_lying_backend_is_detected(store: ConversationStore, backend: SqliteBackend) -> None:
    _chat(store)
    victim = backend.list_blobs()[0]
    with sqlite3.connect(backend.path) as raw:
        data = raw.execute("SELECT data FROM blobs WHERE id = ?", (victim,)).fetchone()[0]
    forged = backend.put(data[:-1] + bytes([data[-1] ^ 1]))
    original_get = backend.get
    backend.get = lambda blob: original_get(forged if blob == victim else blob)  # type: ignore[method-assign]
    assert _code(store.load, "s1") == "STORAGE_TAMPERED"


def test_a_forged_pointer_is_detected(store: ConversationStore, backend: SqliteBackend, key: StorageKey) -> None:
    _chat(store)
    name = key.name("s1")
    with sqlite3.connect(backend.path) as raw:
        raw.execute("UPDATE pointers SET seq = seq + 5 WHERE name = ?", (name,))
    assert _code(store.load, "s1") == "STORAGE_TAMPERED"


def test_an_older_pointer_is_refused(store: ConversationStore, backend: SqliteBackend, key: StorageKey) -> None:
    store.add_user_message("s1", "first")
    old = backend.get_pointer(key.name("s1"))
    store.add_user_message("s1", "second")
    assert old is not None and _code(backend.set_pointer, old) == "STORAGE_STALE_POINTER"
    resigned = sign_pointer(key.pointer_key(old.name), old.name, old.seq, old.data)
    assert _code(backend.set_pointer, resigned) == "STORAGE_STALE_POINTER"
    assert [m.content for m in store.load("s1").messages] == ["first", "second"]


def test_two_stores_on_one_file_interleave(tmp_path: Path, key: StorageKey) -> None:
    with SqliteBackend(tmp_path / "c.sqlite") as one, SqliteBackend(tmp_path / "c.sqlite") as two:
        first, second = ConversationStore.open(one, key), ConversationStore.open(two, key)
        for i in range(4):
            (first if i % 2 else second).add_user_message("s", str(i))
        assert [m.content for m in first.load("s").messages] == ["0", "1", "2", "3"]


def test_another_process_with_the_key_reads_it(store: ConversationStore, backend: SqliteBackend) -> None:
    _chat(store)
    code = ("import sys; from fabstir.storage import *\n"
            "store = ConversationStore.open(SqliteBackend(sys.argv[1]), StorageKey.from_secret(bytes.fromhex(sys.argv[2])))\n"
            "print(store.list_conversations()); print(store.export('s1', 'messages'))")
    out = subprocess.run([sys.executable, "-c", code, str(backend.path), SECRET.hex()],
                         check=True, capture_output=True, text=True).stdout
    listed, messages = out.split("\n", 1)
    assert listed == "['s1']"
    assert json.loads(messages) == [{"role": "user", "content": "What is 2+2?"},
                                    {"role": "assistant", "content": "It is 4."}]


def test_the_files_hold_no_plaintext(store: ConversationStore, backend: SqliteBackend) -> None:
    _chat(store, "session-visible-id")
    raw = b"".join(p.read_bytes() for p in backend.path.parent.iterdir())
    for secret in ["What is 2+2?", "It is ", "llama-3-8b", "host.example", "session-visible-id", "job_id"]:
        assert secret.encode() not in raw, secret
        assert secret.encode("utf-16-le") not in raw, secret


def test_exports(store: ConversationStore) -> None:
    _chat(store)
    store.add_user_message("s1", "and 3+3?")
    store.add_answer_chunk("s1", "6")
    as_json = json.loads(store.export("s1", "json"))
    assert as_json["partial"] is True and as_json["receipts"] == [{"job_id": 7, "tokens": 3}]
    assert [m["role"] for m in as_json["messages"]] == ["user", "assistant", "user", "assistant"]
    markdown = store.export("s1", "markdown")
    assert "## User\n\nWhat is 2+2?" in markdown and "## Assistant (unfinished)\n\n6" in markdown
    assert json.loads(store.export("s1", "messages"))[-1] == {"role": "assistant", "content": "6"}
    assert _code(store.export, "s1", "yaml") == "STORAGE_BAD_FORMAT"
