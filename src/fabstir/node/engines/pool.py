"""A pool of engine instances, and the bridge from their threads to asyncio.

Each engine generates on its own worker thread; tokens cross to the event
loop through a :class:`ThreadToLoopChannel`, so the loop is never blocked and other connections keep streaming. With ``n``
engines, ``n`` responses are generated at once; further requests wait for a
free engine (FIFO).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from fabstir.errors import EngineError
from fabstir.node.engines.base import Engine, Finished, GenerationEvent, GenerationParams
from fabstir.node.engines.channel import ThreadToLoopChannel

__all__ = ["EnginePool"]

_DONE = object()


class EnginePool:
    """Engines that all serve the same model."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise EngineError("an engine pool needs at least one engine")
        self._engines = list(engines)
        self._executor = ThreadPoolExecutor(max_workers=len(self._engines), thread_name_prefix="fabstir-engine")
        self._free: asyncio.Queue[Engine] | None = None
        self._in_use = 0
        self.last_active = 0.0

    @property
    def primary(self) -> Engine:
        """The engine used for token counting (all share one tokenizer)."""
        return self._engines[0]

    @property
    def size(self) -> int:
        return len(self._engines)

    def _queue(self) -> asyncio.Queue[Engine]:
        if self._free is None:
            self._free = asyncio.Queue()
            for engine in self._engines:
                self._free.put_nowait(engine)
        return self._free

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Engine]:
        """Wait for a free engine and hold it for the block."""
        free = self._queue()
        engine = await free.get()
        self._in_use += 1
        try:
            yield engine
        finally:
            self._in_use -= 1
            self.last_active = time.monotonic()
            free.put_nowait(engine)

    def quiet_for(self) -> float:
        """Seconds since the last engine finished; 0 while any engine is generating."""
        return 0.0 if self._in_use else time.monotonic() - self.last_active

    async def stream(
        self, engine: Engine, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Run ``engine.generate`` on a worker thread and yield its events here.

        If the consumer stops early, ``cancel`` is set and the thread is awaited,
        so the engine is idle again when this generator closes.
        """
        loop = asyncio.get_running_loop()
        events: ThreadToLoopChannel[object] = ThreadToLoopChannel(loop)
        worker = loop.run_in_executor(self._executor, _produce, engine, prompt, params, cancel.is_set, events.put)
        try:
            while True:
                item = await events.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed: {item}") from item
                yield item  # type: ignore[misc]
                if isinstance(item, Finished):
                    break
        finally:
            cancel.set()
            await asyncio.shield(worker)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for engine in self._engines:
            engine.close()


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
