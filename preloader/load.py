"""One load, start to end: list, (store the snapshot), stream the plan to the workers, verify.

Shared by the consumer (`eddy preloader`) and local mode (`eddy preload`); both only turn the result
into status patches or a table. The listing is read twice: first counting files and bytes only (exact
totals for progress), then streamed into blocks (see preloader/plan.py). With `loadMetadata: true` the
first pass holds every mount's whole listing anyway (the snapshot), so the plan is streamed from those
rows instead of a second LIST pass: the LIST responses' XML parsing was most of the preloader's CPU
during a DataLoad (docs/benchmarks.md), and the loaded blocks then match the stored snapshot exactly.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from eddy.api import DataLoad, Dataset, Mount
from eddy.blocks import DEFAULT_BLOCK_SIZE
from eddy.listing import ObjectInfo
from eddy.objectstore import ObjectStore, ObjectStoreError
from eddy.retry import RetriesExhausted, RetryPolicy, retrying
from eddy.secrets import SecretError, SecretSource
from eddy.snapshot import encode_snapshot
from eddy.wire import LISTING_SNAPSHOT
from eddy.workerclient import WorkerClient, WorkerError, WorkerUnavailable
from preloader.dispatch import WORKER_RETRY, Dispatcher, Progress
from preloader.options import LoadOptions, parse_options
from preloader.plan import PlanError, Selection, Totals, is_marker, plan_blocks, resolve_targets
from preloader.status import Outcome, Verification, judge, verify

log = logging.getLogger(__name__)

StoreFactory = Callable[[Mount, SecretSource | None], ObjectStore]


class LoadError(Exception):
    """The load cannot start or go on; `reason` is the condition reason, the text says exactly why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class LoadResult:
    outcome: Outcome
    progress: Progress
    verification: Verification
    options: LoadOptions
    whole_dataset: bool  # every mount loaded whole: the planned bytes are the Dataset's total
    replicas: int


def _default_store(mount: Mount, secrets: SecretSource | None) -> ObjectStore:
    return ObjectStore.for_mount(mount, secrets)


@dataclass
class LoadJob:
    dataload: DataLoad
    dataset: Dataset
    workers: Sequence[str]
    secrets: SecretSource | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    retry: RetryPolicy = WORKER_RETRY
    per_worker: int = 4
    store_factory: StoreFactory = field(default=_default_store)
    rng: random.Random = field(default_factory=random.Random)


async def _count(
    job: LoadJob, stores: dict[str, ObjectStore], selections: list[Selection], progress: Progress,
) -> dict[str, list[ObjectInfo]]:
    """Pass 1: totals per selection (and the whole listing of every mount when loadMetadata)."""
    totals = {id(s): Totals() for s in selections}
    snapshot: dict[str, list[ObjectInfo]] = {}
    workers = len(job.workers)
    if job.dataload.load_metadata:
        for mount in job.dataset.mounts:
            rows = snapshot.setdefault(mount.name, [])
            mine = [s for s in selections if s.mount.name == mount.name]
            async for info in stores[mount.name].list(""):
                rows.append(info)
                for sel in mine:
                    if sel.covers(info.key):
                        totals[id(sel)].add(info, sel.replicas, workers, job.block_size)
                        break
    else:
        for sel in selections:
            async for info in stores[sel.mount.name].list(sel.list_prefix):
                if sel.covers(info.key):
                    totals[id(sel)].add(info, sel.replicas, workers, job.block_size)
    for sel in selections:
        t = totals[id(sel)]
        if t.files == 0:
            where = stores[sel.mount.name].uri(sel.prefix)
            raise LoadError("NoObjects", f"target path {sel.target_path!r} has no objects ({where})")
        progress.files_total += t.files
        progress.bytes_total += t.bytes
        progress.blocks_total += t.blocks
    return snapshot


async def _listing(
    stores: dict[str, ObjectStore], selections: list[Selection]
) -> AsyncIterator[tuple[Selection, ObjectInfo]]:
    for sel in selections:
        async for info in stores[sel.mount.name].list(sel.list_prefix):
            if not is_marker(info):
                yield sel, info


async def _with_retries(job: LoadJob, what: Callable[[], Any]) -> Any:
    """`what()`, retried under `job.retry` while the worker is unreachable; then its last error."""
    try:
        return await retrying(what, job.retry, retry_on=WorkerUnavailable, rng=job.rng)
    except RetriesExhausted as gave_up:
        raise gave_up.last from None


async def _from_snapshot(
    snapshot: dict[str, list[ObjectInfo]], selections: list[Selection]
) -> AsyncIterator[tuple[Selection, ObjectInfo]]:
    """`_listing`'s stream from the rows of pass 1 (each mount listed whole, in key order)."""
    for sel in selections:
        for n, info in enumerate(snapshot.get(sel.mount.name, ())):
            if info.key.startswith(sel.list_prefix) and not is_marker(info):
                yield sel, info
            if n % 1000 == 999:
                await asyncio.sleep(0)  # a page's worth: let the dispatcher's requests run


async def _store_snapshot(job: LoadJob, client: WorkerClient, blob: bytes, progress: Progress) -> None:
    async def put(url: str) -> None:
        try:
            await _with_retries(job, lambda: client.put_meta(url, LISTING_SNAPSHOT, blob))
        except WorkerError as exc:
            progress.failed_workers.setdefault(url, f"storing the listing snapshot failed: {exc}")

    await asyncio.gather(*(put(url) for url in job.workers))


async def _stats(job: LoadJob, client: WorkerClient, urls: Sequence[str]) -> dict[str, dict[str, Any] | str]:
    async def one(url: str) -> dict[str, Any] | str:
        try:
            doc: dict[str, Any] = await _with_retries(job, lambda: client.stats(url))
            return doc
        except WorkerError as exc:
            return f"stats failed: {exc}"

    answers = await asyncio.gather(*(one(u) for u in urls))
    return dict(zip(urls, answers, strict=True))


async def run_load(
    job: LoadJob, client: WorkerClient, *, on_progress: Callable[[Progress], None] | None = None,
    progress: Progress | None = None,
) -> LoadResult:
    """Run one load; raises LoadError when it cannot start (bad target, empty path, listing failed)."""
    options = parse_options(job.dataload.options)
    if not job.workers:
        raise LoadError("NoWorkers", f"Dataset {job.dataset.meta.key} has no workers to load into")
    try:
        selections = resolve_targets(job.dataset, job.dataload)
    except PlanError as exc:
        raise LoadError("InvalidTarget", str(exc)) from None
    progress = progress or Progress()
    mounts = {m.name: m for m in job.dataset.mounts}
    needed = set(mounts) if job.dataload.load_metadata else {s.mount.name for s in selections}
    async with AsyncExitStack() as stack:
        stores: dict[str, ObjectStore] = {}
        try:
            for name in sorted(needed):
                stores[name] = await stack.enter_async_context(job.store_factory(mounts[name], job.secrets))
            snapshot = await _count(job, stores, selections, progress)
        except ObjectStoreError as exc:
            raise LoadError("ListingFailed", f"listing the object store failed: {exc}") from None
        except SecretError as exc:
            raise LoadError("SecretMissing", str(exc)) from None
        if on_progress is not None:
            on_progress(progress)
        if job.dataload.load_metadata:
            blob = await asyncio.to_thread(encode_snapshot, snapshot)
            await _store_snapshot(job, client, blob, progress)
            del blob
            listing = _from_snapshot(snapshot, selections)
        else:
            listing = _listing(stores, selections)
        dispatcher = Dispatcher(
            client, job.workers, progress=progress, concurrency=options.concurrency,
            per_worker=min(job.per_worker, options.concurrency), batch_size=options.batch_size,
            retry=job.retry, bandwidth=options.bandwidth, on_progress=on_progress, rng=job.rng,
        )
        try:
            await dispatcher.run(plan_blocks(listing, job.workers, job.block_size))
        except ObjectStoreError as exc:
            raise LoadError("ListingFailed", f"listing the object store failed: {exc}") from None
    urls = sorted(set(job.workers) - set(progress.failed_workers))
    stats = await _stats(job, client, urls)
    assigned = {u: b for u, b in progress.assigned_bytes.items() if u not in progress.failed_workers}
    verification = verify(assigned, stats)
    outcome = judge(progress, verification)
    whole = all(not s.prefix for s in selections) and {s.mount.name for s in selections} == set(mounts)
    replicas = max(min(s.replicas, len(job.workers)) for s in selections)
    return LoadResult(outcome, progress, verification, options, whole, replicas)
