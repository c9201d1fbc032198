"""Fetching one block: its owner workers in rendezvous order, then the object store directly.

A worker that errs or times out is skipped for the next owner; one that is unreachable is also marked
down for a short cooldown (a circuit breaker) so later reads skip it without waiting. A worker's own
cache miss is its business (it reads through); the sidecar only goes to the store itself when no
worker could answer. A block whose object changed (ETag mismatch, at a worker or at the store) raises
`StaleBlock`: it is never served with another version's bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import aiohttp

from eddy.blocks import BlockRef, owners
from eddy.objectstore import ObjectChanged, ObjectNotFound, ObjectStoreError
from eddy.workerclient import WorkerError, WorkerUnavailable
from sidecar.metrics import SidecarMetrics

log = logging.getLogger(__name__)


class StaleBlock(Exception):
    """The block's object no longer has the block's ETag (replaced or deleted)."""

    def __init__(self, ref: BlockRef, why: str) -> None:
        super().__init__(f"{ref.mount}:{ref.key} changed ({why})")
        self.ref = ref


class BlockUnavailable(Exception):
    """Neither a worker nor the object store could deliver the block."""


class RangeStore(Protocol):
    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes: ...


class BlockServer(Protocol):
    async def get_block(
        self, url: str, ref: BlockRef, start: int = 0, end: int | None = None, *, timeout: float | None = None
    ) -> bytes: ...


class CircuitBreaker:
    """Remembers which workers failed recently; each is skipped until its cooldown passes."""

    def __init__(self, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._down_until: dict[str, float] = {}

    def is_down(self, url: str) -> bool:
        until = self._down_until.get(url)
        if until is None:
            return False
        if self._clock() >= until:
            del self._down_until[url]
            return False
        return True

    def trip(self, url: str) -> None:
        if url not in self._down_until:
            log.warning("worker %s marked down for %.1fs", url, self.cooldown)
        self._down_until[url] = self._clock() + self.cooldown

    def reset(self, url: str) -> None:
        self._down_until.pop(url, None)

    def down(self) -> list[str]:
        return [url for url in list(self._down_until) if self.is_down(url)]


class BlockFetcher:
    def __init__(
        self,
        stores: Mapping[str, RangeStore],
        workers: Sequence[str],
        client: BlockServer | None,
        metrics: SidecarMetrics,
        *,
        breaker: CircuitBreaker | None = None,
        worker_timeout: float = 10.0,
    ) -> None:
        self.stores = stores
        self.workers = list(workers) if client is not None else []
        self.client = client
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self.worker_timeout = worker_timeout
        # the labelled children, looked up once (labels() costs a lock and a dict lookup per call)
        self._seconds = {s: metrics.fetch_seconds.labels(s) for s in ("worker", "store")}
        self._bytes = {s: metrics.fetched_bytes.labels(s) for s in ("worker", "store")}
        self._count = {s: metrics.fetches.labels(s) for s in ("worker", "store")}

    async def fetch(self, ref: BlockRef) -> bytes | bytearray:
        if ref.length == 0:
            return b""
        if self.client is not None:
            for url in owners(ref, self.workers, k=len(self.workers)):
                if self.breaker.is_down(url):
                    self.metrics.fallbacks.labels("worker_down").inc()
                    continue
                data = await self._from_worker(url, ref)
                if data is not None:
                    return data
        return await self._from_store(ref)

    async def _from_worker(self, url: str, ref: BlockRef) -> bytes | None:
        assert self.client is not None
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.worker_timeout):  # no task per fetch, as wait_for makes
                data = await self.client.get_block(url, ref)
        except TimeoutError:
            self.breaker.trip(url)
            self._fallback("timeout", url, ref, "timed out")
            return None
        except WorkerUnavailable as exc:
            if exc.status == 0 or (exc.status == 503 and exc.code != "object_store_unavailable"):
                self.breaker.trip(url)  # unreachable (not: its object store failed)
            self._fallback("unavailable", url, ref, str(exc))
            return None
        except WorkerError as exc:  # BlockChanged, BlockGone, bad request: the store decides
            self._fallback(type(exc).__name__, url, ref, str(exc))
            return None
        except (OSError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            self.breaker.trip(url)
            self._fallback("connection", url, ref, str(exc))
            return None
        except Exception as exc:  # a bug on the worker path must not fail the read: the store decides
            log.exception("unexpected error fetching from worker %s", url)
            self._fallback("error", url, ref, repr(exc))
            return None
        if len(data) != ref.length:
            self._fallback("short_block", url, ref, f"{len(data)} of {ref.length} bytes")
            return None
        self.breaker.reset(url)
        self._fetched("worker", t0, len(data))
        return data

    def _fetched(self, source: str, t0: float, nbytes: int) -> None:
        self._seconds[source].observe(time.perf_counter() - t0)
        self._bytes[source].inc(nbytes)
        self._count[source].inc()

    def _fallback(self, reason: str, url: str, ref: BlockRef, detail: str) -> None:
        self.metrics.fallbacks.labels(reason).inc()
        log.info("worker %s could not serve %s block %d (%s); trying the next source",
                 url, ref.key, ref.index, detail)

    async def _from_store(self, ref: BlockRef) -> bytes:
        store = self.stores.get(ref.mount)
        if store is None:
            raise BlockUnavailable(f"no object store for mount {ref.mount!r}")
        t0 = time.perf_counter()
        try:
            data = await store.get_range(ref.key, ref.start, ref.end, etag=ref.etag)
        except ObjectChanged as exc:
            raise StaleBlock(ref, "ETag mismatch") from exc
        except ObjectNotFound as exc:
            raise StaleBlock(ref, "object gone") from exc
        except ObjectStoreError as exc:
            raise BlockUnavailable(str(exc)) from exc
        if len(data) != ref.length:
            raise StaleBlock(ref, f"store returned {len(data)} of {ref.length} bytes")
        self._fetched("store", t0, len(data))
        return data
