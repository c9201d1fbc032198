"""The sidecar's data path, usable with or without a FUSE mount.

    byte range → blocks (eddy.blocks) → in-sidecar LRU (single-flight) → owner workers (HRW order,
    circuit breaker) → the object store directly

`DatasetReader` reads the files of the tree that `DatasetMetadata` (sidecar/metadata.py) keeps: it
owns the block cache, the fetcher (workers, then the store) and the read-ahead. `create()` opens the
object stores and the worker client both use, loads the tree, and closes them with the reader. The
FUSE layer (`sidecar/fs.py`) is a thin adapter over `open_file` / `read`; the demo and tests use
`read_file(path)` and `copy_dataset` to run the very same reads without a mount.

An open file pins the object's ETag: every block it reads carries that ETag, so if the object is
replaced, the first block that is not already cached fails with `ObjectChangedError` (EIO) instead of
mixing versions, and the namespace entry is refreshed so the next open sees the new object.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from eddy.blocks import BlockRef, blocks_for_range, blocks_of
from eddy.config import RuntimeConfig
from eddy.objectstore import ObjectStore
from eddy.secrets import SecretSource
from eddy.workerclient import WorkerClient
from sidecar.blockcache import Block, BlockCache
from sidecar.blockclient import FastBlockClient
from sidecar.fetcher import BlockFetcher, BlockUnavailable, CircuitBreaker, StaleBlock
from sidecar.metadata import DatasetMetadata
from sidecar.metrics import SidecarMetrics
from sidecar.namespace import Node
from sidecar.readahead import ReadaheadState
from sidecar.settings import ReaderOptions, load_settings
from sidecar.walkahead import WalkaheadState


class ReadError(Exception):
    """A read that cannot be served (maps to EIO)."""


class ObjectChangedError(ReadError):
    """The object was replaced or deleted while a file was open; no mixed bytes are returned."""


@dataclass
class FileHandle:
    """One open file: the object version it pinned and its reader's read-ahead state."""

    ino: int
    mount: str
    key: str
    etag: str
    size: int
    readahead: ReadaheadState
    prefetched_to: int = 0  # blocks below this index were already handed to the cache's prefetch


class DatasetReader:
    def __init__(
        self,
        metadata: DatasetMetadata,
        fetcher: BlockFetcher,
        block_size: int,
        options: ReaderOptions,
        metrics: SidecarMetrics,
    ) -> None:
        self.metadata = metadata
        self.fetcher = fetcher
        self.breaker = fetcher.breaker
        self.workers = fetcher.workers
        self.block_size = block_size
        self.options = options.bounded()
        self.metrics = metrics
        self.cache = BlockCache(self.options.cache_bytes, self.options.prefetch_budget)
        self.walkahead = WalkaheadState(self.options.walkahead)
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def create(
        cls,
        cfg: RuntimeConfig,
        secrets: SecretSource | None,
        options: ReaderOptions | None = None,
        metrics: SidecarMetrics | None = None,
    ) -> DatasetReader:
        """Open the stores and the worker client, load the tree (snapshot first, else listing), and
        give the reader over it; `close()` closes all of them."""
        options = options or ReaderOptions()
        metrics = metrics or SidecarMetrics()
        stack = contextlib.AsyncExitStack()
        stores: dict[str, ObjectStore] = {}
        try:
            for mount in cfg.dataset.mounts:
                stores[mount.name] = await stack.enter_async_context(ObjectStore.for_mount(mount, secrets))
            client = None
            if cfg.workers():
                regular = WorkerClient(timeout=options.worker_timeout, dataset=cfg.dataset.meta.key)
                client = FastBlockClient(regular, dataset=cfg.dataset.meta.key,
                                         verify_crc=options.verify_transfer)
                stack.push_async_callback(client.close)
            workers = cfg.workers() if client is not None else []
            places = {m.name: m.path for m in cfg.dataset.mounts}
            metadata = DatasetMetadata(stores, places, options, metrics, snapshots=client, workers=workers)
            stack.push_async_callback(metadata.close)
            await metadata.load()
            fetcher = BlockFetcher(stores, workers, client, metrics,
                                   breaker=CircuitBreaker(options.breaker_cooldown),
                                   worker_timeout=options.worker_timeout)
            reader = cls(metadata, fetcher, cfg.block_size, options, metrics)
        except BaseException:
            await stack.aclose()
            raise
        reader._stack = stack
        return reader

    async def close(self) -> None:
        await self.cache.close()
        await self._stack.aclose()

    async def __aenter__(self) -> DatasetReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ reads
    def open_file(self, node: Node) -> FileHandle:
        self._walk_ahead(node)
        return FileHandle(node.ino, node.mount, node.key, node.etag, node.size,
                          ReadaheadState(self.options.readahead))

    def _walk_ahead(self, node: Node) -> None:
        """A directory read file after file (`cp -r`): prefetch the next files (sidecar/walkahead.py)."""
        namespace = self.metadata.namespace
        parent = namespace.get(node.parent)
        if parent is None or not parent.children:
            return
        names = parent.sorted_names()
        index = bisect.bisect_left(names, node.name)
        if index >= len(names) or names[index] != node.name:
            return

        def entry(i: int) -> Node | None:
            return namespace.get(parent.children.get(names[i], 0)) if parent.children else None

        def size_of(i: int) -> int:
            child = entry(i)
            return -1 if child is None or child.is_dir else child.size

        for i in self.walkahead.observe(parent.ino, index, len(names), size_of):
            child = entry(i)
            if child is None or child.is_dir:
                continue
            self.metadata.versions.revalidate_ahead(child)
            if child.size == 0:
                continue
            for ref in blocks_of(child.mount, child.key, child.etag, child.size, self.block_size):
                if self.cache.prefetch(ref, self.fetcher.fetch):
                    self.metrics.walkahead_blocks.inc()

    def _ref(self, h: FileHandle, index: int) -> BlockRef:
        return BlockRef(h.mount, h.key, h.etag, index, h.size, self.block_size)

    async def _block(self, h: FileHandle, ref: BlockRef) -> Block:
        try:
            return await self.cache.get(ref, self.fetcher.fetch)
        except StaleBlock as exc:
            self.metrics.read_errors.labels("changed").inc()
            await self.metadata.versions.after_stale_read(h.mount, h.key, h.etag)
            raise ObjectChangedError(str(exc)) from None
        except BlockUnavailable as exc:
            self.metrics.read_errors.labels("unavailable").inc()
            raise ReadError(f"{h.mount}:{h.key} block {ref.index}: {exc}") from None

    async def read(self, h: FileHandle, offset: int, size: int) -> bytes | memoryview:
        """Up to `size` bytes at `offset` of an open file (fewer at the end of the file)."""
        end = min(h.size, offset + size)
        if end <= offset:
            return b""
        t0 = time.perf_counter()
        self.inflight += 1
        self._idle.clear()
        try:
            window = h.readahead.observe(offset, end - offset)
            if window:
                self._readahead(h, end, window)
            else:
                h.prefetched_to = 0  # no streak (a seek): forget how far ahead the last one got
            refs = blocks_for_range(h.mount, h.key, h.etag, h.size, offset, end - offset, self.block_size)
            if len(refs) == 1:
                ref = refs[0]
                data = await self._block(h, ref)
                out: bytes | memoryview = memoryview(data)[offset - ref.start : end - ref.start]
            else:
                blocks = await asyncio.gather(*(self._block(h, ref) for ref in refs))
                # Join only the bytes asked for (at most the read's size), not the whole blocks.
                out = b"".join(memoryview(block)[max(offset, r.start) - r.start : min(end, r.end) - r.start]
                               for r, block in zip(refs, blocks, strict=True))
        finally:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()
        self.metrics.read_seconds.observe(time.perf_counter() - t0)
        self.metrics.read_bytes.inc(end - offset)
        return out

    async def drained(self, timeout: float) -> bool:
        """Wait until no read is in flight (for a clean unmount); False if the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _readahead(self, h: FileHandle, end: int, window: int) -> None:
        """Prefetch the blocks of [end, end + window) not already asked for (once per block, not per read)."""
        if end >= h.size:
            return
        bs = self.block_size
        first, last = max(end // bs, h.prefetched_to), (min(h.size, end + window) - 1) // bs
        for index in range(first, last + 1):
            ref = self._ref(h, index)
            if not self.cache.prefetch(ref, self.fetcher.fetch) and ref not in self.cache:
                break  # over the in-flight budget: ask again on a later read
            h.prefetched_to = index + 1

    async def read_file(self, path: str, chunk: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of one file of the dataset, in order (block-sized chunks by default)."""
        node = self.metadata.namespace.resolve(path)
        if node is None or node.is_dir:
            raise FileNotFoundError(path)
        h = self.open_file(node)
        step = chunk or self.block_size
        offset = 0
        while offset < h.size:
            data = await self.read(h, offset, step)
            offset += len(data)
            yield bytes(data)

    def sync_stats(self) -> None:
        """Copy the cache's counters into the gauges (called before /metrics is rendered)."""
        self.metrics.cache_hits.set(self.cache.hits)
        self.metrics.cache_misses.set(self.cache.misses)
        self.metrics.cache_bytes.set(self.cache.cached_bytes)
        self.metrics.workers_down.set(len(self.breaker.down()))


async def copy_dataset(
    manifest: str | Path,
    dest: str | Path,
    secret_dir: str | Path | None,
    workers: Sequence[str],
    *,
    parallel: int = 4,
) -> int:
    """Copy every file of the dataset to `dest` through the sidecar's data path, without FUSE.

    The in-process equivalent of `cp -r <mount>/. dest/` (the demo uses it where FUSE is not
    permitted). Returns the number of bytes copied.
    """
    cfg = load_settings(None, [str(manifest)], workers=workers, no_workers=not workers)
    secrets = SecretSource.from_dir(secret_dir) if secret_dir else None
    root = Path(dest)
    total = 0
    async with await DatasetReader.create(cfg, secrets) as reader:
        files = []
        for path, node in reader.metadata.namespace.walk():
            if node.is_dir:
                await asyncio.to_thread((root / path).mkdir, parents=True, exist_ok=True)
            else:
                files.append(path)
        gate = asyncio.Semaphore(parallel)

        async def copy_one(path: str) -> int:
            async with gate:
                written = 0
                out = await asyncio.to_thread(open, root / path, "wb")
                try:
                    async for data in reader.read_file(path):
                        await asyncio.to_thread(out.write, data)
                        written += len(data)
                finally:
                    await asyncio.to_thread(out.close)
                return written

        for n in await asyncio.gather(*(copy_one(p) for p in files)):
            total += n
    return total
