"""Local API keys of the gateway, each with a spending cap: ``fabstir gateway keys create|list|cap``.

A key is a random bearer token (``sk-fab-`` + 32 hex digits), shown once when created; the file keeps only its
SHA-256, its name, its cap and what it has spent (base units of the payment token; integers, never floats).
The file is written atomically with mode 0600. A request with a key whose spending reached its cap is refused
(HTTP 402, ``insufficient_quota``) before any session opens, and a paid session opened for a key holds at most
what the key has left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import tempfile
import threading
from pathlib import Path

from fabstir.errors import ConfigError
from fabstir.gateway.wire import GatewayError

__all__ = ["ApiKey", "KeyStore"]


@dataclasses.dataclass
class ApiKey:
    """One key's record (never the key itself)."""

    name: str
    digest: str
    cap: int | None
    """Most base units it may spend; ``None``: no cap."""
    spent: int = 0

    @property
    def left(self) -> int | None:
        return None if self.cap is None else max(0, self.cap - self.spent)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys file; every change is saved at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        if self.path.exists():
            try:
                rows = json.loads(self.path.read_text(encoding="utf-8"))
                self._keys = {row["digest"]: ApiKey(**row) for row in rows["keys"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{self.path} is not a gateway keys file: {exc}", code="BAD_KEYS_FILE") from None

    def __len__(self) -> int:
        return len(self._keys)

    def create(self, name: str, cap: int | None) -> str:
        """A new key named ``name`` with spending ``cap``; returns the key (the file keeps only its hash)."""
        if cap is not None and cap < 0:
            raise ConfigError("a spending cap cannot be negative")
        if any(k.name == name for k in self._keys.values()):
            raise ConfigError(f"a key named {name!r} exists already")
        key = "sk-fab-" + secrets.token_hex(16)
        with self._lock:
            self._keys[_digest(key)] = ApiKey(name, _digest(key), cap)
            self._save()
        return key

    def set_cap(self, name: str, cap: int | None) -> ApiKey:
        with self._lock:
            record = self._named(name)
            record.cap = cap
            self._save()
            return record

    def records(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda k: k.name)

    def admit(self, key: str) -> ApiKey:
        """The record of ``key`` if it may spend now.

        Raises:
            GatewayError: 401 ``invalid_api_key``; 402 ``insufficient_quota`` when its cap is reached.
        """
        record = self._keys.get(_digest(key))
        if record is None:
            raise GatewayError("invalid or missing API key", status=401, type="authentication_error",
                               code="invalid_api_key")
        if record.left == 0:
            raise GatewayError(f"API key {record.name!r} reached its spending cap ({record.cap})", status=402,
                               type="insufficient_quota", code="insufficient_quota")
        return record

    def charge(self, record: ApiKey, amount: int) -> None:
        """Add ``amount`` (base units) to what ``record`` spent."""
        if amount <= 0:
            return
        with self._lock:
            record.spent += amount
            self._save()

    def _named(self, name: str) -> ApiKey:
        for record in self._keys.values():
            if record.name == name:
                return record
        raise ConfigError(f"no key named {name!r}")

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = {"keys": [dataclasses.asdict(k) for k in self._keys.values()]}
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(rows, out, indent=1)
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
