"""A pool of engine instances, and the bridge from their threads to asyncio.

Each engine generates on its own worker thread (an engine with a ``submit`` method, such as the batching
engine's seats, runs its own thread and pushes events into the stream itself); tokens cross to the event
loop through a :class:`ThreadToLoopChannel`, so the loop is never blocked and other connections keep streaming. With ``n``
engines, ``n`` responses are generated at once; further requests wait for a
free engine.

Coalescing (opt-in per stream): when the engine is ahead of the consumer (the event loop was busy
sending, or the socket pushed back), the pieces already waiting are handed over as one
:class:`TokenPiece` whose ``tokens`` is their sum, so the consumer puts them on the wire in one
frame and bills them exactly. Nothing waits to be coalesced: a piece that is alone when the
consumer asks goes alone, and the first piece of an answer always goes alone.

Theory of operation (fair queue): each client key (the node passes the
client's address) has its own FIFO of waiters. When an engine frees, it goes
to the waiting client served least recently (a client never served, or one
that went idle, comes first; ties go in order of arrival), so clients take
turns: one client with ten queued answers delays another client's first
answer by at most one engine turn, not ten. A waiter cancelled while queued
leaves its FIFO; if an engine was handed to it at that moment, the engine
goes straight to the next waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from fabstir.errors import EngineError
from fabstir.node.engines.base import Engine, Finished, GenerationEvent, GenerationParams, TokenPiece
from fabstir.node.engines.channel import ThreadToLoopChannel

__all__ = ["EnginePool"]

_DONE = object()

MAX_COALESCED_CHARS = 16_384
"""A coalesced piece stops growing past this many characters (one frame stays far below any client's limit)."""


class EnginePool:
    """Engines that all serve the same model."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise EngineError("an engine pool needs at least one engine")
        self._engines = list(engines)
        self._executor = ThreadPoolExecutor(max_workers=len(self._engines), thread_name_prefix="fabstir-engine")
        self._idle = list(self._engines)
        self._waiters: dict[str, deque[asyncio.Future[Engine]]] = {}
        """Each waiting client's FIFO, in order of arrival."""
        self._held: dict[str, int] = {}
        self._served: dict[str, int] = {}
        """When each active client last got an engine (a turn number), for the rotation."""
        self._turns = itertools.count()
        self._in_use = 0
        self.last_active = 0.0

    @property
    def primary(self) -> Engine:
        """The engine used for token counting (all share one tokenizer)."""
        return self._engines[0]

    @property
    def size(self) -> int:
        return len(self._engines)

    @property
    def waiting(self) -> int:
        """Requests queued for an engine, over all clients."""
        return sum(len(queue) for queue in self._waiters.values())

    @contextlib.asynccontextmanager
    async def acquire(self, client: str = "") -> AsyncIterator[Engine]:
        """Wait for a free engine and hold it for the block.

        Args:
            client: who asks (the node uses the client's address); waiting clients take turns.
        """
        engine = await self._wait(client)
        self._in_use += 1
        try:
            yield engine
        finally:
            self._in_use -= 1
            self.last_active = time.monotonic()
            self._release(client, engine)

    async def _wait(self, client: str) -> Engine:
        if self._idle and not self._waiters:
            return self._grant(client, self._idle.pop())
        waiter: asyncio.Future[Engine] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(client, deque()).append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed an engine as it was cancelled
                self._release(client, waiter.result())
            else:
                self._forget_waiter(client, waiter)
            raise

    def _grant(self, client: str, engine: Engine) -> Engine:
        self._held[client] = self._held.get(client, 0) + 1
        self._served[client] = next(self._turns)
        return engine

    def _release(self, client: str, engine: Engine) -> None:
        """Give ``engine`` back: to the next client in rotation, else to the idle list."""
        self._held[client] -= 1
        if not self._held[client]:
            del self._held[client]
            if client not in self._waiters:
                self._served.pop(client, None)  # an idle client comes first again when it returns
        while self._waiters:
            turn = min(self._waiters, key=lambda name: self._served.get(name, -1))
            waiter = self._waiters[turn].popleft()
            if not self._waiters[turn]:
                del self._waiters[turn]
            if not waiter.done():
                waiter.set_result(self._grant(turn, engine))
                return
        self._idle.append(engine)

    def _forget_waiter(self, client: str, waiter: asyncio.Future[Engine]) -> None:
        queue = self._waiters.get(client)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._waiters[client]
            if client not in self._held:
                self._served.pop(client, None)

    def quiet_for(self) -> float:
        """Seconds since the last engine finished; 0 while any engine is generating."""
        return 0.0 if self._in_use else time.monotonic() - self.last_active

    async def stream(
        self, engine: Engine, prompt: str, params: GenerationParams, cancel: threading.Event, *,
        coalesce: bool = False,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Run ``engine.generate`` on a worker thread and yield its events here.

        With ``coalesce``, every piece after the first comes with the pieces already queued behind
        it, as one :class:`TokenPiece` (see the module docstring). If the consumer stops early,
        ``cancel`` is set and the thread is awaited, so the engine is idle again when this generator
        closes.
        """
        loop = asyncio.get_running_loop()
        events: ThreadToLoopChannel[object] = ThreadToLoopChannel(loop)
        submit = getattr(engine, "submit", None)
        worker: asyncio.Future[None] | None = None
        if submit is not None:  # an engine with its own thread (batching) pushes its events here itself
            submit(prompt, params, cancel.is_set, events.put)
        else:
            worker = loop.run_in_executor(self._executor, _produce, engine, prompt, params, cancel.is_set, events.put)
        first = True
        try:
            while True:
                item = await events.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed: {item}") from item
                if isinstance(item, TokenPiece) and coalesce:
                    if first:
                        first = False
                    else:
                        item = _with_ready_pieces(item, events)
                yield item  # type: ignore[misc]
                if isinstance(item, Finished):
                    break
        finally:
            cancel.set()
            if worker is not None:
                await asyncio.shield(worker)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for engine in self._engines:
            engine.close()


def _is_piece(item: object) -> bool:
    return type(item) is TokenPiece


def _with_ready_pieces(piece: TokenPiece, events: ThreadToLoopChannel[object]) -> TokenPiece:
    """``piece`` joined with the pieces already queued behind it (none waited for)."""
    following = events.get_ready(_is_piece)
    if following is None:
        return piece
    texts = [piece.text]
    tokens = piece.tokens
    size = len(piece.text)
    while following is not None:
        assert isinstance(following, TokenPiece)
        texts.append(following.text)
        tokens += following.tokens
        size += len(following.text)
        if size >= MAX_COALESCED_CHARS:
            break
        following = events.get_ready(_is_piece)
    return TokenPiece("".join(texts), tokens)


def _produce(
    engine: Engine,
    prompt: str,
    params: GenerationParams,
    cancelled: Callable[[], bool],
    put: Callable[[object], None],
) -> None:
    try:
        for event in engine.generate(prompt, params, cancelled):
            put(event)
    except Exception as exc:  # handed to the consumer, who raises EngineError
        put(exc)
    finally:
        put(_DONE)
