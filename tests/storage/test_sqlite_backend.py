from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from fabstir.errors import StorageError
from fabstir.storage import Pointer, SqliteBackend, blob_id, default_path, sign_pointer


def _code(call: object, *args: object) -> str:
    with pytest.raises(StorageError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code


def test_blobs_put_get_list_delete(backend: SqliteBackend) -> None:
    first, second = backend.put(b"one"), backend.put(b"two")
    assert first == blob_id(b"one") and backend.put(b"one") == first
    assert backend.get(first) == b"one"
    assert backend.list_blobs() == sorted([first, second])
    backend.delete(first)
    backend.delete(first)
    assert backend.list_blobs() == [second]
    assert _code(backend.get, first) == "STORAGE_NOT_FOUND"


def test_a_blob_changed_in_the_file_is_detected(backend: SqliteBackend) -> None:
    blob = backend.put(b"sealed bytes")
    with sqlite3.connect(backend.path) as raw:
        raw.execute("UPDATE blobs SET data = ? WHERE id = ?", (b"sealed bytez", blob))
    assert _code(backend.get, blob) == "STORAGE_TAMPERED"


def test_pointer_sequence_only_moves_forward(backend: SqliteBackend) -> None:
    key = SigningKey.generate()
    backend.set_pointer(sign_pointer(key, "p", 2, b"new"))
    assert _code(backend.set_pointer, sign_pointer(key, "p", 1, b"old")) == "STORAGE_STALE_POINTER"
    assert _code(backend.set_pointer, sign_pointer(key, "p", 2, b"same seq")) == "STORAGE_STALE_POINTER"
    backend.set_pointer(sign_pointer(key, "p", 3, b"newer"))
    found = backend.get_pointer("p")
    assert found is not None and (found.seq, found.data) == (3, b"newer")
    assert backend.list_pointers() == ["p"] and backend.get_pointer("q") is None


def test_pointer_of_another_key_or_forged_is_refused(backend: SqliteBackend) -> None:
    backend.set_pointer(sign_pointer(SigningKey.generate(), "p", 1, b"mine"))
    assert _code(backend.set_pointer, sign_pointer(SigningKey.generate(), "p", 9, b"theirs")) == "STORAGE_KEY_INVALID"
    good = sign_pointer(SigningKey.generate(), "q", 1, b"data")
    forged = Pointer(good.name, good.owner, good.seq, b"other data", good.signature)
    assert _code(backend.set_pointer, forged) == "STORAGE_TAMPERED"
    assert backend.get_pointer("q") is None


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "fabstir" / "conversations.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "share" / "fabstir" / "conversations.sqlite"


def test_new_file_is_private(tmp_path: Path) -> None:
    with SqliteBackend(tmp_path / "data" / "c.sqlite") as opened:
        assert stat.S_IMODE(opened.path.stat().st_mode) == 0o600
