"""The sidecar's data path, usable with or without a FUSE mount.

    byte range → blocks (eddy.blocks) → in-sidecar LRU (single-flight) → owner workers (HRW order,
    circuit breaker) → the object store directly

`DatasetReader` owns the namespace, the object-store clients, the worker client, the block cache and
the read-ahead. The FUSE layer (`sidecar/fs.py`) is a thin adapter over `open_file` / `read`; the demo
and tests use `read_file(path)` and `copy_dataset` to run the very same reads without a mount.

An open file pins the object's ETag: every block it reads carries that ETag, so if the object is
replaced, the first block that is not already cached fails with `ObjectChangedError` (EIO) instead of
mixing versions, and the namespace entry is refreshed so the next open sees the new object.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eddy.blocks import BlockRef
from eddy.config import RuntimeConfig
from eddy.listing import ObjectInfo
from eddy.objectstore import ObjectStore, ObjectStoreError
from eddy.secrets import SecretSource
from eddy.snapshot import SnapshotError, decode_snapshot
from eddy.wire import LISTING_SNAPSHOT
from eddy.workerclient import WorkerClient
from sidecar.blockcache import Block, BlockCache
from sidecar.blockclient import FastBlockClient
from sidecar.fetcher import BlockFetcher, BlockUnavailable, CircuitBreaker, StaleBlock
from sidecar.metrics import SidecarMetrics
from sidecar.namespace import Namespace, Node
from sidecar.readahead import ReadaheadState
from sidecar.settings import ReaderOptions, load_settings
from sidecar.versions import ObjectVersions
from sidecar.walkahead import WalkaheadState

log = logging.getLogger(__name__)


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
        cfg: RuntimeConfig,
        stores: Mapping[str, ObjectStore],
        client: FastBlockClient | None,
        options: ReaderOptions,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.options = options.bounded()
        self.block_size = cfg.block_size
        self.metrics = metrics or SidecarMetrics()
        self.stores = stores
        self.client = client
        self.workers = cfg.workers() if client is not None else []
        self.places = {m.name: m.path for m in cfg.dataset.mounts}
        self.namespace = Namespace()
        self.cache = BlockCache(self.options.cache_bytes, self.options.prefetch_budget)
        self.walkahead = WalkaheadState(self.options.walkahead)
        self.breaker = CircuitBreaker(self.options.breaker_cooldown)
        self.fetcher = BlockFetcher(stores, self.workers, client, self.metrics, breaker=self.breaker,
                                    worker_timeout=self.options.worker_timeout)
        self.listed_at = 0.0
        self.source = "none"
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stack = contextlib.AsyncExitStack()
        self._refresher: asyncio.Task[None] | None = None
        self.versions = ObjectVersions(stores, self.namespace, self.metrics, self.options.metadata_ttl)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def create(
        cls,
        cfg: RuntimeConfig,
        secrets: SecretSource | None,
        options: ReaderOptions | None = None,
        metrics: SidecarMetrics | None = None,
    ) -> DatasetReader:
        """Open the stores and the worker client and load the namespace (snapshot first, else listing)."""
        options = options or ReaderOptions()
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
            if client is not None:
                stack.push_async_callback(client.close)
            reader = cls(cfg, stores, client, options, metrics)
            reader._stack = stack
            await reader.load_namespace()
        except BaseException:
            await stack.aclose()
            raise
        return reader

    async def close(self) -> None:
        await self.versions.close()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.cache.close()
        await self._stack.aclose()

    async def __aenter__(self) -> DatasetReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ namespace
    async def load_namespace(self) -> None:
        listings: dict[str, list[ObjectInfo]] = {}
        if self.options.use_snapshot:
            listings = await self._snapshot_from_workers()
        source = "snapshot" if listings else "listing"
        for name in self.stores:
            if name not in listings:
                listings[name] = await self._list(name)
        stats = self.namespace.load(listings, self.places)
        self.listed_at = time.monotonic()
        self.source = source
        self.metrics.files.set(stats.files)
        log.info("namespace from %s: %d files, %d directories, %d bytes, %d keys skipped",
                 source, stats.files, stats.dirs, stats.bytes, stats.skipped)

    async def refresh(self) -> None:
        """Re-list every mount (the TTL refresh); inode numbers of kept paths do not change."""
        listings = {name: await self._list(name) for name in self.stores}
        built = await asyncio.to_thread(self.namespace.build, listings, self.places)
        stats = self.namespace.install(built)
        self.listed_at = time.monotonic()
        self.source = "listing"
        self.metrics.files.set(stats.files)

    def start_refresh(self) -> None:
        """Refresh the listing every `listing_ttl` seconds in the background (0 = never)."""
        if self.options.listing_ttl > 0 and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.listing_ttl)
            try:
                await self.refresh()
            except (ObjectStoreError, OSError) as exc:
                log.warning("listing refresh failed, keeping the old tree: %s", exc)

    async def _list(self, mount: str) -> list[ObjectInfo]:
        return [o async for o in self.stores[mount].list()]

    async def _snapshot_from_workers(self) -> dict[str, list[ObjectInfo]]:
        if self.client is None:
            return {}
        for url in self.workers:
            try:
                blob = await asyncio.wait_for(self.client.get_meta(url, LISTING_SNAPSHOT), 10)
            except Exception as exc:  # any worker problem just means: list the store instead
                log.info("no listing snapshot from %s (%s)", url, exc)
                continue
            if not blob:
                continue
            try:
                mounts = decode_snapshot(blob)
            except SnapshotError as exc:
                log.warning("listing snapshot from %s ignored: %s", url, exc)
                continue
            known = {name: objs for name, objs in mounts.items() if name in self.stores}
            if known:
                log.info("mounting from the listing snapshot held by %s", url)
                return known
        return {}

    async def head(self, mount: str, key: str) -> Node | None:
        return await self.versions.head(mount, key)

    async def revalidate(self, node: Node) -> Node | None:
        return await self.versions.revalidate(node)

    # ------------------------------------------------------------------ reads
    def open_file(self, node: Node) -> FileHandle:
        self._walk_ahead(node)
        return FileHandle(node.ino, node.mount, node.key, node.etag, node.size,
                          ReadaheadState(self.options.readahead))

    def _walk_ahead(self, node: Node) -> None:
        """A directory read file after file (`cp -r`): prefetch the next files (sidecar/walkahead.py)."""
        parent = self.namespace.get(node.parent)
        if parent is None or not parent.children:
            return
        names = parent.sorted_names()
        index = bisect.bisect_left(names, node.name)
        if index >= len(names) or names[index] != node.name:
            return

        def entry(i: int) -> Node | None:
            return self.namespace.get(parent.children.get(names[i], 0)) if parent.children else None

        def size_of(i: int) -> int:
            child = entry(i)
            return -1 if child is None or child.is_dir else child.size

        for i in self.walkahead.observe(parent.ino, index, len(names), size_of):
            child = entry(i)
            if child is None or child.is_dir:
                continue
            self.versions.revalidate_ahead(child)
            if child.size == 0:
                continue
            for block in range(-(-child.size // self.block_size)):
                ref = BlockRef(child.mount, child.key, child.etag, block, child.size, self.block_size)
                if self.cache.prefetch(ref, self.fetcher.fetch):
                    self.metrics.walkahead_blocks.inc()

    def _ref(self, h: FileHandle, index: int) -> BlockRef:
        return BlockRef(h.mount, h.key, h.etag, index, h.size, self.block_size)

    async def _block(self, h: FileHandle, index: int) -> Block:
        try:
            return await self.cache.get(self._ref(h, index), self.fetcher.fetch)
        except StaleBlock as exc:
            self.metrics.read_errors.labels("changed").inc()
            await self.versions.after_stale_read(h.mount, h.key, h.etag)
            raise ObjectChangedError(str(exc)) from None
        except BlockUnavailable as exc:
            self.metrics.read_errors.labels("unavailable").inc()
            raise ReadError(f"{h.mount}:{h.key} block {index}: {exc}") from None

    async def read(self, h: FileHandle, offset: int, size: int) -> bytes | memoryview:
        """Up to `size` bytes at `offset` of an open file (fewer at the end of the file)."""
        end = min(h.size, offset + size)
        if end <= offset:
            return b""
        t0 = time.perf_counter()
        self.inflight += 1
        self._idle.clear()
        try:
            bs = self.block_size
            window = h.readahead.observe(offset, end - offset)
            if window:
                self._readahead(h, end, window)
            else:
                h.prefetched_to = 0  # no streak (a seek): forget how far ahead the last one got
            first, last = offset // bs, (end - 1) // bs
            if first == last:
                data = await self._block(h, first)
                base = first * bs
                out: bytes | memoryview = memoryview(data)[offset - base : end - base]
            else:
                blocks = await asyncio.gather(*(self._block(h, i) for i in range(first, last + 1)))
                # Join only the bytes asked for (at most the read's size), not the whole blocks.
                pieces = []
                for i, block in zip(range(first, last + 1), blocks, strict=True):
                    lo, hi = max(offset, i * bs) - i * bs, min(end, (i + 1) * bs) - i * bs
                    pieces.append(memoryview(block)[lo:hi])
                out = b"".join(pieces)
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
        node = self.namespace.resolve(path)
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
        for path, node in reader.namespace.walk():
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
