from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from fabstir.errors import StorageError
from fabstir.storage import SqliteBackend, default_path


def _code(call: object, *args: object) -> str:
    with pytest.raises(StorageError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code


def test_a_blob_changed_in_the_file_is_detected(backend: SqliteBackend) -> None:
    blob = backend.put(b"sealed bytes")
    with sqlite3.connect(backend.path) as raw:
        raw.execute("UPDATE blobs SET data = ? WHERE id = ?", (b"sealed bytez", blob))
    assert _code(backend.get, blob) == "STORAGE_TAMPERED"


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "fabstir" / "conversations.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "share" / "fabstir" / "conversations.sqlite"


def test_new_file_is_private(tmp_path: Path) -> None:
    with SqliteBackend(tmp_path / "data" / "c.sqlite") as opened:
        assert stat.S_IMODE(opened.path.stat().st_mode) == 0o600
