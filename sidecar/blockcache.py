"""The sidecar's small block cache: an LRU bounded in bytes, with single-flight fetches.

Concurrent readers of one block share one fetch (the first caller starts it; the others wait on the
same task, shielded so that one interrupted reader does not cancel the others). Read-ahead puts blocks
here too, within a separate bound on bytes in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from eddy.blocks import BlockRef

log = logging.getLogger(__name__)

# A block's bytes: worker fetches land in a bytearray sized to the block (no extra copy).
Block = bytes | bytearray
Fetch = Callable[[BlockRef], Coroutine[Any, Any, Block]]


class BlockCache:
    def __init__(self, capacity: int, prefetch_budget: int) -> None:
        self.capacity = max(0, capacity)
        self.prefetch_budget = max(0, prefetch_budget)
        self._lru: OrderedDict[str, Block] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, asyncio.Task[Block]] = {}
        self._prefetching = 0
        self.hits = 0
        self.misses = 0

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __contains__(self, ref: BlockRef) -> bool:
        return ref.identity in self._lru or ref.identity in self._inflight

    def peek(self, ref: BlockRef) -> Block | None:
        """The cached block (and mark it recently used), or None; never fetches."""
        data = self._lru.get(ref.identity)
        if data is not None:
            self._lru.move_to_end(ref.identity)
        return data

    async def get(self, ref: BlockRef, fetch: Fetch) -> Block:
        ident = ref.identity
        data = self._lru.get(ident)
        if data is not None:
            self._lru.move_to_end(ident)
            self.hits += 1
            return data
        task = self._inflight.get(ident)
        if task is None:
            self.misses += 1
            task = self._start(ref, fetch)
        else:
            self.hits += 1
        return await asyncio.shield(task)

    def prefetch(self, ref: BlockRef, fetch: Fetch) -> bool:
        """Start fetching a block in the background if it is not here, within the in-flight budget."""
        if ref in self or ref.length == 0:
            return False
        if self._prefetching + ref.length > self.prefetch_budget:
            return False
        self._prefetching += ref.length
        task = self._start(ref, fetch)

        def _done(t: asyncio.Task[Block]) -> None:
            self._prefetching -= ref.length
            if not t.cancelled() and t.exception() is not None:
                log.debug("read-ahead of %s block %d failed: %s", ref.key, ref.index, t.exception())

        task.add_done_callback(_done)
        return True

    def _start(self, ref: BlockRef, fetch: Fetch) -> asyncio.Task[Block]:
        ident = ref.identity
        task: asyncio.Task[Block] = asyncio.get_running_loop().create_task(fetch(ref))
        self._inflight[ident] = task

        def _settle(t: asyncio.Task[Block]) -> None:
            self._inflight.pop(ident, None)
            if not t.cancelled() and t.exception() is None:
                self._put(ident, t.result())

        task.add_done_callback(_settle)
        return task

    def _put(self, ident: str, data: Block) -> None:
        if len(data) > self.capacity:
            return
        old = self._lru.pop(ident, None)
        if old is not None:
            self._bytes -= len(old)
        self._lru[ident] = data
        self._bytes += len(data)
        while self._bytes > self.capacity and self._lru:
            _, evicted = self._lru.popitem(last=False)
            self._bytes -= len(evicted)

    def clear(self) -> None:
        self._lru.clear()
        self._bytes = 0

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.clear()
