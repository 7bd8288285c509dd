"""``sdk.inference.resume_session_with_history``: a stored conversation continued by another SDK on another node.

Real nodes (llama.cpp over the tiny model), a real SQLite store in ``tmp_path``. No timing assertions.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from fabstir.errors import ConfigError, StorageError
from fabstir.node.server import NodeServer
from fabstir.protocol import ChatTurn, Feature
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.storage import ConversationStore, Message, SqliteBackend, StorageKey
from tests.conftest import NodeFactory

SECRET = bytes(range(32))
GREEDY = PromptOptions(max_tokens=8, temperature=0.0)


def _store(path: Path) -> ConversationStore:
    return ConversationStore.open(SqliteBackend(path), StorageKey.from_secret(SECRET))


def _turns(messages: Iterable[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


async def _bare_prompt_tokens(node: NodeServer, prompt: str) -> int:
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("bare", node.url)
        bare = await sdk.inference.send_prompt(prompt)
    assert bare.usage is not None
    return bare.usage.prompt_tokens


async def test_resume_on_another_node_from_another_sdk(node_factory: NodeFactory, tmp_path: Path) -> None:
    node_a: NodeServer = await node_factory()
    node_b: NodeServer = await node_factory()
    assert node_a.url != node_b.url
    db = tmp_path / "conversations.sqlite"
    async with FabstirSDK(storage=_store(db), default_options=GREEDY) as first:
        await first.inference.connect_to_session("chat", node_a.url, job_id=7)
        one = await first.inference.send_prompt("my name is Ada")
        two = await first.inference.send_prompt("what is my name")
    stored = [("user", "my name is Ada"), ("assistant", one.text), ("user", "what is my name"),
              ("assistant", two.text)]

    bare = await _bare_prompt_tokens(node_b, "and now")
    async with FabstirSDK(storage=SqliteBackend(db), storage_key=StorageKey.from_secret(SECRET),
                          default_options=GREEDY) as second:
        loaded = await second.inference.resume_session_with_history("chat", node_b.url, job_id=8)
        assert _turns(loaded.messages) == stored and not loaded.partial
        assert Feature.SESSION_RESUME in second.inference.host_features("chat")
        on_host = await second.inference.get_history("chat")
        assert [(t.role, t.content) for t in on_host] == stored
        third = await second.inference.send_prompt("and now")
        assert third.message_index == 2
        assert third.usage is not None and third.usage.prompt_tokens > bare, "node B got the history"
        conversation = await second.inference.load_conversation("chat")
        assert _turns(conversation.messages) == [*stored, ("user", "and now"), ("assistant", third.text)]
        assert len(conversation.receipts) == sum(r.receipt is not None for r in (one, two, third))
    session = node_b.runtime.sessions.find("chat")
    assert session is not None and [(t.role, t.content) for t in session.history[:4]] == stored


async def test_partial_answer_restored_as_is_on_a_public_subset_node(node_factory: NodeFactory,
                                                                     tmp_path: Path) -> None:
    """A client that died mid-answer: the partial text is the assistant's turn; the context is re-sent."""
    node: NodeServer = await node_factory(extensions=False)
    db = tmp_path / "conversations.sqlite"
    writer = _store(db)
    writer.add_user_message("cut", "tell me a story", host="http://gone")
    writer.add_answer_chunk("cut", "Once upon a time")  # never marked done: partial
    writer.backend.close()

    bare = await _bare_prompt_tokens(node, "go on")
    async with FabstirSDK(storage=_store(db), default_options=GREEDY) as sdk:
        loaded = await sdk.inference.resume_session_with_history("cut", node.url)
        assert loaded.partial and loaded.messages[-1].content == "Once upon a time"
        assert sdk.inference.host_features("cut") == frozenset()
        assert sdk.inference.get_conversation("cut") == [ChatTurn("user", "tell me a story"),
                                                         ChatTurn("assistant", "Once upon a time")]
        result = await sdk.inference.send_prompt("go on")
        assert result.usage is not None and result.usage.prompt_tokens > bare, "the context was re-sent"
        conversation = await sdk.inference.load_conversation("cut")
    assert _turns(conversation.messages) == [("user", "tell me a story"), ("assistant", "Once upon a time"),
                                             ("user", "go on"), ("assistant", result.text)]
    assert conversation.messages[1].partial and not conversation.messages[3].partial


async def test_errors(node: NodeServer, tmp_path: Path) -> None:
    async with FabstirSDK() as sdk:
        with pytest.raises(ConfigError) as unset:
            await sdk.inference.resume_session_with_history("chat", node.url)
        assert unset.value.code == "STORAGE_NOT_CONFIGURED"
    async with FabstirSDK(storage=_store(tmp_path / "conversations.sqlite")) as sdk:
        with pytest.raises(StorageError) as missing:
            await sdk.inference.resume_session_with_history("nobody", node.url)
        assert missing.value.code == "STORAGE_NOT_FOUND"
        with pytest.raises(Exception) as not_live:
            sdk.inference.session("nobody")
        assert getattr(not_live.value, "code", None) == "SESSION_NOT_FOUND", "no session was opened"
