"""Send the plan to the workers' warm API: batches per worker, bounded, retried, isolated per worker.

The plan arrives as a stream of `Assignment`s. Each owner of a block gets the block appended to its
batch; a full batch becomes one `POST /v1/warm`. Backpressure: the stream is read only while a send
slot is free (at most `concurrency` requests in flight overall, `per_worker` per worker), so memory
stays bounded by the in-flight batches whatever the size of the plan.

A request that fails because the worker is unreachable (refused, timed out, 5xx) is retried under
`WORKER_RETRY` (or the policy given); after `retry.attempts` tries the worker is marked failed, its pending
and future blocks are counted as failed at once (no more requests to it), and the other workers go on.
Warm is idempotent on the worker and answers "cached" for blocks it holds, which is what makes
skip-if-cached and resume-after-restart cheap. Cancelling `run` cancels every request in flight and
sends no more (a deleted DataLoad stops promptly).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from eddy.blocks import BlockRef
from eddy.ratelimit import TokenBucket
from eddy.retry import RetriesExhausted, RetryPolicy, Sleep, retrying
from eddy.wire import ERR_CACHE_FULL
from eddy.workerclient import WarmResult, WorkerBadRequest, WorkerClient, WorkerError, WorkerUnavailable
from preloader.plan import Assignment

MAX_ERRORS_KEPT = 10

# 6 tries; pauses of 0.25 s, 0.5 s, 1 s... up to 4 s, each between half and all of that.
WORKER_RETRY = RetryPolicy(initial=0.25, maximum=4.0, jitter=0.5, attempts=6)


@dataclass
class Progress:
    """Counters of one load; `bytes_loaded`/`files_loaded` count data whose every owner holds it."""

    files_total: int = 0
    bytes_total: int = 0
    blocks_total: int = 0
    files_done: int = 0
    files_loaded: int = 0
    blocks_done: int = 0
    blocks_loaded: int = 0
    bytes_loaded: int = 0
    blocks_failed: int = 0
    warm_cached: int = 0  # block-owner results "cached" (already there: skipped cheaply)
    warm_fetched: int = 0
    warm_failed: int = 0
    cache_full: int = 0
    fetched_bytes: int = 0
    requests: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    failed_workers: dict[str, str] = field(default_factory=dict)
    assigned_bytes: dict[str, int] = field(default_factory=dict)  # per worker: bytes it must hold
    started: float = field(default_factory=time.monotonic)

    def throughput(self, now: float | None = None) -> float:
        """Bytes per second since the start (loaded bytes, cached ones included)."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return self.bytes_loaded / elapsed if elapsed > 0 else 0.0

    def note_error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT and text not in self.errors:
            self.errors.append(text)


@dataclass
class _Block:
    remaining: int
    ok: bool = True


@dataclass
class _File:
    remaining: int
    size: int
    ok: bool = True


class Dispatcher:
    def __init__(
        self,
        client: WorkerClient,
        workers: Sequence[str],
        *,
        progress: Progress | None = None,
        concurrency: int = 8,
        per_worker: int = 4,
        batch_size: int = 16,
        retry: RetryPolicy | None = None,
        bandwidth: int = 0,
        request_timeout: Callable[[int], float] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.client = client
        self.workers = list(workers)
        self.progress = progress or Progress()
        self.batch_size = max(1, batch_size)
        self.retry = retry or WORKER_RETRY
        self.bucket = TokenBucket(bandwidth, max(bandwidth, 64 << 20)) if bandwidth > 0 else None
        # A batch's timeout covers the worker fetching every miss: 60 s plus 1 s per 4 MiB.
        self.request_timeout = request_timeout or (lambda nbytes: 60.0 + nbytes / (4 << 20))
        self.on_progress = on_progress
        self.rng = rng or random.Random()
        self.sleep = sleep
        self._global = asyncio.Semaphore(max(1, concurrency))
        self._per_worker = {w: asyncio.Semaphore(max(1, per_worker)) for w in self.workers}
        self._buffers: dict[str, list[Assignment]] = {w: [] for w in self.workers}
        self._blocks: dict[tuple[int, int], _Block] = {}
        self._files: dict[int, _File] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------------- driving
    async def run(self, plan: AsyncIterator[Assignment]) -> Progress:
        try:
            async for assignment in plan:
                await self._add(assignment)
            for url in self.workers:
                await self._flush(url)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.progress

    async def _add(self, a: Assignment) -> None:
        key = (a.file_seq, a.ref.index)
        self._files.setdefault(a.file_seq, _File(a.file_blocks, a.file_size))
        self._blocks[key] = _Block(max(1, len(a.owners)))
        if not a.owners:
            self._unit_done(a, ok=False)
        for url in a.owners:
            self.progress.assigned_bytes[url] = self.progress.assigned_bytes.get(url, 0) + a.ref.length
            if url in self.progress.failed_workers:
                self.progress.warm_failed += 1
                self._unit_done(a, ok=False)
                continue
            buffer = self._buffers.setdefault(url, [])
            buffer.append(a)
            if len(buffer) >= self.batch_size:
                await self._flush(url)

    async def _flush(self, url: str) -> None:
        batch = self._buffers.get(url)
        if not batch:
            return
        self._buffers[url] = []
        sem = self._per_worker.setdefault(url, asyncio.Semaphore(1))
        await sem.acquire()
        try:
            await self._global.acquire()
        except BaseException:
            sem.release()
            raise
        task = asyncio.create_task(self._send(url, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------- sending
    async def _send(self, url: str, batch: list[Assignment]) -> None:
        try:
            results = await self._warm_with_retries(url, [a.ref for a in batch])
        finally:
            self._per_worker[url].release()
            self._global.release()
        if isinstance(results, str):
            for a in batch:
                self.progress.warm_failed += 1
                self._unit_done(a, ok=False)
        else:
            for a, result in zip(batch, results, strict=True):
                self._record(url, a, result)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    async def _warm_with_retries(self, url: str, refs: list[BlockRef]) -> list[WarmResult] | str:
        """The worker's results, or the reason every block of the batch failed."""
        nbytes = sum(r.length for r in refs)
        if self.bucket is not None:
            await self.bucket.acquire(nbytes)

        async def once() -> list[WarmResult] | str:
            if url in self.progress.failed_workers:  # another batch gave up on it meanwhile
                return self.progress.failed_workers[url]
            self.progress.requests += 1
            return await self.client.warm(url, refs, timeout=self.request_timeout(nbytes))

        def count(failures: int, pause: float, error: BaseException) -> None:
            self.progress.retries += 1

        try:
            return await retrying(once, self.retry, retry_on=WorkerUnavailable, rng=self.rng,
                                  sleep=self.sleep, on_retry=count)
        except RetriesExhausted as gave_up:
            message = f"unreachable after {gave_up.tries} attempts: {gave_up.last}"
            self.progress.failed_workers.setdefault(url, message)
            self.progress.note_error(f"worker {url} {message}")
            return message
        except (WorkerBadRequest, WorkerError) as exc:
            self.progress.note_error(str(exc))
            return str(exc)

    def _record(self, url: str, a: Assignment, result: WarmResult) -> None:
        p = self.progress
        if result.status == "cached":
            p.warm_cached += 1
            self._unit_done(a, ok=True)
        elif result.status == "fetched":
            p.warm_fetched += 1
            p.fetched_bytes += result.bytes or a.ref.length
            self._unit_done(a, ok=True)
        else:
            p.warm_failed += 1
            if result.code == ERR_CACHE_FULL:
                p.cache_full += 1
            else:
                p.note_error(f"{url}: {a.ref.mount}:{a.ref.key} block {a.ref.index}: "
                             f"{result.error or result.code or result.status}")
            self._unit_done(a, ok=False)

    def _unit_done(self, a: Assignment, *, ok: bool) -> None:
        key = (a.file_seq, a.ref.index)
        block = self._blocks[key]
        block.remaining -= 1
        block.ok = block.ok and ok
        if block.remaining > 0:
            return
        del self._blocks[key]
        p = self.progress
        p.blocks_done += 1
        file = self._files[a.file_seq]
        if block.ok:
            p.blocks_loaded += 1
            p.bytes_loaded += a.ref.length
        else:
            p.blocks_failed += 1
            file.ok = False
        file.remaining -= 1
        if file.remaining == 0:
            del self._files[a.file_seq]
            p.files_done += 1
            p.files_loaded += 1 if file.ok else 0
