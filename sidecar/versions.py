"""Learning an object's current version: coalesced HEADs, revalidation on open, after a failed read.

The namespace holds one node per file version (sidecar/namespace.py). This module keeps it current
between listings without a LIST storm: an open asks the store when the file's version was last
confirmed more than `metadata_ttl` seconds ago; a read that found its version gone (`StaleBlock`)
asks while the namespace still shows that version. Every request is shared: concurrent callers for one
object (or one directory) wait on the same in-flight request (and get its error), so a burst of failed
reads or opens of one object costs one HEAD (`eddy_sidecar_heads_total`).

An open in a directory of at least DIR_LIST_MIN entries revalidates the whole directory with one LIST
page instead (`eddy_sidecar_dir_lists_total`): a `cp -r` or an epoch over many small files then costs
one request per directory per TTL, not one HEAD per file (a HEAD costs ~1.5 ms of CPU through
aiobotocore here). A directory whose subtree does not fit in one page is revalidated by HEADs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from eddy.listing import ObjectInfo
from eddy.objectstore import ObjectNotFound, ObjectStoreError
from sidecar.metrics import SidecarMetrics
from sidecar.namespace import Namespace, Node

log = logging.getLogger(__name__)

STALE_HEAD_INTERVAL = 1.0  # at most one HEAD per object per second from failed reads
MAX_AHEAD = 64  # background revalidations walk-ahead may have in flight
DIR_LIST_MIN = 8  # a directory with this many entries is revalidated by one LIST page...
DIR_LIST_PAGE = 1000  # ...when its whole subtree fits in one page


def dir_prefix(key: str) -> str:
    """The key prefix of the directory holding `key` ("" = the mount's root)."""
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


class HeadStore(Protocol):
    async def head(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]: ...


class ObjectVersions:
    def __init__(self, stores: Mapping[str, HeadStore], namespace: Namespace, metrics: SidecarMetrics,
                 metadata_ttl: float) -> None:
        self.stores = stores
        self.namespace = namespace
        self.metrics = metrics
        self.metadata_ttl = metadata_ttl
        self._heads: dict[tuple[str, str], asyncio.Task[Node | None]] = {}
        self._stale_heads: dict[tuple[str, str], float] = {}  # when a failed read last asked a HEAD
        self._ahead: set[asyncio.Task[Node | None]] = set()
        self._lists: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._big_dirs: set[tuple[str, str]] = set()  # subtree over one page: revalidated by HEADs

    async def head(self, mount: str, key: str) -> Node | None:
        """The object's current version from one HEAD, recorded in the namespace; the live node (None:
        gone). Concurrent callers for one object share one in-flight HEAD (and its error)."""
        ident = (mount, key)
        task = self._heads.get(ident)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._head(mount, key))
            self._heads[ident] = task
            task.add_done_callback(lambda _: self._heads.pop(ident, None))
        return await asyncio.shield(task)

    async def _head(self, mount: str, key: str) -> Node | None:
        started = time.monotonic()  # the answer is at least this fresh
        self.metrics.heads.inc()
        try:
            obj: ObjectInfo | None = await self.stores[mount].head(key)
        except ObjectNotFound:
            obj = None
        return self.namespace.update_file(mount, key, obj, checked=started)

    def is_fresh(self, node: Node) -> bool:
        return self.metadata_ttl < 0 or time.monotonic() - node.checked < self.metadata_ttl

    async def revalidate(self, node: Node) -> Node | None:
        """On open: the object's current version, asked of the store when the node's was last confirmed
        more than `metadata_ttl` seconds ago (< 0: never) — by a LIST of its directory when that is
        large and fits one page, else by a HEAD. A store that cannot answer leaves the known version in
        place (reads stay pinned to it and fail rather than mix if it was replaced)."""
        if self.is_fresh(node):
            return node
        try:
            parent = self.namespace.get(node.parent)
            where = (node.mount, dir_prefix(node.key))
            big = where in self._big_dirs
            if parent is not None and len(parent.children or ()) >= DIR_LIST_MIN and not big:
                await self.list_dir(*where, parent.ino)
                live = self.namespace.file(node.mount, node.key)
                if live is None or self.is_fresh(live):
                    return live
            return await self.head(node.mount, node.key)
        except ObjectStoreError as exc:
            log.warning("could not revalidate %s:%s on open; serving the known version: %s",
                        node.mount, node.key, exc)
            return node

    async def list_dir(self, mount: str, prefix: str, dir_ino: int) -> bool:
        """Revalidate every file under `prefix` with one LIST page (shared by concurrent callers);
        False when the subtree did not fit in it (the directory is then left to HEADs)."""
        ident = (mount, prefix)
        task = self._lists.get(ident)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._list_dir(mount, prefix, dir_ino))
            self._lists[ident] = task
            task.add_done_callback(lambda _: self._lists.pop(ident, None))
        return await asyncio.shield(task)

    async def _list_dir(self, mount: str, prefix: str, dir_ino: int) -> bool:
        started = time.monotonic()
        self.metrics.dir_lists.inc()
        listed: dict[str, ObjectInfo] = {}
        complete = True
        pages = self.stores[mount].list(prefix, page_size=DIR_LIST_PAGE)
        try:
            async for obj in pages:
                if len(listed) >= DIR_LIST_PAGE - 1:
                    complete = False
                    break
                listed[obj.key] = obj
        finally:
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()
        if not complete:
            self._big_dirs.add((mount, prefix))
        for key, obj in listed.items():
            self.namespace.update_file(mount, key, obj, checked=started)
        if complete:  # files of the directory the listing no longer has are gone
            for key in self.namespace.files_below(dir_ino, mount, prefix):
                if key not in listed:
                    self.namespace.update_file(mount, key, None, checked=started)
        return complete

    async def after_stale_read(self, mount: str, key: str, etag: str) -> None:
        """A read of version `etag` found it gone: learn the current version — unless the namespace
        already moved past it, or a failed read asked within the last second (one HEAD per change,
        not one per failed read)."""
        self.metrics.changed_objects.inc()
        live = self.namespace.file(mount, key)
        if live is None or live.etag != etag:
            return
        ident, now = (mount, key), time.monotonic()
        if now - self._stale_heads.get(ident, -1e9) < STALE_HEAD_INTERVAL:
            return
        if len(self._stale_heads) > 10_000:
            self._stale_heads.clear()
        self._stale_heads[ident] = now
        try:
            await self.head(mount, key)
        except ObjectStoreError as exc:
            log.warning("could not refresh %s:%s after a change: %s", mount, key, exc)
            return
        log.info("%s:%s changed; namespace entry refreshed", mount, key)

    def revalidate_ahead(self, node: Node) -> None:
        """Start the HEAD the next file's open will want (in the background, coalesced), so a `cp -r`
        run again after the metadata TTL does not wait one store round trip per file."""
        if self.is_fresh(node) or (node.mount, node.key) in self._heads or len(self._ahead) >= MAX_AHEAD:
            return
        if (node.mount, dir_prefix(node.key)) in self._lists:
            return
        task = asyncio.get_running_loop().create_task(self.revalidate(node))
        self._ahead.add(task)

        def _done(t: asyncio.Task[Node | None]) -> None:
            self._ahead.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.debug("revalidating %s ahead failed: %s", node.key, t.exception())

        task.add_done_callback(_done)

    async def close(self) -> None:
        tasks = [*self._ahead, *self._heads.values(), *self._lists.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
