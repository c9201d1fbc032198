"""The worker's block logic between HTTP and the tiered store: hits, read-through, single-flight, warm.

- A hit is verified (CRC32C of the data against the block file's header) before a byte is served; a
  block that fails is discarded and fetched again.
- A miss reads the block from the object store pinned to the block's ETag (If-Match), keeps it, and
  serves it. Concurrent misses of one block share one object-store request (single-flight), and the
  number of object-store reads in flight is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from eddy.api import Dataset
from eddy.blocks import BlockRef
from eddy.crc import crc32c_of
from eddy.objectstore import REQUESTS, ObjectStore
from eddy.objectstore_ranged import BYTES
from eddy.wire import ERR_CACHE_FULL, BadBlockRef
from worker.blockfile import (
    BlockFileError,
    Stamp,
    fd_stamp,
    open_block,
    read_verified,
    verify_fd,
)
from worker.errors import UnknownMount, describe
from worker.eviction import CacheFull
from worker.mapped import Mapped, MappedBlocks, map_block
from worker.metrics import WorkerMetrics
from worker.rangefetch import FastPathUnavailable, RangeFetcher
from worker.tierstore import CacheWriteError, Hit, TierStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    """A block read through from the object store; `tier` is where it was kept ("" if it was not).
    `chunks` holds its bytes when it is to be served from memory (not kept, or `--serve-mode
    memory`); a block kept in sendfile mode is served from its file, and `chunks` is empty."""

    chunks: list[bytes]
    crc: int
    tier: str
    keep_error: str = ""
    length: int = -1  # -1: the chunks' length

    def __post_init__(self) -> None:
        if self.length < 0:
            object.__setattr__(self, "length", sum(len(c) for c in self.chunks))

    @functools.cached_property
    def data(self) -> bytes:
        """The block's bytes in one buffer: joined only when served from memory (not kept, or
        `--serve-mode memory`); a kept block is served from its file."""
        return b"".join(self.chunks)


MAP_MIN_BYTES = 512 << 10  # smaller MEM blocks are read into the response (blocksend.py `inline`)


@dataclass(frozen=True)
class VerifiedHit:
    """A hit whose data passed its checksum: `data` when read into memory, `mapped` when the MEM-level
    file is mapped (worker/mapped.py), else `file`, the very file that was checked, open for sendfile
    (the receiver closes it)."""

    hit: Hit
    data: bytes | None
    file: BinaryIO | None = None
    mapped: memoryview | None = None


class BlockService:
    def __init__(
        self,
        dataset: Dataset,
        store: TierStore,
        object_stores: Mapping[str, ObjectStore],
        metrics: WorkerMetrics,
        *,
        max_fetches: int = 8,
        warm_concurrency: int = 8,
        serve_mode: str = "sendfile",
        verify: str = "changed",
        reverify_after: float = 60.0,
        reverify_mem: bool = False,
        mapped_bytes: int = 0,
    ) -> None:
        if serve_mode not in ("memory", "sendfile"):
            raise ValueError(f"serve mode {serve_mode!r} is not 'memory' or 'sendfile'")
        if verify not in ("always", "changed"):
            raise ValueError(f"verify policy {verify!r} is not 'always' or 'changed'")
        self.verify = verify
        self.reverify_after = reverify_after
        self.reverify_mem = reverify_mem  # re-check MEM-level blocks on time too (see _still_good)
        self.dataset = dataset
        self.store = store
        self.object_stores = dict(object_stores)
        self.metrics = metrics
        self.serve_mode = serve_mode
        self.warm_concurrency = warm_concurrency
        self._fetch_slots = asyncio.Semaphore(max_fetches)
        self._fetch_slots_total = max_fetches
        self._buffers: list[bytearray] = []  # block buffers of finished fetches, reused (at most max_fetches)
        timeout = min((s.request_timeout for s in self.object_stores.values()), default=30.0)
        self._fetcher = RangeFetcher(timeout=timeout)
        self._inflight: dict[tuple[str, int, int], asyncio.Task[Fetched]] = {}
        # MEM hits sent from kept mappings (sendfile mode, verify=changed): see worker/mapped.py
        self.mapped: MappedBlocks | None = None
        if mapped_bytes > 0 and serve_mode == "sendfile" and verify == "changed":
            self.mapped = MappedBlocks(mapped_bytes)
            store.on_leave = self.mapped.forget

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def check_ref(self, ref: BlockRef) -> None:
        """Reject references the worker must not serve: unknown mount, no ETag to pin."""
        if ref.mount not in self.object_stores:
            names = ", ".join(sorted(self.object_stores)) or "none"
            raise UnknownMount(
                f"dataset {self.dataset.meta.key} has no mount {ref.mount!r} (mounts: {names})"
            )
        if not ref.etag:
            raise BadBlockRef("block reference needs an 'etag' (blocks are pinned to one object version)")

    # ------------------------------------------------------------------------------------------ hits
    async def read_hit(self, ref: BlockRef) -> VerifiedHit | None:
        """The block from the store, checked; None if it is not there (or was corrupt and is now gone).

        `verify="always"` checks the data's CRC32C on every hit. `"changed"` (the default) checks it on
        the first hit after the block was found or written, again whenever the file's inode, size, mtime
        or ctime changed (any write to it), and, on disk levels (SSD, HDD), again once `reverify_after`
        seconds have passed since the last check (a rolling scrub of hot blocks against bit rot; not on
        MEM, see `_still_good`); between checks, clients check `X-Eddy-Crc32c`.
        """
        for attempt in range(2):
            hit = self.store.lookup(ref)
            if hit is None:
                return None
            kept = self._kept_mapping(hit)
            if kept is not None:
                return VerifiedHit(hit, None, mapped=kept.data)
            h = hit.header
            try:
                if self.serve_mode == "memory":
                    check = (hit.path, h.header_len, h.data_len, h.data_crc)
                    return VerifiedHit(hit, await asyncio.to_thread(read_verified, *check))
                fd, writable = open_block(hit.path)  # a quick syscall; the check itself runs in a thread
            except FileNotFoundError:
                if attempt == 0:
                    await self.store.settled()  # it was being moved: look again once the move is done
                    continue
                return None
            except (BlockFileError, OSError) as exc:
                await self._corrupt(hit, exc)
                return None
            try:
                if not (self.verify == "changed" and self._still_good(hit, fd)):
                    stamp = await self._verify(fd, writable, h.header_len, h.data_len, h.data_crc)
                    hit.entry.verified = (stamp, time.monotonic())
            except (BlockFileError, OSError) as exc:
                os.close(fd)
                await self._corrupt(hit, exc)
                return None
            mapped = self._map(hit, fd)
            if mapped is not None:
                os.close(fd)
                return VerifiedHit(hit, None, mapped=mapped.data)
            return VerifiedHit(hit, None, os.fdopen(fd, "rb", buffering=0))
        return None

    def _mapping_on(self) -> bool:
        """Mappings serve hits only under the policy they were made for (checked per hit: the policy
        attributes may be changed on a running service): sendfile mode, `verify="changed"`, no
        time-based re-check of MEM blocks."""
        return (self.mapped is not None and self.serve_mode == "sendfile" and self.verify == "changed"
                and not self.reverify_mem)

    def _kept_mapping(self, hit: Hit) -> Mapped | None:
        """The block's kept mapping if its file is unchanged since it was mapped and checked (one
        `stat`, as for any hit between checks); a stale mapping is dropped."""
        if not self._mapping_on():
            return None
        assert self.mapped is not None
        digest = hit.entry.digest
        kept = self.mapped.get(digest)
        if kept is None:
            return None
        verified = hit.entry.verified
        try:
            st = os.stat(hit.path)
        except OSError:
            st = None
        if (st is None or not isinstance(verified, tuple) or verified[0] != kept.stamp
                or (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != kept.stamp):
            self.mapped.forget(digest)
            return None
        return kept

    def _map(self, hit: Hit, fd: int) -> Mapped | None:
        """Map a checked MEM block for the next hits (None: not mapped, send the file)."""
        if (not self._mapping_on() or hit.header.data_len <= MAP_MIN_BYTES
                or hit.mediumtype.partition(".")[0] != "MEM" or not isinstance(hit.entry.verified, tuple)):
            return None
        assert self.mapped is not None
        try:
            mapped = map_block(fd, hit.header.header_len, hit.entry.verified[0])
        except (OSError, ValueError) as exc:
            log.debug("mapping block %s failed (%s); sending its file", hit.entry.digest, exc)
            return None
        self.mapped.add(hit.entry.digest, mapped)
        return mapped

    @staticmethod
    async def _verify(fd: int, writable: bool, header_len: int, data_len: int, data_crc: int) -> Stamp:
        """The check in a thread; if the request is cancelled meanwhile, the fd is closed after it."""
        check = asyncio.to_thread(verify_fd, fd, writable, header_len, data_len, data_crc)
        task = asyncio.ensure_future(check)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda _: os.close(fd))
            raise

    async def _corrupt(self, hit: Hit, exc: BaseException) -> None:
        log.warning("block %s on %s failed its check (%s); discarding it",
                    hit.entry.digest, hit.mediumtype, exc)
        await self.store.discard(hit)

    def _still_good(self, hit: Hit, fd: int) -> bool:
        """Under `verify="changed"`: checked, and the file is untouched since (an fstat); on a disk
        level also checked within `reverify_after` seconds.

        The MEM level (tmpfs) is not re-checked on time alone: its "disk" is the page cache, with no
        medium to rot underneath an unchanged file, and any write to the file through the filesystem
        changes its stamp (ctime cannot be set back), which makes the next hit check it again. The
        time-based re-check cost 36% of a worker's CPU on re-reads a minute apart (docs/benchmarks.md).
        """
        if not isinstance(hit.entry.verified, tuple):
            return False
        stamp, when = hit.entry.verified
        on_time = hit.mediumtype != "MEM" or self.reverify_mem
        if on_time and time.monotonic() - when >= self.reverify_after:
            return False
        return bool(fd_stamp(fd) == stamp)

    # ----------------------------------------------------------------------------------- read-through
    async def fetch(self, ref: BlockRef) -> Fetched:
        """Read a block through from the object store and keep it; one request per block at a time."""
        self.check_ref(ref)
        # The digest names (mount, key, ETag, index); the sizes join the key so a reader using another
        # block size never receives a block cut differently.
        flight = (ref.digest, ref.object_size, ref.block_size)
        task = self._inflight.get(flight)
        if task is None:
            task = asyncio.create_task(self._fetch(ref))
            self._inflight[flight] = task
            task.add_done_callback(lambda t: self._done(flight, t))
        return await asyncio.shield(task)

    def _done(self, flight: tuple[str, int, int], task: asyncio.Task[Fetched]) -> None:
        if self._inflight.get(flight) is task:
            del self._inflight[flight]
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not logged as lost

    async def _fetch(self, ref: BlockRef) -> Fetched:
        store = self.object_stores[ref.mount]
        # The fetch slot is held until the block is written: it bounds the block buffers in use too.
        async with self._fetch_slots:
            buf = self._buffers.pop() if self._buffers else bytearray(ref.block_size)
            view = memoryview(buf)[:ref.length]
            t0 = time.perf_counter()
            try:
                got = await self._read_into(store, ref, view)
            except BaseException as exc:
                self.metrics.readthrough.labels(type(exc).__name__).inc()
                raise
            finally:
                self.metrics.readthrough_seconds.observe(time.perf_counter() - t0)
            self.metrics.readthrough.labels("ok").inc()
            self.metrics.readthrough_bytes.inc(got)
            if got != ref.length:
                raise BadBlockRef(
                    f"object {ref.key!r} (ETag {ref.etag}) holds {got} bytes for block {ref.index}, "
                    f"not {ref.length}: the reference's size ({ref.object_size}) is wrong"
                )
            crc = crc32c_of(view)  # in place, GIL released (~0.5 ms per 8 MiB here)
            try:
                tier = await self.store.put(ref, view, crc)
            except CacheFull as exc:
                self.metrics.cache_write_failures.labels("full").inc()
                fetched = Fetched([bytes(view)], crc, "", str(exc))
            except CacheWriteError as exc:
                self.metrics.cache_write_failures.labels("io").inc()
                log.warning("block %s not kept: %s", ref.digest, exc)
                fetched = Fetched([bytes(view)], crc, "", str(exc))
            else:
                # A kept block is served from its file in sendfile mode: no copy of the bytes is kept.
                keep = self.serve_mode != "sendfile"
                fetched = Fetched([bytes(view)] if keep else [], crc, tier, length=got)
            # Back to the pool only here: a put cancelled or failed otherwise may still have a thread
            # writing from the buffer, so that buffer is dropped, never reused.
            view.release()
            if len(self._buffers) < self._fetch_slots_total:
                self._buffers.append(buf)
            return fetched

    async def _read_into(self, store: ObjectStore, ref: BlockRef, view: memoryview) -> int:
        """The block's bytes into `view`: the fast path (worker/rangefetch.py) for plain http
        endpoints, else (or when it declines) the object store client, with its retries and typed
        errors. Returns the number of bytes the object has in the block's range."""
        url, headers = store.ranged_request(ref.key, ref.start, ref.end, ref.etag)
        if self._fetcher.handles(url):
            try:
                await self._fetcher.get_into(url, headers, view, ref.start, ref.etag)
            except FastPathUnavailable as exc:
                self.metrics.fast_path.labels("declined").inc()
                log.debug("block %s: fast path declined (%s); asking the object store client",
                          ref.digest, exc)
            else:
                self.metrics.fast_path.labels("served").inc()
                REQUESTS.labels("GetObject", "ok").inc()
                BYTES.inc(len(view))
                return len(view)
        chunks = await store.get_range_chunks(ref.key, ref.start, ref.end, etag=ref.etag)
        total = sum(len(c) for c in chunks)
        if total <= len(view):
            n = 0
            for chunk in chunks:
                view[n:n + len(chunk)] = chunk
                n += len(chunk)
        return total

    async def read_through(self, ref: BlockRef) -> bytes:
        """The block's bytes from the object store, not kept (a kept block evicted before it could be
        served from its file)."""
        self.check_ref(ref)
        async with self._fetch_slots:
            data = await self.object_stores[ref.mount].get_range(ref.key, ref.start, ref.end, etag=ref.etag)
        if len(data) != ref.length:
            raise BadBlockRef(f"object {ref.key!r} holds {len(data)} bytes for block {ref.index}, "
                              f"not {ref.length}")
        return data

    # ------------------------------------------------------------------------------------------ warm
    async def warm(self, refs: list[BlockRef | Exception]) -> list[dict[str, Any]]:
        """Cache every block (already cached ones are left alone); one result per block, in order."""
        slots = asyncio.Semaphore(self.warm_concurrency)

        async def one(i: int, item: BlockRef | Exception) -> dict[str, Any]:
            if isinstance(item, Exception):
                return self._warm_error(i, item)
            async with slots:
                hit = self.store.lookup(item)
                if hit is not None:
                    self.metrics.warmed.labels("cached").inc()
                    return {"index": i, "status": "cached", "tier": hit.mediumtype,
                            "bytes": hit.header.data_len}
                try:
                    fetched = await self.fetch(item)
                except Exception as exc:  # every failure becomes this block's result
                    return self._warm_error(i, exc)
            if not fetched.tier:
                self.metrics.warmed.labels("error").inc()
                return {"index": i, "status": "error", "tier": "", "bytes": fetched.length,
                        "code": ERR_CACHE_FULL, "error": f"fetched but not kept: {fetched.keep_error}"}
            self.metrics.warmed.labels("fetched").inc()
            return {"index": i, "status": "fetched", "tier": fetched.tier, "bytes": fetched.length}

        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(refs))))

    def _warm_error(self, i: int, exc: BaseException) -> dict[str, Any]:
        self.metrics.warmed.labels("error").inc()
        _, code, message = describe(exc)
        return {"index": i, "status": "error", "tier": "", "bytes": 0, "code": code, "error": message}

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(BaseException):
                await task
        self._fetcher.close()
        for store in self.object_stores.values():
            await store.close()
