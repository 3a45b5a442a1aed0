"""The cloud's dynamic batcher on a plain function (its contract is shape logic: who is batched with whom, who gets
which result or error); the real model behind it is tested in tests/integration/test_cloud_service.py."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cloud_service.asr.batching import Batcher, BatchStats, DeadlineExpiredError, QueueFullError, run_isolated


def _double(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


def test_bad_sizes_are_refused() -> None:
    for max_batch, queue_size in ((0, 4), (4, 0)):
        with pytest.raises(ValueError, match="at least 1"):
            Batcher(_double, max_batch=max_batch, max_wait_ms=1, queue_size=queue_size)


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_result() -> None:
    sizes: list[int] = []

    def run(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return _double(batch)

    async def main() -> list[tuple[int, int]]:
        b: Batcher[int, int] = Batcher(run, max_batch=4, max_wait_ms=50, queue_size=8)
        out = await asyncio.gather(*(b.submit(i) for i in range(4)))
        await b.aclose()
        return [(res, stats.batch_size) for res, stats in out]

    assert asyncio.run(main()) == [(0, 4), (2, 4), (4, 4), (6, 4)]
    assert sizes == [4]


def test_a_failed_batch_is_retried_item_by_item_so_only_the_bad_item_fails() -> None:
    seen: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        seen.append(list(batch))
        if -1 in batch:
            raise RuntimeError("model crashed")
        return _double(batch)

    async def main() -> None:
        b: Batcher[int, int] = Batcher(run, max_batch=2, max_wait_ms=20, queue_size=8)
        failed, ok = await asyncio.gather(b.submit(-1), b.submit(5), return_exceptions=True)
        assert str(failed) == "model crashed"  # the bad item is told why
        assert isinstance(ok, tuple) and ok == (10, BatchStats(ok[1].queue_ms, 2))  # the other one is answered
        assert (await b.submit(7))[0] == 14  # and the next batch runs
        assert (b.batches_run, b.items_run) == (2, 2)  # only results count as run
        await b.aclose()

    asyncio.run(main())
    assert seen == [[-1, 5], [-1], [5], [7]]


def test_run_isolated_reports_each_items_own_failure() -> None:
    def run(batch: list[int]) -> list[int]:
        if any(x < 0 for x in batch):
            raise ValueError(f"negative in {batch}")
        return _double(batch)

    out = run_isolated(run, [1, -2, 3, -4])
    assert out[0] == 2 and out[2] == 6
    assert [str(out[1]), str(out[3])] == ["negative in [-2]", "negative in [-4]"]
    assert run_isolated(run, [1, 2]) == [2, 4]  # a good batch runs once, as a batch
    assert [str(e) for e in run_isolated(run, [-1])] == ["negative in [-1]"]


def test_expired_deadlines_are_dropped_without_inference() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[list[int]] = []
    dropped: list[int] = []

    def run(batch: list[int]) -> list[int]:
        seen.append(batch)
        started.set()
        release.wait(5)  # the model is busy with this batch
        return _double(batch)

    async def main() -> None:
        b: Batcher[int, int] = Batcher(run, max_batch=1, max_wait_ms=0, queue_size=8, on_drop=dropped.append)
        with pytest.raises(DeadlineExpiredError, match="before the request was queued"):
            await b.submit(1, timeout_s=0)
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.to_thread(started.wait, 5)
        late = asyncio.ensure_future(b.submit(2, timeout_s=0.05))  # queued behind a busy model
        await asyncio.sleep(0.1)
        release.set()
        assert (await first)[0] == 2
        with pytest.raises(DeadlineExpiredError, match="while queued"):
            await late
        await b.aclose()

    asyncio.run(main())
    assert seen == [[1]] and dropped == [1]  # 2 never reached the model; the drop was reported


def test_a_full_queue_refuses_and_closing_fails_what_is_still_queued() -> None:
    async def main() -> None:
        # One request waiting for company (max_wait 10 s) fills a queue of one.
        b: Batcher[int, int] = Batcher(_double, max_batch=2, max_wait_ms=10_000, queue_size=1)
        waiting = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)
        assert b.depth == 1
        with pytest.raises(QueueFullError, match="1 requests already queued"):
            await b.submit(2)
        await b.aclose()
        with pytest.raises(QueueFullError, match="server shutting down"):
            await waiting
        assert b.depth == 0 and b.items_run == 0

    asyncio.run(main())
