"""Micro-batching: concurrent requests share one model call per model version.

Requests are queued; one consumer task takes everything waiting (up to ``max_rows`` series,
waiting at most ``max_wait_s`` after the first for more to arrive), groups the jobs by
model version and runs each group as one call in a single worker thread. While a call
runs, new requests queue up and form the next batch, so batches grow with the number of
concurrent clients and every expert runs once per batch instead of once per request.
One worker thread also means the model objects are never used by two threads at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "BatchStats"]

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Job(Generic[Item, Result]):
    key: str | None
    items: Sequence[Item]
    done: asyncio.Future[list[Result]]


@dataclass
class BatchStats:
    """Counters for tests and benchmarks: calls made and the largest batch seen."""

    calls: int = 0
    jobs: int = 0
    largest_batch: int = 0


class MicroBatcher(Generic[Item, Result]):
    """Run ``run(key, items) -> results`` (one result per item) over batched submissions."""

    def __init__(
        self,
        run: Callable[[str | None, list[Item]], list[Result]],
        max_rows: int = 4096,
        max_wait_s: float = 0.001,
    ) -> None:
        if max_rows < 1 or max_wait_s < 0:
            raise ValueError(
                f"max_rows must be >= 1 and max_wait_s >= 0, got {max_rows}, {max_wait_s}"
            )
        self._run = run
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Job[Item, Result]] = asyncio.Queue()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moe-model")
        self._consumer: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    def start(self) -> None:
        """Start the consumer on the running event loop (idempotent)."""
        if self._consumer is None or self._consumer.done():
            self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def stop(self) -> None:
        """Cancel the consumer and release the worker thread."""
        if self._consumer is not None:
            self._consumer.cancel()
            try:
                await self._consumer
            except asyncio.CancelledError:
                pass
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def submit(self, key: str | None, items: Sequence[Item]) -> list[Result]:
        """Queue ``items`` for model ``key`` and wait for their results (same order)."""
        self.start()
        done: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(key, items, done))
        return await done

    async def _collect(self) -> list[_Job[Item, Result]]:
        """The next batch: the first waiting job plus whatever joins within the wait."""
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        rows = len(jobs[0].items)
        deadline = loop.time() + self._max_wait_s
        while rows < self._max_rows:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            rows += len(job.items)
        return jobs

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            for key in dict.fromkeys(job.key for job in jobs):
                group = [job for job in jobs if job.key == key and not job.done.cancelled()]
                if not group:
                    continue
                items = [item for job in group for item in job.items]
                self.stats.calls += 1
                self.stats.jobs += len(group)
                self.stats.largest_batch = max(self.stats.largest_batch, len(items))
                try:
                    results = await loop.run_in_executor(self._worker, self._run, key, items)
                except Exception as error:  # every waiting request gets the model's error
                    for job in group:
                        if not job.done.done():
                            job.done.set_exception(error)
                    continue
                if len(results) != len(items):
                    mismatch = RuntimeError(
                        f"batch returned {len(results)} results for {len(items)}"
                    )
                    for job in group:
                        if not job.done.done():
                            job.done.set_exception(mismatch)
                    continue
                begin = 0
                for job in group:
                    end = begin + len(job.items)
                    if not job.done.done():
                        job.done.set_result(results[begin:end])
                    begin = end
