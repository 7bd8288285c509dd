from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.storage import ConversationStore, SqliteBackend, StorageKey

SECRET = bytes(range(32))


@pytest.fixture
def key() -> StorageKey:
    return StorageKey.from_secret(SECRET)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    with SqliteBackend(tmp_path / "conversations.sqlite") as opened:
        yield opened


@pytest.fixture
def store(backend: SqliteBackend, key: StorageKey) -> ConversationStore:
    return ConversationStore.open(backend, key)
