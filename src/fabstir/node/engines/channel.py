"""A one-producer, one-consumer channel from a worker thread to the event loop.

The producer thread appends to a deque and wakes the loop only when the
consumer is actually waiting; while the consumer is busy (sending the previous
token), items are handed over without a system call. Waking the loop through
``call_soon_threadsafe`` for every token was the engine thread's largest cost.
The consumer can also take what is already there without waiting
(:meth:`ThreadToLoopChannel.get_ready`), to send it all at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ThreadToLoopChannel"]

T = TypeVar("T")


class ThreadToLoopChannel(Generic[T]):
    """``put`` from any one thread, ``await get()`` on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        """Hand ``item`` to the consumer (thread-safe; never blocks)."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._loop.call_soon_threadsafe(_wake, waiter)

    async def get(self) -> T:
        """The next item, waiting if there is none yet."""
        while not self._items:
            waiter = self._loop.create_future()
            self._waiter = waiter
            if self._items:  # an item arrived before the producer could see the waiter
                self._waiter = None
                break
            await waiter
        return self._items.popleft()

    def get_ready(self, accept: Callable[[T], bool]) -> T | None:
        """The next item if it is already here and ``accept`` takes it, else ``None``; never waits.

        Safe against the producer: it only appends on the right, and only the consumer pops.
        """
        items = self._items
        if items and accept(items[0]):
            return items.popleft()
        return None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
