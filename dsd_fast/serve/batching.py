"""Request batching for one server process: a bounded queue and one worker thread.

    submit(job) -> queue (bounded: 429 when full) -> the worker loop takes the oldest job,
    waits at most `max_wait_s` from that job's arrival for more jobs with the same options
    (up to `max_batch`), and runs them as one Engine.run (one segment() call) in its
    thread, while the event loop keeps accepting requests.

Under load the wait costs nothing: jobs pile up while a batch runs and the next batch
leaves at once. A request that waits longer than its timeout gets 504 and, if it had not
started, leaves the queue. close() lets the queue drain (graceful shutdown), then fails
what is left with 503.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from .engine import Job
from .limits import ApiError


@dataclass(eq=False)        # compared by identity (its image is a tensor)
class _Entry:
    job: Job
    future: asyncio.Future


class Batcher:
    def __init__(self, run_batch: Callable[[list[Job]], list], max_batch: int = 8,
                 max_wait_s: float = 0.015, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.max_queue, self.on_batch = max_queue, on_batch
        self._pending: deque[_Entry] = deque()
        self._wakeup: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dsd-serve-worker")
        self._task: asyncio.Task | None = None
        self._closed = False
        self.running = 0                   # jobs in the batch the worker runs now
        self._batch_s = 1.0                # recent seconds per batch (for Retry-After)

    # ------------------------------------------------------------------ client side
    @property
    def queue_length(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def retry_after_s(self) -> int:
        """Seconds until the queue has probably room again (whole seconds, >= 1)."""
        batches = math.ceil((len(self._pending) + 1) / self.max_batch)
        return max(1, math.ceil(batches * self._batch_s))

    async def submit(self, job: Job, timeout_s: float):
        """The job's payload once its batch has run; raises the job's ApiError, 429 when
        the queue is full, 503 after close(), 504 after `timeout_s` seconds."""
        if self._closed or self._task is None:
            raise ApiError(503, "shutting_down", "the server is shutting down",
                           {"Retry-After": "5"})
        if len(self._pending) >= self.max_queue:
            raise ApiError(429, "queue_full", f"{len(self._pending)} requests are waiting, "
                           f"this server's limit; retry in {self.retry_after_s()} s",
                           {"Retry-After": str(self.retry_after_s())})
        entry = _Entry(job, asyncio.get_running_loop().create_future())
        self._pending.append(entry)
        self._wakeup.set()
        try:
            out = await asyncio.wait_for(asyncio.shield(entry.future), timeout_s)
        except asyncio.TimeoutError:
            self._forget(entry)
            raise ApiError(504, "timeout", f"no result within this server's limit of "
                           f"{timeout_s:g} s (queue wait and segmentation)") from None
        except asyncio.CancelledError:     # the client went away: do not compute for it
            self._forget(entry)
            raise
        if isinstance(out, ApiError):
            raise out
        return out

    def _forget(self, entry: _Entry) -> None:
        try:
            self._pending.remove(entry)
        except ValueError:
            pass                           # already taken by the worker: result dropped
        if not entry.future.done():
            entry.future.cancel()

    # ------------------------------------------------------------------ worker side
    def _take_batch(self) -> list[_Entry]:
        key = self._pending[0].job.options
        batch = [e for e in self._pending if e.job.options == key][:self.max_batch]
        for e in batch:
            self._pending.remove(e)
        return batch

    def _same_key_waiting(self) -> int:
        key = self._pending[0].job.options
        return sum(e.job.options == key for e in self._pending)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._pending[0].job.submitted + self.max_wait_s
            while self._pending and self._same_key_waiting() < self.max_batch and \
                    not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            if not self._pending:          # every waiting request timed out or left
                continue
            batch = self._take_batch()
            self.running = len(batch)
            started = time.perf_counter()
            try:
                outs = await loop.run_in_executor(self._executor, self.run_batch,
                                                  [e.job for e in batch])
            except Exception as e:         # Engine.run turns job errors into ApiErrors
                outs = [ApiError(500, "internal_error", f"the batch failed ({e})")] * len(batch)
            seconds = time.perf_counter() - started
            self.running = 0
            self._batch_s = 0.7 * self._batch_s + 0.3 * seconds
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
            for e, out in zip(batch, outs):
                if not e.future.done():
                    e.future.set_result(out)

    async def close(self, drain_s: float = 30.0) -> None:
        """Stop taking jobs; let the queued ones finish for up to `drain_s` seconds, then
        answer the rest 503. The worker thread is left to end its batch."""
        self._closed = True
        if self._task is None:
            return
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_s)
        except asyncio.TimeoutError:
            self._task.cancel()
        while self._pending:
            e = self._pending.popleft()
            if not e.future.done():
                e.future.set_result(ApiError(503, "shutting_down",
                                             "the server shut down before this request ran"))
        self._executor.shutdown(wait=False)
