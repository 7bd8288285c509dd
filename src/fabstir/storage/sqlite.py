"""The default backend: one SQLite file (WAL mode, safe for several processes)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from types import TracebackType

from fabstir.errors import StorageError
from fabstir.storage.backend import Pointer, blob_id, check_replaces

__all__ = ["SqliteBackend", "default_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pointers (
    name TEXT PRIMARY KEY, owner BLOB NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, signature BLOB NOT NULL
);
"""


def default_path() -> Path:
    """``$XDG_DATA_HOME/fabstir/conversations.sqlite``, else ``~/.local/share/fabstir/conversations.sqlite``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fabstir" / "conversations.sqlite"


class SqliteBackend:
    """Blobs and pointers in one SQLite file (created with mode 0600 in a 0700 folder if new)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def __enter__(self) -> SqliteBackend:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def put(self, data: bytes) -> str:
        blob = blob_id(data)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO blobs (id, data) VALUES (?, ?)", (blob, data))
        return blob

    def get(self, blob: str) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT data FROM blobs WHERE id = ?", (blob,)).fetchone()
        if row is None:
            raise StorageError(f"no blob {blob}", code="STORAGE_NOT_FOUND")
        data = bytes(row[0])
        if blob_id(data) != blob:
            raise StorageError(f"blob {blob} does not match its hash", code="STORAGE_TAMPERED")
        return data

    def list_blobs(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT id FROM blobs ORDER BY id")]

    def delete(self, blob: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM blobs WHERE id = ?", (blob,))

    def get_pointer(self, name: str) -> Pointer | None:
        with self._lock:
            return self._read_pointer(name)

    def set_pointer(self, pointer: Pointer) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                check_replaces(pointer, self._read_pointer(pointer.name))
                self._db.execute("INSERT OR REPLACE INTO pointers VALUES (?, ?, ?, ?, ?)",
                                 (pointer.name, pointer.owner, pointer.seq, pointer.data, pointer.signature))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def list_pointers(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT name FROM pointers ORDER BY name")]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _read_pointer(self, name: str) -> Pointer | None:
        row = self._db.execute("SELECT owner, seq, data, signature FROM pointers WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return Pointer(name, bytes(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]))
