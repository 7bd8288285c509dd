"""The per-token path: coalescing what the engine has already queued, and permessage-deflate that skips small messages.

The pool tests use ``BurstEngine``, a fake engine at the pool seam that signals once every piece of its
answer has been handed to the pool, so the test can read the stream at the moment the engine is ahead of the
consumer; nothing depends on timing. The deflate tests run the extension on frames directly, against the
client's own ``PerMessageDeflate``.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Callable, Iterator

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from fabstir.node.deflate import COMPRESS_MIN_BYTES, SmallMessagesUncompressed
from fabstir.node.engines.base import Finished, GenerationEvent, GenerationParams, TokenPiece
from fabstir.node.engines.pool import MAX_COALESCED_CHARS, EnginePool

DEADLINE = 60.0


class BurstEngine:
    """Yields ``pieces`` (text, tokens) then ``Finished``; ``all_queued`` is set once the pool holds every piece."""

    model_id = "burst"
    context_window = 512

    def __init__(self, pieces: list[tuple[str, int]]) -> None:
        self.pieces = pieces
        self.all_queued = threading.Event()

    def count_tokens(self, text: str) -> int:
        return 1

    def generate(self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]) -> Iterator[
            GenerationEvent]:
        for text, tokens in self.pieces:
            yield TokenPiece(text, tokens)
        self.all_queued.set()  # the pool puts each piece before asking for the next: all are queued now
        yield Finished("length", sum(tokens for _, tokens in self.pieces))

    def close(self) -> None:
        pass


async def read_when_ahead(pieces: list[tuple[str, int]], *, coalesce: bool) -> list[GenerationEvent]:
    """The events of one answer, read after the engine has queued all but the first."""
    engine = BurstEngine(pieces)
    pool = EnginePool([engine])
    events: list[GenerationEvent] = []
    try:
        async with asyncio.timeout(DEADLINE):
            stream = pool.stream(engine, "p", GenerationParams(max_tokens=len(pieces)), threading.Event(),
                                 coalesce=coalesce)
            async for event in stream:
                events.append(event)
                if len(events) == 1:
                    assert await asyncio.to_thread(engine.all_queued.wait, DEADLINE)
    finally:
        pool.close()
    return events


async def test_pieces_queued_behind_the_first_travel_as_one_with_their_token_count() -> None:
    pieces = [("Once", 1), (" upon", 1), (" a", 1), (" tim\u00e9", 2), (" there", 1)]
    events = await read_when_ahead(pieces, coalesce=True)
    assert events == [TokenPiece("Once", 1), TokenPiece(" upon a tim\u00e9 there", 5), Finished("length", 6)], \
        "the first piece alone, then everything already queued as one piece; tokens add up exactly"


async def test_without_coalescing_every_piece_stays_separate() -> None:
    pieces = [("a", 1), ("b", 1), ("c", 2)]
    events = await read_when_ahead(pieces, coalesce=False)
    assert events == [TokenPiece("a", 1), TokenPiece("b", 1), TokenPiece("c", 2), Finished("length", 4)]


async def test_a_coalesced_piece_stops_growing_at_the_size_limit() -> None:
    big = "x" * (MAX_COALESCED_CHARS // 2)
    pieces = [("first", 1), (big, 1), (big, 1), (big, 1), ("tail", 1)]
    events = await read_when_ahead(pieces, coalesce=True)
    texts = [e.text for e in events if isinstance(e, TokenPiece)]
    assert texts == ["first", big + big, big + "tail"]
    assert sum(e.tokens for e in events if isinstance(e, TokenPiece)) == 5


def negotiated() -> tuple[SmallMessagesUncompressed, PerMessageDeflate]:
    """The node's extension and the client's, as negotiated by default (context takeover, 12-bit windows)."""
    server = SmallMessagesUncompressed(PerMessageDeflate(False, False, 12, 12, {"memLevel": 5}), COMPRESS_MIN_BYTES)
    client = PerMessageDeflate(False, False, 12, 12)
    return server, client


def test_small_messages_go_uncompressed_and_large_ones_compressed_in_step_with_the_client() -> None:
    server, client = negotiated()
    small = b'{"type":"stream_chunk","content":" the","tokens":1,"id":"p1"}'
    large = b'{"type":"history","conversation_context":[' + b'{"role":"user","content":"hello there"},' * 40 + b"{}]}"
    for payload in (small, large, small, large, large, small):
        sent = server.encode(Frame(Opcode.TEXT, payload))
        assert sent.rsv1 is (len(payload) >= COMPRESS_MIN_BYTES)
        if sent.rsv1:
            assert len(sent.data) < len(payload) // 4
        else:
            assert sent.data == payload
        assert client.decode(sent).data == payload, "the client's shared window stays in step"


def test_fragmented_and_control_frames_keep_the_usual_handling() -> None:
    server, _ = negotiated()
    ping = Frame(Opcode.PING, b"x")
    assert server.encode(ping) is ping
    first = server.encode(Frame(Opcode.TEXT, b"ab", fin=False))
    assert first.rsv1, "a fragmented message is compressed as before, whatever its size"
    rest = server.encode(Frame(Opcode.CONT, b"cd"))
    inflate = zlib.decompressobj(wbits=-12)
    assert inflate.decompress(bytes(first.data) + bytes(rest.data) + b"\x00\x00\xff\xff") == b"abcd"
