"""Any conversation (unicode, empty and huge messages, unfinished answers) comes back as it went in."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabstir.storage import AssistantChunk, ConversationStore, Receipt, SqliteBackend, StorageKey, UserMessage
from fabstir.storage.records import Record, fold

text = st.text(max_size=200) | st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(1, 60_000))
records = st.lists(st.one_of(
    st.builds(UserMessage, text, st.text(max_size=30), st.text(max_size=30)),
    st.builds(AssistantChunk, text, st.booleans()),
    st.builds(Receipt, st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20), max_size=3)),
), max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(session_id=st.text(min_size=1, max_size=40), history=records)
def test_roundtrip(tmp_path: Path, session_id: str, history: list[Record]) -> None:
    with SqliteBackend(tmp_path / "roundtrip.sqlite") as backend:
        store = ConversationStore.open(backend, StorageKey.from_secret(b"k" * 32))
        for record in history:
            store.append(session_id, record)
        if history:
            assert store.load(session_id) == fold(session_id, history)
            assert session_id in store.list_conversations()
            store.delete(session_id)
        assert session_id not in store.list_conversations()
