"""The worker's HTTP server (aiohttp): eddy/wire.py's API over a `BlockService`: the routes and their
handlers. How a block's bytes are sent (Range, mapping, sendfile) is worker/blocksend.py's job, how a
failure is answered worker/httperror.py's.

`make_app(settings)` builds the application; its startup opens the tiered store (re-indexing the
block files found on the levels) and the object-store clients, and its cleanup closes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from eddy.api import Dataset
from eddy.blocks import DEFAULT_BLOCK_SIZE, BlockRef
from eddy.objectstore import ObjectStore
from eddy.secrets import SecretSource
from eddy.wire import (
    BLOCK_PATH,
    DATASET_PARAM,
    ERR_META_FULL,
    ERR_NOT_FOUND,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_DATASET,
    HEADER_CACHE,
    HEADER_CRC,
    HEADER_TIER,
    META_MAX_BYTES,
    META_MAX_TOTAL,
    META_PATH,
    PURGE_PATH,
    STATS_PATH,
    WARM_PATH,
    BadBlockRef,
    ref_from_mapping,
)
from worker.blocksend import INLINE_MAX, BlockSender, parse_range, span_length
from worker.errors import BadRequest
from worker.guard import Tokens, auth_middleware
from worker.httperror import HTTPError, error_middleware, json_error
from worker.metastore import BadMetaName, MetaStore
from worker.metrics import WorkerMetrics
from worker.service import BlockService
from worker.tierstore import LevelConfig, TierStore

log = logging.getLogger(__name__)

MAX_WARM_BLOCKS = 10_000
WARM_MAX_BYTES = 4 << 20  # 10 000 references fit in ~3 MiB; parsed JSON costs ~10x its size in memory


@dataclass
class WorkerSettings:
    dataset: Dataset
    levels: list[LevelConfig]
    secrets: SecretSource | None = None
    max_fetches: int = 8
    warm_concurrency: int = 8
    serve_mode: str = "sendfile"  # "sendfile" (check in place, sendfile) or "memory" (read, check, stream)
    verify: str = "changed"  # "changed" or "always" (see BlockService.read_hit)
    reverify_after: float = 60.0
    mapped_bytes: int = 1 << 30  # MEM blocks kept mapped for send(2) (worker/mapped.py); 0: sendfile
    promote: bool = True
    store_timeout: float = 30.0
    meta_dir: Path | None = None
    block_size: int = DEFAULT_BLOCK_SIZE  # the worker's, never the caller's (eddy/wire.py)
    tokens: Tokens = field(default_factory=Tokens)  # none: every caller is served (local mode)
    meta_max_bytes: int = META_MAX_BYTES  # one blob
    meta_max_total: int = META_MAX_TOTAL  # all blobs together
    body_timeout: float = 30.0  # a request body (warm, meta) must arrive within this
    idle_timeout: float = 15.0  # a connection sends a complete request within this, or is closed
    max_connections: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_json(raw: bytes, what: str) -> Any:
    """JSON or 400: malformed, not UTF-8, or nested too deep for the parser (RecursionError)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest(f"{what} is not JSON (malformed, or nested too deeply)") from None


class WorkerServer:
    """The handlers, with the store, service and metrics they share."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.dataset = settings.dataset
        self.metrics = WorkerMetrics()
        self.store = TierStore(settings.levels, promote=settings.promote)
        self.metrics.watch_store(self.store)
        self.meta = MetaStore(settings.meta_dir)
        self.service: BlockService | None = None
        self.ready = False
        self.send = BlockSender(self.metrics.served_bytes)
        self._block_seconds: dict[str, Any] = {}  # request_seconds children by result, looked up once

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self, _app: web.Application | None = None) -> None:
        await self.store.open()
        await self.meta.open()
        stores = {
            m.name: ObjectStore.for_mount(
                m, self.settings.secrets, request_timeout=self.settings.store_timeout
            )
            for m in self.dataset.mounts
        }
        self.service = BlockService(
            self.dataset, self.store, stores, self.metrics, max_fetches=self.settings.max_fetches,
            warm_concurrency=self.settings.warm_concurrency, serve_mode=self.settings.serve_mode,
            verify=self.settings.verify, reverify_after=self.settings.reverify_after,
            mapped_bytes=self.settings.mapped_bytes,
        )
        self.ready = True
        log.info("worker for dataset %s ready: %d blocks cached (%d bytes)",
                 self.dataset.meta.key, len(self.store.index), self.store.cached_bytes)

    async def stop(self, _app: web.Application | None = None) -> None:
        self.ready = False
        if self.service is not None:
            await self.service.close()
        await self.store.close()

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[error_middleware, auth_middleware(self.settings.tokens, json_error)],
            client_max_size=self.settings.meta_max_bytes + (1 << 20),
        )
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        r = app.router
        r.add_get(BLOCK_PATH, self.get_block, allow_head=False)
        r.add_post(WARM_PATH, self.warm)
        r.add_put(META_PATH, self.put_meta)
        r.add_get(META_PATH, self.get_meta, allow_head=False)
        r.add_get(STATS_PATH, self.stats, allow_head=False)
        r.add_delete(PURGE_PATH, self.purge)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_text)
        return app

    # -------------------------------------------------------------------------------------- helpers
    async def _body(self, request: web.Request, limit: int) -> bytes:
        """The request body: at most `limit` bytes (413 beyond, before reading when the length is
        announced) and within `body_timeout` (408 after)."""
        too_big = HTTPError(413, ERR_TOO_LARGE, f"this request's body may hold at most {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        buf = bytearray()
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                async for chunk in request.content.iter_chunked(1 << 20):
                    buf += chunk
                    if len(buf) > limit:
                        raise too_big
        except TimeoutError:
            late = f"the request body did not arrive within {self.settings.body_timeout:g}s"
            raise HTTPError(408, ERR_TIMEOUT, late) from None
        return bytes(buf)

    def _check_meta_total(self, name: str, size: int) -> None:
        total = self.meta.total_bytes() - len(self.meta.peek(name)) + size
        if total > self.settings.meta_max_total:
            raise HTTPError(507, ERR_META_FULL,
                             f"meta blobs may hold {self.settings.meta_max_total} bytes in all; this one "
                             f"({size} bytes) would make {total}")

    def _service(self) -> BlockService:
        if self.service is None or not self.ready:
            raise HTTPError(503, "not_ready", "the worker is starting or stopping")
        return self.service

    def _check_dataset(self, value: str | None) -> None:
        if not value:
            return
        meta = self.dataset.meta
        if value not in (meta.key, meta.name):
            raise HTTPError(404, ERR_UNKNOWN_DATASET,
                             f"this worker serves dataset {meta.key}, not {value!r}")

    # ---------------------------------------------------------------------------------------- block
    async def get_block(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        result = "error"
        try:
            service = self._service()
            self._check_dataset(request.query.get(DATASET_PARAM))
            ref = ref_from_mapping(request.query, block_size=self.settings.block_size)
            service.check_ref(ref)
            rng = parse_range(request.headers.get("Range"), ref.length)
            verified = await service.read_hit(ref)
            if verified is not None:
                result = "hit"
                hit = verified.hit
                self.metrics.hits.labels(hit.mediumtype).inc()
                self.store.maybe_promote(hit)
                headers = {
                    HEADER_CACHE: "hit", HEADER_TIER: hit.mediumtype, HEADER_CRC: str(hit.header.data_crc)
                }
                if verified.mapped is not None:
                    return await self.send.send_view(request, verified.mapped, ref, rng, headers)
                if verified.file is not None:
                    offset = hit.header.header_len
                    if hit.mediumtype == "MEM" and span_length(rng, ref.length) <= INLINE_MAX:
                        return self.send.inline(verified.file, offset, ref, rng, headers)
                    return await self.send.send_file(request, verified.file, offset, ref, rng, headers)
                assert verified.data is not None
                return await self.send.send_bytes(request, verified.data, rng, headers)
            result = "miss"
            self.metrics.misses.inc()
            fetched = await service.fetch(ref)
            headers = {HEADER_CACHE: "miss", HEADER_TIER: fetched.tier, HEADER_CRC: str(fetched.crc)}
            if fetched.tier and self.settings.serve_mode == "sendfile":
                # Serve the block file just written, not the bytes in memory: a slow reader of a miss
                # then holds a file descriptor, not a block-sized buffer, for as long as it reads.
                del fetched
                kept = await service.read_hit(ref)
                if kept is not None and kept.mapped is not None:
                    return await self.send.send_view(request, kept.mapped, ref, rng, headers)
                if kept is not None and kept.file is not None:
                    return await self.send.send_file(
                        request, kept.file, kept.hit.header.header_len, ref, rng, headers
                    )
                if kept is not None and kept.data is not None:
                    return await self.send.send_bytes(request, kept.data, rng, headers)
                # evicted before it could be served: read it through again, not kept
                return await self.send.send_bytes(request, await service.read_through(ref), rng, headers)
            return await self.send.send_bytes(request, fetched.data, rng, headers)
        except BaseException:
            result = "error"
            raise
        finally:
            seconds = self._block_seconds.get(result)
            if seconds is None:
                seconds = self._block_seconds[result] = self.metrics.request_seconds.labels("block", result)
            seconds.observe(time.perf_counter() - t0)

    # ----------------------------------------------------------------------------------------- warm
    async def warm(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        service = self._service()
        self._check_dataset(request.query.get(DATASET_PARAM))
        body = _parse_json(await self._body(request, WARM_MAX_BYTES), "warm body")
        if not isinstance(body, dict) or not isinstance(body.get("blocks"), list):
            raise BadRequest('warm body must be {"blocks": [block reference, ...]}')
        self._check_dataset(body.get(DATASET_PARAM))
        raw_blocks = body["blocks"]
        if len(raw_blocks) > MAX_WARM_BLOCKS:
            raise BadRequest(
                f"warm takes at most {MAX_WARM_BLOCKS} blocks per request, got {len(raw_blocks)}"
            )
        refs: list[BlockRef | Exception] = []
        for raw in raw_blocks:
            try:
                if not isinstance(raw, dict):
                    raise BadBlockRef(f"block reference {raw!r} is not an object")
                ref = ref_from_mapping(raw, block_size=self.settings.block_size)
                service.check_ref(ref)
                refs.append(ref)
            except Exception as exc:  # reported in this block's result
                refs.append(exc)
        results = await service.warm(refs)
        self.metrics.request_seconds.labels("warm", "ok").observe(time.perf_counter() - t0)
        return web.json_response({"results": results})

    # ----------------------------------------------------------------------------------------- meta
    async def put_meta(self, request: web.Request) -> web.StreamResponse:
        self._check_dataset(request.query.get(DATASET_PARAM))
        name = request.match_info["name"]
        try:
            self.meta.check(name)
        except BadMetaName as exc:
            raise BadRequest(str(exc)) from None
        cap = self.settings.meta_max_bytes
        if request.content_length is not None and request.content_length > cap:
            raise HTTPError(413, ERR_TOO_LARGE, f"meta blobs are at most {cap} bytes")
        self._check_meta_total(name, request.content_length or 0)
        data = await self._body(request, cap)
        if len(data) > cap:
            raise HTTPError(413, ERR_TOO_LARGE, f"meta blobs are at most {cap} bytes")
        self._check_meta_total(name, len(data))
        await self.meta.put(name, data)
        return web.json_response({"name": name, "bytes": len(data)})

    async def get_meta(self, request: web.Request) -> web.StreamResponse:
        self._check_dataset(request.query.get(DATASET_PARAM))
        name = request.match_info["name"]
        try:
            data = self.meta.get(name)
        except BadMetaName as exc:
            raise BadRequest(str(exc)) from None
        if data is None:
            raise HTTPError(404, ERR_NOT_FOUND, f"no meta blob named {name!r}")
        return web.Response(body=data, content_type="application/octet-stream")

    # -------------------------------------------------------------------------------------- control
    async def stats(self, request: web.Request) -> web.StreamResponse:
        self._check_dataset(request.query.get(DATASET_PARAM))
        return web.json_response({
            "dataset": self.dataset.meta.key,
            "cached_bytes": self.store.cached_bytes,
            "blocks": len(self.store.index),
            "levels": self.store.stats(),
            "inflight": self.service.inflight if self.service else 0,
            "meta": self.meta.names(),
            "ready": self.ready,
        })

    async def purge(self, request: web.Request) -> web.StreamResponse:
        self._check_dataset(request.query.get(DATASET_PARAM))
        blocks, size = await self.store.purge()
        log.info("purged %d blocks (%d bytes) of dataset %s", blocks, size, self.dataset.meta.key)
        return web.json_response({"dataset": self.dataset.meta.key, "blocks": blocks, "bytes": size})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        if not self.ready:
            return json_error(503, "not_ready", "the worker is starting or stopping")
        return web.json_response({"status": "ready", "dataset": self.dataset.meta.key})

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        # The worker's own registry, then the process-wide one: the object store's request, retry and
        # byte counters (eddy/objectstore.py) and the process collectors live there.
        body = generate_latest(self.metrics.registry) + generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: WorkerSettings) -> web.Application:
    return WorkerServer(settings).app()
