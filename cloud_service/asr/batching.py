"""Dynamic batching: gather concurrent requests up to `max_batch` or `max_wait_ms`, decode them as one batch.

The asyncio side only queues and wakes; one worker thread owns the model and runs every batch, so the event
loop never blocks on inference and the model is never used from two threads at once.

A batch holds requests of several devices: when it raises, its items are decoded again one by one
(`run_isolated`), so a request that breaks the model fails alone and the others still get their answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

REPLY_PASSES = 4
Req = TypeVar("Req")
Res = TypeVar("Res")


class QueueFullError(Exception):
    """The bounded queue is full: the caller should answer RESOURCE_EXHAUSTED."""


class DeadlineExpiredError(Exception):
    """The client's deadline passed while the request waited: it was dropped without inference."""


@dataclass(frozen=True)
class BatchStats:
    queue_ms: float  # from submit to the start of this request's batch
    batch_size: int


@dataclass
class _Job(Generic[Req, Res]):
    request: Req
    deadline: float | None  # loop.time() after which the result is useless
    enqueued: float
    future: asyncio.Future[tuple[Res, BatchStats]] = field(repr=False)


def run_isolated(run_batch: Callable[[list[Req]], list[Res]], items: list[Req]) -> list[Res | Exception]:
    """`run_batch(items)`, or when that raises, each item alone: every item gets its own result or exception."""
    try:
        results = run_batch(items)
    except Exception as exc:
        if len(items) == 1:
            log.error("decoding one item failed: %s: %s", type(exc).__name__, exc)
            return [exc]
        log.warning("batch of %d failed (%s: %s); decoding its items one by one", len(items), type(exc).__name__, exc)
    else:
        if len(results) != len(items):
            raise RuntimeError(f"the model returned {len(results)} results for {len(items)} items")
        return list(results)
    out: list[Res | Exception] = []
    for item in items:
        try:
            [one] = run_batch([item])
        except Exception as exc:
            log.error("decoding one item failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            out.append(exc)
        else:
            out.append(one)
    return out


class Batcher(Generic[Req, Res]):
    """Queue of requests in front of `run_batch(list[Req]) -> list[Res]` (called in one worker thread)."""

    def __init__(
        self,
        run_batch: Callable[[list[Req]], list[Res]],
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        on_drop: Callable[[int], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1:
            raise ValueError("max_batch and queue_size must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._on_drop = on_drop
        self._on_batch = on_batch  # (batch size, seconds in the model): the metrics' hook
        self._pending: collections.deque[_Job[Req, Res]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-model")
        self.batches_run = 0
        self.items_run = 0

    def _ensure_started(self) -> asyncio.Event:
        if self._task is None or self._wake is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")
        return self._wake

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, request: Req, timeout_s: float | None = None) -> tuple[Res, BatchStats]:
        """Queue one request and wait for its result. `timeout_s`: time left before the client gives up."""
        wake = self._ensure_started()
        if len(self._pending) >= self.queue_size:
            raise QueueFullError(f"server busy: {self.queue_size} requests already queued")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExpiredError("deadline passed before the request was queued")
        job: _Job[Req, Res] = _Job(
            request, None if timeout_s is None else now + timeout_s, now, loop.create_future()
        )
        self._pending.append(job)
        wake.set()
        return await job.future

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Wait for company only while the oldest request is younger than max_wait: requests that
            # queued up during the previous batch go at once.
            ready_at = self._pending[0].enqueued + self.max_wait_s
            if len(self._pending) < self.max_batch and loop.time() < ready_at:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), ready_at - loop.time())
                continue
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            await self._run(batch, loop)

    async def _run(self, batch: list[_Job[Req, Res]], loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        live: list[_Job[Req, Res]] = []
        dropped = 0
        for job in batch:
            if job.future.done():  # the caller was cancelled
                dropped += 1
            elif job.deadline is not None and job.deadline <= now:
                job.future.set_exception(DeadlineExpiredError("deadline passed while queued; not decoded"))
                dropped += 1
            else:
                live.append(job)
        if dropped:
            log.debug("dropped %d expired or cancelled requests", dropped)
            if self._on_drop:
                self._on_drop(dropped)
        if not live:
            return
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._executor, run_isolated, self._run_batch, [j.request for j in live]
            )
        except Exception as exc:  # the executor itself failed (shut down): nobody got an answer
            log.exception("batch of %d failed", len(live))
            results = [exc] * len(live)
        answered = sum(not isinstance(r, Exception) for r in results)
        if self._on_batch:
            self._on_batch(len(live), time.perf_counter() - started)
        if answered:
            self.batches_run += 1
            self.items_run += answered
        log.debug("batch of %d in %.0f ms", len(live), (time.perf_counter() - started) * 1000)
        for job, res in zip(live, results, strict=True):
            if job.future.done():
                continue
            if isinstance(res, Exception):
                job.future.set_exception(res)
            else:
                job.future.set_result((res, BatchStats((now - job.enqueued) * 1000.0, len(live))))
        # Let the callers send their replies before the next batch starts competing with them for the CPU
        # and the GIL: a few loop passes, well under a millisecond when the machine is not starved.
        for _ in range(REPLY_PASSES):
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(QueueFullError("server shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)
