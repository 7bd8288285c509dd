"""A synchronous face over the async SDK, derived from it (never a hand-kept twin): ``FabstirSDK.sync()``.

Theory of operation. :class:`SyncSDK` owns an event loop running on a daemon thread and the async
:class:`~fabstir.sdk.client.FabstirSDK` living on it. Every attribute is reached through a :class:`SyncProxy`:
calling a coroutine function runs it on the loop and returns its result (or raises its error, the same
:mod:`fabstir.errors` tree); a call that returns an async iterator (``stream``) gives a blocking iterator, and an
async context manager (``async with``) becomes a ``with``; SDK objects (managers, sessions, streams) come back
wrapped the same way, plain values as they are. So every async method of the SDK has its blocking twin with
the same name and arguments, and a new async method needs no code here.

    with FabstirSDK(...).sync() as sdk:
        sdk.inference.connect_to_session("s1", "http://127.0.0.1:8080")
        print(sdk.inference.send_prompt("Hello").text)
        with sdk.inference.stream("Tell me more") as stream:
            for piece in stream:
                print(piece, end="")

Callbacks (``on_token``) run on the loop's thread. Do not call the blocking face from inside the SDK's own loop.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fabstir.sdk.client import FabstirSDK

__all__ = ["SyncProxy", "SyncSDK"]

_T = TypeVar("_T")

_WRAPPED_MODULES = ("fabstir.sdk", "fabstir.storage", "fabstir.discovery")
"""Objects of these packages come back wrapped (they may have async methods); anything else as it is."""


class _Loop:
    """An event loop on a daemon thread; :meth:`run` blocks until a coroutine finished there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fabstir-sync", daemon=True)
        self._thread.start()

    def run(self, work: Awaitable[_T]) -> _T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("the blocking SDK face was called from its own event loop; await the async SDK")

        async def wrapped() -> _T:
            return await work

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class SyncProxy:
    """The blocking face of one SDK object (see the module docstring)."""

    _target: Any
    _loop: _Loop

    def __init__(self, target: Any, loop: _Loop) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not isinstance(value, type):
            return self._blocking(value)
        return _wrap(value, self._loop)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return f"SyncProxy({self._target!r})"

    def _blocking(self, method: Callable[..., Any]) -> Callable[..., Any]:
        loop = self._loop

        def call(*args: Any, **kwargs: Any) -> Any:
            if inspect.iscoroutinefunction(method):
                coroutine: Coroutine[Any, Any, Any] = method(*args, **kwargs)
                return _wrap(loop.run(coroutine), loop)
            result = method(*args, **kwargs)  # plain methods run here; what they return may be async
            if inspect.isawaitable(result):
                return _wrap(loop.run(result), loop)
            return _wrap(result, loop)

        call.__name__ = getattr(method, "__name__", "call")
        call.__doc__ = getattr(method, "__doc__", None)
        return call

    # --- an async iterator as a blocking one, an async context manager as a ``with`` --------------------

    def __iter__(self) -> Iterator[Any]:
        iterator = self._loop.run(_aiter(self._target))
        while True:
            try:
                yield _wrap(self._loop.run(_anext(iterator)), self._loop)
            except StopAsyncIteration:
                return

    def __enter__(self) -> Any:
        entered = self._loop.run(self._target.__aenter__())
        return self if entered is self._target else _wrap(entered, self._loop)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._loop.run(self._target.__aexit__(kind, error, trace))


async def _aiter(target: Any) -> collections.abc.AsyncIterator[Any]:
    iterator: collections.abc.AsyncIterator[Any] = target.__aiter__()
    return iterator


async def _anext(iterator: collections.abc.AsyncIterator[Any]) -> Any:
    return await iterator.__anext__()


def _wrap(value: Any, loop: _Loop) -> Any:
    """SDK objects wrapped (they may be async); lists and tuples of them element-wise; anything else as is."""
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(item, loop) for item in value)
    module = type(value).__module__
    if module.startswith(_WRAPPED_MODULES) and _has_async_face(value):
        return SyncProxy(value, loop)
    return value


def _has_async_face(value: Any) -> bool:
    """Whether ``value`` has anything to await: async methods, ``async for`` or ``async with``, or (a manager)
    attributes that lead to such objects; plain records (results, receipts) stay as they are."""
    kind = type(value)
    if hasattr(kind, "__aiter__") or hasattr(kind, "__aenter__"):
        return True
    return any(inspect.iscoroutinefunction(getattr(kind, name, None)) for name in dir(kind) if not name.startswith("_"))


class SyncSDK(SyncProxy):
    """:class:`~fabstir.sdk.client.FabstirSDK` with blocking methods; use it as ``with`` (or call :meth:`close`)."""

    def __init__(self, sdk: FabstirSDK) -> None:
        super().__init__(sdk, _Loop())

    def close(self) -> None:
        """Close the SDK (every session) and stop its loop."""
        loop = self._loop
        try:
            loop.run(self._target.aclose())
        finally:
            loop.close()

    def __enter__(self) -> SyncSDK:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
