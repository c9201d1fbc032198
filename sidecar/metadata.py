"""The dataset's tree and how it stays current: the namespace lifecycle, apart from the data path.

`DatasetMetadata` loads the tree once (a worker's listing snapshot first, else the object store's
listing), re-lists it every `listing_ttl` seconds in the background, and learns single objects' new
versions between listings (`sidecar/versions.py`: revalidation on open, after a failed read). It
reads no file bytes: `sidecar/reader.py` (the data path) reads the tree this keeps, and the FUSE layer
answers lookups, attributes and directory listings from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from eddy.listing import ObjectInfo
from eddy.objectstore import ObjectStore, ObjectStoreError
from eddy.snapshot import SnapshotError, decode_snapshot
from eddy.wire import LISTING_SNAPSHOT
from sidecar.metrics import SidecarMetrics
from sidecar.namespace import Namespace, Node
from sidecar.settings import ReaderOptions
from sidecar.versions import ObjectVersions

log = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT = 10.0  # seconds one worker may take to hand over the listing snapshot


class SnapshotSource(Protocol):
    """Where the preloader's listing snapshot can be asked for (the workers' meta blobs)."""

    async def get_meta(self, url: str, name: str, *, timeout: float | None = None) -> bytes | None: ...


class DatasetMetadata:
    """The namespace of one Dataset: loaded, refreshed, revalidated; `close()` stops its background work."""

    def __init__(
        self,
        stores: Mapping[str, ObjectStore],
        places: Mapping[str, str],
        options: ReaderOptions,
        metrics: SidecarMetrics,
        *,
        snapshots: SnapshotSource | None = None,
        workers: Sequence[str] = (),
    ) -> None:
        self.stores = stores
        self.places = places  # mount name -> its path in the tree ("/" = the root)
        self.options = options
        self.metrics = metrics
        self.snapshots = snapshots
        self.workers = list(workers) if snapshots is not None else []
        self.namespace = Namespace()
        self.versions = ObjectVersions(stores, self.namespace, metrics, options.metadata_ttl)
        self.listed_at = 0.0
        self.source = "none"  # "snapshot" or "listing": where the tree came from
        self._refresher: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """The first tree: the listing snapshot a worker holds, else a listing of every mount."""
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
        if self.snapshots is None:
            return {}
        for url in self.workers:
            try:
                ask = self.snapshots.get_meta(url, LISTING_SNAPSHOT)
                blob = await asyncio.wait_for(ask, SNAPSHOT_TIMEOUT)
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
        """The object's current version from the store (coalesced HEAD); None when it is gone."""
        return await self.versions.head(mount, key)

    async def revalidate(self, node: Node) -> Node | None:
        """On open: the live node for `node`'s object, asked of the store when it is older than the TTL."""
        return await self.versions.revalidate(node)

    async def close(self) -> None:
        await self.versions.close()
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
