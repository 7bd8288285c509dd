"""The depositor's durable record of what each paid job streamed to it (consented billing, issue 14 P1).

A depositor disputes a host's provisional over-claim with its own signed count of the tokens it received
(:meth:`fabstir.sdk.sessions.SessionManager.dispute_overclaim`). That count must outlive the process: a client
that crashed, or settles a job from another program, still has to answer within the dispute window. The SDK
writes each job's count here whenever an answer ends (before it countersigns), when an answer is cut off, and
before a session moves to another job.

One SQLite file (WAL mode; created 0600 in a 0700 folder), default
``$XDG_DATA_HOME/fabstir/usage.sqlite``. Rows are keyed by chain id, marketplace and job id, so one file serves
every network. Counts only grow: a stale writer (another process, an older session object) never lowers them.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from pathlib import Path

from fabstir.errors import StorageError

__all__ = ["JobUsage", "UsageLog", "default_usage_log_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_usage (
    chain_id INTEGER NOT NULL,
    marketplace TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    received INTEGER NOT NULL,
    ended_tokens INTEGER NOT NULL,
    transcript_hash BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (chain_id, marketplace, job_id)
);
"""


def default_usage_log_path() -> Path:
    """``$XDG_DATA_HOME/fabstir/usage.sqlite``, else ``~/.local/share/fabstir/usage.sqlite``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fabstir" / "usage.sqlite"


@dataclasses.dataclass(frozen=True, slots=True)
class JobUsage:
    """What one job streamed to this depositor."""

    received: int
    """Every token streamed on the job, answers cut off by a dead host included."""
    ended_tokens: int
    """Tokens of the answers that ended (what the transcript hash covers and the depositor countersigns)."""
    transcript_hash: bytes
    """The running hash of those answers (:func:`fabstir.chain.usage.next_transcript_hash`)."""


class UsageLog:
    """Per-job received counts in one SQLite file, safe for several processes."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_usage_log_path()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        """The database, opened (and created) on first use, so an SDK that never pays never touches the disk."""
        if self._db is None:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.path.touch(mode=0o600, exist_ok=True)
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"cannot open the usage log {self.path}: {exc}", code="STORAGE_UNAVAILABLE") from exc
            self._db = db
        return self._db

    def record(self, chain_id: int, marketplace: str, job_id: int, usage: JobUsage) -> None:
        """Store ``usage`` for the job unless a larger count is already stored (counts never go down).

        Raises:
            StorageError: the file cannot be written (STORAGE_UNAVAILABLE).
        """
        with self._lock:
            try:
                self._connection().execute(
                    "INSERT INTO job_usage VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (chain_id, marketplace, job_id) DO UPDATE SET "
                    "received = MAX(received, excluded.received), "
                    "ended_tokens = CASE WHEN excluded.ended_tokens >= ended_tokens "
                    "THEN excluded.ended_tokens ELSE ended_tokens END, "
                    "transcript_hash = CASE WHEN excluded.ended_tokens >= ended_tokens "
                    "THEN excluded.transcript_hash ELSE transcript_hash END, "
                    "updated_at = excluded.updated_at",
                    (chain_id, marketplace.lower(), job_id, usage.received, usage.ended_tokens,
                     usage.transcript_hash, int(time.time())))
            except sqlite3.Error as exc:
                raise StorageError(f"cannot write the usage log {self.path}: {exc}", code="STORAGE_UNAVAILABLE") from exc

    def get(self, chain_id: int, marketplace: str, job_id: int) -> JobUsage | None:
        """What was stored for the job, or ``None`` (also when the file does not exist: reading creates nothing)."""
        with self._lock:
            if self._db is None and not self.path.exists():
                return None
            try:
                row = self._connection().execute(
                    "SELECT received, ended_tokens, transcript_hash FROM job_usage "
                    "WHERE chain_id = ? AND marketplace = ? AND job_id = ?",
                    (chain_id, marketplace.lower(), job_id)).fetchone()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read the usage log {self.path}: {exc}", code="STORAGE_UNAVAILABLE") from exc
        return None if row is None else JobUsage(int(row[0]), int(row[1]), bytes(row[2]))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
