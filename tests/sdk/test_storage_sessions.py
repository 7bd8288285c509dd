"""The SDK with conversation storage: every exchange stored as it streams, loaded from any process with the key.

Real nodes (llama.cpp over the tiny model), a real SQLite store in ``tmp_path``; crash tests use real
processes killed with SIGKILL (by PID). No timing assertions: every wait is on a condition, with a generous
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.errors import ConnectionClosedError, StorageError
from fabstir.node.server import NodeServer
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.sdk.recording import FLUSH_TOKENS
from fabstir.storage import Conversation, ConversationStore, SqliteBackend, StorageKey
from tests.storage.conftest import seaweed  # noqa: F401 (a fixture: one SeaweedFS for this module)

ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes(range(32))
LONG = PromptOptions(max_tokens=400, temperature=0.0)
DEADLINE_S = 120.0

CLIENT = '''
import asyncio, json, sys
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.storage import ConversationStore, SqliteBackend, StorageKey

mode, db, secret, sid = sys.argv[1:5]

def backend():
    """``db``: a SQLite file, or s3:<endpoint>|<prefix>, or s5:<portal url>|<token>."""
    if db.startswith("s3:"):
        from fabstir.storage.s3 import S3Backend
        endpoint, prefix = db[3:].split("|")
        return S3Backend(endpoint, "fabstir-test", access_key="test", secret_key="test", create_bucket=True,
                         prefix=prefix)
    if db.startswith("s5:"):
        from fabstir.storage.s5 import S5Backend
        url, token = db[3:].split("|")
        return S5Backend(url, bytes.fromhex(secret), token=token)
    return SqliteBackend(db)

def sdk():
    store = ConversationStore.open(backend(), StorageKey.from_secret(bytes.fromhex(secret)))
    return FabstirSDK(storage=store)

async def stream(url, progress):
    async with sdk() as client:
        await client.inference.connect_to_session(sid, url)
        text = ""
        with open(progress, "w") as out:
            options = PromptOptions(max_tokens=400, temperature=0.0)
            async with client.inference.stream("tell me a long story", options) as answer:
                async for piece in answer:
                    text += piece
                    out.write(json.dumps({"tokens": answer.tokens_received, "text": text}) + "\\n")
                    out.flush()
                    await asyncio.sleep(0.02)  # a reader that takes its time: the kill lands mid-answer
        print("FINISHED", flush=True)

async def load(format):
    async with sdk() as client:
        print(await client.inference.export_conversation(sid, format), flush=True)

if mode == "stream":
    asyncio.run(stream(sys.argv[5], sys.argv[6]))
else:
    asyncio.run(load(sys.argv[5]))
'''

NODE = '''
import asyncio, sys
from fabstir.node.config import NodeConfig
from fabstir.node.server import serve_node

async def main():
    config = NodeConfig(port=0, model_path=sys.argv[1], context_window=512, parallel=1, threads=1)
    async with serve_node(config) as server:
        print("URL", server.url, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
'''


def _store(path: Path) -> ConversationStore:
    return ConversationStore.open(SqliteBackend(path), StorageKey.from_secret(SECRET))


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": str(ROOT / "src"),
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


@contextlib.contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, its output in ``log``; killed by PID and reaped on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=ROOT)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


async def _until(condition: object, what: str, deadline: float = DEADLINE_S) -> None:
    async with asyncio.timeout(deadline):
        while True:
            if callable(condition) and await asyncio.to_thread(condition):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(what)


def _answer(conversation: Conversation) -> str:
    return conversation.messages[-1].content if conversation.messages[-1].role == "assistant" else ""


async def test_prompts_and_answers_are_stored_as_they_stream(node: NodeServer, tmp_path: Path) -> None:
    db = tmp_path / "conversations.sqlite"
    reader = _store(db)  # another connection, as another process would have
    async with FabstirSDK(storage=_store(db)) as sdk:
        await sdk.inference.connect_to_session("live", node.url)
        async with sdk.inference.stream("tell me a long story", LONG) as stream:
            stored_midway = ""
            async for _piece in stream:
                if not stored_midway and stream.tokens_received >= 2 * FLUSH_TOKENS + 2:
                    # the answer is still streaming: storage already holds its first chunks, as a partial answer
                    def has_chunks() -> bool:
                        conversation = reader.load("live")
                        return conversation.partial and len(_answer(conversation)) > 0

                    await _until(has_chunks, "no chunk stored while the answer streamed")
                    conversation = reader.load("live")
                    assert conversation.messages[0].role == "user"
                    assert conversation.messages[0].content == "tell me a long story"
                    assert conversation.messages[0].host == node.url
                    stored_midway = _answer(conversation)
            result = stream.result
        assert stored_midway and result.text.startswith(stored_midway)
        assert result.storage_error is None
        # the live session's copy is the in-memory one; the stored one is the same conversation, finished
        assert [t.content for t in sdk.inference.get_conversation("live")] == ["tell me a long story", result.text]
        stored = await sdk.inference.load_conversation("live")
        assert not stored.partial and _answer(stored) == result.text
        assert len(stored.receipts) == (1 if result.receipt is not None else 0)
    reader.backend.close()


async def test_a_second_sdk_and_a_subprocess_load_export_and_delete(node: NodeServer, tmp_path: Path) -> None:
    db = tmp_path / "conversations.sqlite"
    short = PromptOptions(max_tokens=8, temperature=0.0)
    async with FabstirSDK(storage=_store(db)) as first:
        await first.inference.connect_to_session("kept", node.url)
        one = await first.inference.send_prompt("hello", short)
        two = await first.inference.send_prompt("again", short)
    async with FabstirSDK(storage=SqliteBackend(db), storage_key=StorageKey.from_secret(SECRET)) as second:
        assert await second.inference.list_conversations() == ["kept"]
        turns = second.inference.get_conversation("kept")  # not live here: from storage
        assert [(t.role, t.content) for t in turns] == [
            ("user", "hello"), ("assistant", one.text), ("user", "again"), ("assistant", two.text)]
        messages = json.loads(await second.inference.export_conversation("kept", "messages"))
        assert messages == [{"role": t.role, "content": t.content} for t in turns]
        markdown = await second.inference.export_conversation("kept", "markdown")
        assert "## User" in markdown and "unfinished" not in markdown
        body = json.loads(await second.inference.export_conversation("kept", "json"))
        assert body["partial"] is False and body["session_id"] == "kept"

        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        output = await asyncio.to_thread(
            subprocess.run, [sys.executable, str(script), "load", str(db), SECRET.hex(), "kept", "messages"],
            capture_output=True, env=_env(tmp_path), cwd=ROOT, timeout=DEADLINE_S, check=True)
        assert json.loads(output.stdout) == messages

        await second.inference.delete_conversation("kept")
        assert await second.inference.list_conversations() == []
        with pytest.raises(StorageError) as missing:
            await second.inference.load_conversation("kept")
        assert missing.value.code == "STORAGE_NOT_FOUND"


async def test_without_storage_nothing_changes(node: NodeServer) -> None:
    async with FabstirSDK() as sdk:
        assert sdk.storage is None and sdk.recorder is None
        await sdk.inference.connect_to_session("plain", node.url)
        result = await sdk.inference.send_prompt("hello", PromptOptions(max_tokens=4, temperature=0.0))
        assert result.storage_error is None
        exported = json.loads(await sdk.inference.export_conversation("plain", "messages"))
        assert exported == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": result.text}]
        with pytest.raises(Exception) as unset:
            await sdk.inference.list_conversations()
        assert getattr(unset.value, "code", None) == "STORAGE_NOT_CONFIGURED"


async def test_a_storage_failure_is_reported_not_fatal(node: NodeServer, tmp_path: Path) -> None:
    store = _store(tmp_path / "conversations.sqlite")
    async with FabstirSDK(storage=store) as sdk:
        await sdk.inference.connect_to_session("broken", node.url)
        store.backend.close()  # every write fails from now on
        result = await sdk.inference.send_prompt("hello", PromptOptions(max_tokens=6, temperature=0.0))
        assert result.completion_tokens == 6
        assert result.storage_error is not None and result.storage_error.code.startswith("STORAGE")


def _progress(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


@pytest.fixture
def s5_portal() -> Iterator[str]:
    """The in-repo fake of the S5 portal API (no S5 node runs here), on 127.0.0.1."""
    from fabstir.testing.s5_fake import FakePortal, serve

    with serve(FakePortal(token="t0ken")) as url:
        yield url


@pytest.mark.parametrize("kind", ["sqlite", "s3", "s5"])
async def test_a_client_killed_mid_answer_loses_at_most_one_flush_window(
        kind: str, node: NodeServer, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """On each backend: SQLite, S3 (a real SeaweedFS), S5 (the fake of its portal API)."""
    progress, script = tmp_path / "progress.jsonl", tmp_path / "client.py"
    script.write_text(CLIENT)
    if kind == "s3":
        db = f"s3:{request.getfixturevalue('seaweed').endpoint}|crash-{tmp_path.name}/"
    elif kind == "s5":
        db = f"s5:{request.getfixturevalue('s5_portal')}|t0ken"
    else:
        db = str(tmp_path / "conversations.sqlite")
        _store(Path(db)).backend.close()
    argv = [sys.executable, str(script), "stream", db, SECRET.hex(), "crash", node.url, str(progress)]
    kill_at = 2 * FLUSH_TOKENS + 20
    with _process(argv, tmp_path / "client.log", _env(tmp_path)) as client:
        def far_enough() -> bool:
            assert client.poll() is None, (tmp_path / "client.log").read_text()
            entries = _progress(progress)
            return bool(entries) and int(str(entries[-1]["tokens"])) >= kill_at

        await _until(far_enough, "the client never got far enough into the answer")
        os.kill(client.pid, signal.SIGKILL)
        await asyncio.to_thread(client.wait, 60)
    assert "FINISHED" not in (tmp_path / "client.log").read_text()
    received = _progress(progress)
    last_tokens, last_text = int(str(received[-1]["tokens"])), str(received[-1]["text"])

    # the restarted client (a new process with the same key) loads it, the partial answer marked partial
    output = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script), "load", db, SECRET.hex(), "crash", "json"],
        capture_output=True, env=_env(tmp_path), cwd=ROOT, timeout=DEADLINE_S, check=True)
    body = json.loads(output.stdout)
    assert body["partial"] is True
    user, answer = body["messages"]
    assert user["content"] == "tell me a long story" and answer["role"] == "assistant" and answer["partial"]
    stored = answer["content"]
    assert stored, "nothing of the answer was stored"
    if len(stored) >= len(last_text):  # storage may hold a piece the client had not yet written down
        assert stored.startswith(last_text)
        lost = 0
    else:
        assert last_text.startswith(stored)
        at = [int(str(e["tokens"])) for e in received if e["text"] == stored]
        assert at, "the stored text does not end on a piece boundary"
        lost = last_tokens - at[0]
    print(f"client crash ({kind}): received {last_tokens} tokens, stored {last_tokens - lost}, lost {lost}")
    # what was pending (under one flush window) and, on a network backend, the one write still in flight when
    # the process died (its window too): SQLite's local write ends long before the next window fills
    assert lost <= (FLUSH_TOKENS if kind == "sqlite" else 2 * FLUSH_TOKENS)


async def test_a_node_killed_mid_answer_leaves_the_partial_answer_stored(tiny_model: Path, tmp_path: Path) -> None:
    script, log = tmp_path / "node.py", tmp_path / "node.log"
    script.write_text(NODE)
    with _process([sys.executable, str(script), str(tiny_model)], log, _env(tmp_path)) as node:
        def serving() -> bool:
            assert node.poll() is None, log.read_text()
            return "URL " in log.read_text()

        await _until(serving, "the node never came up")
        url = log.read_text().split("URL ", 1)[1].split()[0]
        async with FabstirSDK(storage=_store(tmp_path / "conversations.sqlite")) as sdk:
            await sdk.inference.connect_to_session("hostdies", url)
            received = ""
            with pytest.raises(ConnectionClosedError):
                async with sdk.inference.stream("tell me a long story", LONG) as stream:
                    async for piece in stream:
                        received += piece
                        if stream.tokens_received >= FLUSH_TOKENS + 10 and node.poll() is None:
                            os.kill(node.pid, signal.SIGKILL)
            conversation = await sdk.inference.load_conversation("hostdies")
    assert conversation.partial and conversation.messages[-1].partial
    assert _answer(conversation) == received  # everything the client saw is stored


async def test_the_conversation_cid_addresses_an_immutable_snapshot(node: NodeServer, tmp_path: Path) -> None:
    store = _store(tmp_path / "conversations.sqlite")
    async with FabstirSDK(storage=store) as sdk:
        await sdk.inference.connect_to_session("42", node.url)
        await sdk.inference.send_prompt("hello", PromptOptions(max_tokens=4, temperature=0.0))
        cid = await sdk.inference.conversation_cid("42")
        snapshot = store.backend.get(cid)  # the sealed head (salt and record list), readable with the key only
        assert snapshot[:1] == b"\x01" and b"hello" not in snapshot
        assert cid == await sdk.inference.conversation_cid("42")  # same conversation, same address
