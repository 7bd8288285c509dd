"""The node's proof history: every checkpoint proof it made, with its job, tokens, transaction and result.

One SQLite table (``proofs``); a row is written when a proof is made and updated when it is submitted. States:
``proved`` (made, verified locally, not yet sent), ``verified`` (accepted on chain: ``tx_hash``, ``gas_used``),
``rejected`` (the chain refused it: ``error`` holds the revert reason), ``failed`` (it could not be made or
sent: ``error``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["ProofHistory", "ProofRecord", "ProofStatus"]

ProofStatus = str
PROVED, VERIFIED, REJECTED, FAILED = "proved", "verified", "rejected", "failed"


@dataclasses.dataclass(frozen=True)
class ProofRecord:
    """One checkpoint proof of one job."""

    job_id: int
    tokens: int
    """Cumulative tokens of the checkpoint it proves."""
    transcript_hash: str
    commitment: str
    """The usage commitment (``usageDigest``) the proof is bound to, ``0x`` hex."""
    proof_hash: str
    """SHA-256 of the SNARK bytes, ``0x`` hex (empty when no proof was made)."""
    status: ProofStatus
    locally_verified: bool
    prove_s: float
    proof_bytes: int
    tx_hash: str = ""
    gas_used: int = 0
    error: str = ""
    created_ms: int = 0
    updated_ms: int = 0

    @property
    def verified_on_chain(self) -> bool:
        return self.status == VERIFIED

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "verified_on_chain": self.verified_on_chain}


_COLUMNS = [f.name for f in dataclasses.fields(ProofRecord)]


class ProofHistory:
    """The proof history in an SQLite file (safe to use from several threads)."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS proofs (job_id INTEGER NOT NULL, tokens INTEGER NOT NULL, transcript_hash "
            "TEXT NOT NULL, commitment TEXT NOT NULL, proof_hash TEXT NOT NULL, status TEXT NOT NULL, "
            "locally_verified INTEGER NOT NULL, prove_s REAL NOT NULL, proof_bytes INTEGER NOT NULL, tx_hash TEXT "
            "NOT NULL, gas_used INTEGER NOT NULL, error TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms "
            "INTEGER NOT NULL, PRIMARY KEY (commitment))")

    def put(self, record: ProofRecord) -> ProofRecord:
        """Insert or replace the row of ``record.commitment`` (keeping its creation time); returns it as stored."""
        now = int(time.time() * 1000)
        with self._lock:
            row = self._db.execute("SELECT created_ms FROM proofs WHERE commitment = ?",
                                   (record.commitment,)).fetchone()
            stored = dataclasses.replace(record, created_ms=row[0] if row else (record.created_ms or now),
                                         updated_ms=now)
            marks = ", ".join("?" for _ in _COLUMNS)
            self._db.execute(f"INSERT OR REPLACE INTO proofs ({', '.join(_COLUMNS)}) VALUES ({marks})",
                             dataclasses.astuple(stored))
        return stored

    def get(self, commitment: str) -> ProofRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM proofs WHERE commitment = ?",
                                   (commitment,)).fetchone()
        return None if row is None else _record(row)

    def for_job(self, job_id: int) -> list[ProofRecord]:
        """The proofs of ``job_id``, by cumulative tokens."""
        if not 0 <= job_id < 2**63:
            return []
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM proofs WHERE job_id = ? "
                                    "ORDER BY tokens, created_ms", (job_id,)).fetchall()
        return [_record(row) for row in rows]

    def unfinished(self) -> list[ProofRecord]:
        """Proofs made but not submitted, or that failed (not refused by the chain): to try again."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM proofs WHERE status IN (?, ?) "
                                    "ORDER BY created_ms", (PROVED, FAILED)).fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple[Any, ...]) -> ProofRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["locally_verified"] = bool(values["locally_verified"])
    return ProofRecord(**values)
