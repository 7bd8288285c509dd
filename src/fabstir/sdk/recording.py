"""Storing conversations as they happen (``FabstirSDK(storage=...)``).

Theory of operation. One :class:`ConversationRecorder` per SDK owns the
:class:`~fabstir.storage.ConversationStore` and one writer task: every storage call (writes and reads alike)
goes through its queue and runs, in order, on one worker thread, so the event loop never waits on the backend
and a read sees every write queued before it. Each answer gets an :class:`AnswerRecorder`: the stream hands it
every piece (an append to a list, no I/O), and it queues one ``add_answer_chunk`` when :data:`FLUSH_TOKENS`
tokens are pending or :data:`FLUSH_INTERVAL_S` has passed since the last flush (the writer task checks stalled
answers on the same interval), and a last chunk marked ``done`` at the end. An answer that ends otherwise (the
host dies, the client stops) is flushed without ``done``: storage keeps it and marks it partial. A crash of
the client loses at most the pending window.

A storage failure never fails the answer: it is logged (``fabstir.sdk.storage``) and put on the result as
``InferenceResult.storage_error`` (a :class:`~fabstir.errors.StorageError` with its code). A write that fails
because the storage is unreachable (``STORAGE_UNAVAILABLE``: a server restarting, a network cut) is not lost:
it goes to a backlog with every write queued after it, in order, and the backlog is retried with backoff
(:data:`RETRY_DELAYS_S`) until the storage is back; a read first tries the backlog, so it sees what was
written before it once the storage answers. :meth:`ConversationRecorder.aclose` tries the backlog for up to
``close_timeout`` seconds and logs what it could not store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from fabstir.errors import StorageError
from fabstir.storage import ConversationStore

__all__ = ["FLUSH_INTERVAL_S", "FLUSH_TOKENS", "RETRY_DELAYS_S", "AnswerRecorder", "ConversationRecorder"]

FLUSH_TOKENS = 64
"""An answer's pending text is stored once this many tokens are pending..."""
FLUSH_INTERVAL_S = 1.0
"""...or this long after the previous flush, whichever comes first."""

RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0)
"""Waits between tries of the backlog of writes the storage could not take (the last one repeats)."""

log = logging.getLogger("fabstir.sdk.storage")

_T = TypeVar("_T")
_Job = tuple[Callable[[], Any], "asyncio.Future[Any] | None", "AnswerRecorder | None", bool]
"""A storage call, who waits for it, the answer it belongs to, and whether it is a recorded write."""


def _as_storage_error(exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    return StorageError(f"storage failed: {type(exc).__name__}: {exc}", code="STORAGE_WRITE_FAILED")


class ConversationRecorder:
    """The SDK's one writer to its conversation store; see the module docstring."""

    def __init__(self, store: ConversationStore, *, flush_tokens: int = FLUSH_TOKENS,
                 flush_interval: float = FLUSH_INTERVAL_S, close_timeout: float = 10.0) -> None:
        self.store = store
        self.flush_tokens = flush_tokens
        self.flush_interval = flush_interval
        self.close_timeout = close_timeout
        self.backlog: deque[_Job] = deque()
        """Writes the storage could not take yet, oldest first; retried in this order."""
        self._retry_at = 0.0
        self._failures = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fabstir-storage")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answers: set[AnswerRecorder] = set()

    # --- the queue ------------------------------------------------------------------------------

    def _ensure_worker(self) -> asyncio.Queue[_Job]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done() or self._loop is not loop:
            self._queue, self._loop = asyncio.Queue(), loop
            self._task = loop.create_task(self._work(self._queue), name="fabstir-storage-writer")
        return self._queue

    def submit(self, fn: Callable[[], Any], owner: AnswerRecorder | None = None) -> None:
        """Queue the write ``fn`` (a blocking store call) without waiting; a failure is logged and kept on
        ``owner`` (and retried when the storage was unreachable)."""
        self._ensure_worker().put_nowait((fn, None, owner, True))

    async def call(self, fn: Callable[[], _T], *, write: bool = False) -> _T:
        """Run ``fn`` after everything queued before it and return its result (or raise its error).

        ``write``: a recorded write, kept and retried after an unreachable storage (its error is still raised).
        """
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._ensure_worker().put_nowait((fn, future, None, write))
        return await future

    async def drain(self) -> None:
        """Wait until everything queued so far is stored (or failed)."""
        await self.call(lambda: None)

    async def _work(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            wait = self.flush_interval / 4
            if self.backlog:
                wait = min(wait, max(0.0, self._retry_at - time.monotonic()))
            try:
                job: _Job | None = await asyncio.wait_for(queue.get(), timeout=wait)
            except TimeoutError:
                job = None
            if self.backlog and (time.monotonic() >= self._retry_at or (job is not None and not job[3])):
                await self._retry_backlog()  # due, or a read must see what was written before it
            if job is not None:
                await self._run(job)
            self._flush_stalled()

    async def _run(self, job: _Job) -> None:
        fn, future, owner, write = job
        if write and self.backlog:  # behind the writes still waiting, so the conversation keeps its order
            self.backlog.append(job)
            self._report(job, StorageError("conversation storage is unreachable; the write is kept and retried",
                                           code="STORAGE_UNAVAILABLE"))
            return
        try:
            value = await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except Exception as exc:  # noqa: BLE001 - storage must never take the answer down
            error = _as_storage_error(exc)
            if write and error.code == "STORAGE_UNAVAILABLE":
                self.backlog.append(job)
                self._back_off()
            self._report(job, error)
        else:
            if future is not None and not future.done():
                future.set_result(value)

    async def _retry_backlog(self) -> None:
        """Store the backlog's writes in order, up to the first that still fails."""
        loop = asyncio.get_running_loop()
        while self.backlog:
            fn = self.backlog[0][0]
            try:
                await loop.run_in_executor(self._executor, fn)
            except Exception as exc:  # noqa: BLE001
                error = _as_storage_error(exc)
                if error.code != "STORAGE_UNAVAILABLE":
                    log.warning("a kept conversation write failed for good (%s): %s", error.code, error.message)
                    self.backlog.popleft()
                    continue
                self._back_off()
                return
            self.backlog.popleft()
            if not self.backlog:
                log.info("conversation storage is back: every kept write is stored")
        self._failures = 0

    def _back_off(self) -> None:
        delay = RETRY_DELAYS_S[min(self._failures, len(RETRY_DELAYS_S) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay

    @staticmethod
    def _report(job: _Job, error: StorageError) -> None:
        _, future, owner, _ = job
        if future is not None:
            if not future.done():
                future.set_exception(error)
            return
        log.warning("conversation storage failed (%s): %s", error.code, error.message)
        if owner is not None and owner.error is None:
            owner.error = error

    def _flush_stalled(self) -> None:
        now = time.monotonic()
        for answer in list(self._answers):
            if answer.pending and now - answer.last_flush >= self.flush_interval:
                answer.flush(now)

    # --- answers ----------------------------------------------------------------------------------

    def answer(self, session_id: str) -> AnswerRecorder:
        """A recorder for one answer of ``session_id`` (its prompt is stored with :meth:`AnswerRecorder.prompt`)."""
        answer = AnswerRecorder(self, session_id)
        self._answers.add(answer)
        return answer

    def _forget(self, answer: AnswerRecorder) -> None:
        self._answers.discard(answer)

    async def aclose(self) -> None:
        """Store what every open answer has pending (as partial), wait for the queue, stop the writer."""
        for answer in list(self._answers):
            answer.abort()
        task = self._task
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            await self.drain()
            deadline = time.monotonic() + self.close_timeout
            while self.backlog and time.monotonic() < deadline:
                await asyncio.sleep(min(0.1, self.flush_interval / 4))
            if self.backlog:
                log.error("conversation storage stayed unreachable: %d writes were not stored", len(self.backlog))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = self._queue = None
        self._executor.shutdown(wait=False)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fabstir-storage")


class AnswerRecorder:
    """One answer on its way to storage: pending pieces, flushed in batches (never one write per token)."""

    def __init__(self, recorder: ConversationRecorder, session_id: str) -> None:
        self._recorder = recorder
        self._store = recorder.store
        self._limit = recorder.flush_tokens
        self._interval = recorder.flush_interval
        self.session_id = session_id
        self.pending: list[str] = []
        self.pending_tokens = 0
        self.stored_chars = 0
        """Characters of the answer queued for storage so far."""
        self.last_flush = time.monotonic()
        self.error: StorageError | None = None
        """The first storage failure of this answer (its prompt, a chunk or its receipt)."""
        self.closed = False

    async def prompt(self, text: str, *, model: str, host: str) -> None:
        """Store the user's prompt, and wait for it: it is stored before it is sent."""
        try:
            await self._recorder.call(functools.partial(self._store.add_user_message, self.session_id, text,
                                                        model=model, host=host), write=True)
        except StorageError as exc:
            log.warning("could not store the prompt of %s (%s): %s", self.session_id, exc.code, exc.message)
            self.error = self.error or exc
        self.last_flush = time.monotonic()

    def add(self, text: str, tokens: int) -> None:
        """A piece of the answer arrived (the token path: no I/O here)."""
        self.pending.append(text)
        self.pending_tokens += tokens
        now = time.monotonic()
        if self.pending_tokens >= self._limit or now - self.last_flush >= self._interval:
            self.flush(now)

    def flush(self, now: float, *, done: bool = False, text: str | None = None) -> None:
        """Queue the pending text as one chunk (``done`` on the last)."""
        if text is None:
            text = "".join(self.pending)
        self.pending.clear()
        self.pending_tokens = 0
        self.last_flush = now
        if not text and not done:
            return
        self.stored_chars += len(text)
        self._recorder.submit(functools.partial(self._store.add_answer_chunk, self.session_id, text, done=done),
                              owner=self)

    async def finish(self, full_text: str, receipt: dict[str, Any] | None) -> StorageError | None:
        """The answer ended: store its rest marked ``done`` and its receipt, wait for them; the first error."""
        rest = full_text[self.stored_chars:] if len(full_text) >= self.stored_chars else "".join(self.pending)
        self.flush(time.monotonic(), done=True, text=rest)
        if receipt is not None:
            self._recorder.submit(functools.partial(self._store.add_receipt, self.session_id, receipt), owner=self)
        self._close()
        with contextlib.suppress(StorageError):
            await self._recorder.drain()
        return self.error

    def abort(self) -> None:
        """The answer ended without finishing: queue what is pending, not ``done`` (stored as partial)."""
        if not self.closed:
            self.flush(time.monotonic())
            self._close()

    def _close(self) -> None:
        self.closed = True
        self._recorder._forget(self)
