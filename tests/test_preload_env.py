"""Test bed for the preloader tests: real workers (in-process aiohttp servers on 127.0.0.1) over the
real S3 server, each behind a `WorkerGate` that counts warm requests and can take the worker "down"
(connections refused while down). No tests here; the other test_preload_* modules import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from eddy.api import Dataset, parse_dataset
from eddy.blocks import BlockRef, blocks_of
from eddy.wire import BLOCK_PATH, HEADER_CACHE, ref_to_params
from tests.support.s3 import S3Server
from worker.server import WorkerServer, WorkerSettings
from worker.tierstore import LevelConfig

BS = 64 * 1024  # small blocks keep the test data small


class WorkerGate:
    """A reverse proxy in front of a worker: counts `POST /v1/warm` and can refuse connections."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.warm_requests = 0
        self.warm_blocks = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self.port = 0
        self.down = False
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=80 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            self.refused += 1
            assert request.transport is not None
            request.transport.close()  # the client sees a dropped connection
            raise web.HTTPServiceUnavailable()
        body = await request.read()
        if request.method == "POST" and request.path == "/v1/warm":
            self.warm_requests += 1
            with contextlib.suppress(Exception):
                import json

                self.warm_blocks += len(json.loads(body)["blocks"])
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body,
            headers={k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")},
        ) as resp:
            data = await resp.read()
            headers = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            return web.Response(status=resp.status, body=data, headers=headers)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@dataclass
class Worker:
    gate: WorkerGate
    server: WorkerServer
    runner: web.AppRunner
    direct: str

    @property
    def url(self) -> str:
        return self.gate.url


@dataclass
class Bed:
    s3: S3Server
    bucket: str
    dataset_doc: dict[str, Any]
    dataset: Dataset
    tmp: Path
    objects: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # key (rel. to mount) -> data, etag
    workers: list[Worker] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.workers]

    def refs(self, prefix: str = "") -> list[BlockRef]:
        out: list[BlockRef] = []
        for key, (data, etag) in sorted(self.objects.items()):
            if key.startswith(prefix):
                out.extend(blocks_of("demo", key, etag, len(data), BS))
        return out

    @property
    def total_bytes(self) -> int:
        return sum(len(d) for d, _ in self.objects.values())

    async def start_worker(self, quota: int = 64 << 20) -> Worker:
        index = len(self.workers)
        settings = WorkerSettings(
            dataset=self.dataset,
            levels=[LevelConfig("MEM", self.tmp / f"w{index}" / "mem", quota, 0.95, 0.7)],
            secrets=self.s3.secrets(),
            meta_dir=self.tmp / f"w{index}" / "meta",
            store_timeout=5.0,
            block_size=BS,
        )
        server = WorkerServer(settings)
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        direct = f"http://127.0.0.1:{runner.addresses[0][1]}"
        gate = WorkerGate(direct)
        await gate.start()
        worker = Worker(gate, server, runner, direct)
        self.workers.append(worker)
        return worker

    async def close(self) -> None:
        for w in self.workers:
            await w.gate.close()
            await w.runner.cleanup()


async def make_bed(
    s3: S3Server,
    bucket: str,
    tmp: Path,
    files: dict[str, int],
    *,
    name: str = "serverless-data",
    workers: int = 1,
    quota: int = 64 << 20,
) -> Bed:
    """Upload `files` (key → size, random bytes) under `data/` and start `workers` workers."""
    doc = s3.dataset_doc(bucket, "data", name=name)
    bed = Bed(s3, bucket, doc, parse_dataset(doc), tmp)
    for key, size in files.items():
        data = os.urandom(size)
        etag = await asyncio.to_thread(s3.put_object, bucket, f"data/{key}", data)
        bed.objects[key] = (data, etag)
    for _ in range(workers):
        await bed.start_worker(quota)
    return bed


@contextlib.asynccontextmanager
async def bed_for(
    s3: S3Server, bucket: str, tmp: Path, files: dict[str, int], **kw: Any
) -> AsyncIterator[Bed]:
    bed = await make_bed(s3, bucket, tmp, files, **kw)
    try:
        yield bed
    finally:
        await bed.close()


async def cache_state(session: aiohttp.ClientSession, url: str, ref: BlockRef, dataset: str) -> str:
    """`X-Eddy-Cache` of a block read from a worker (hit|miss), reading straight from the worker."""
    params = {**ref_to_params(ref), "dataset": dataset}
    async with session.get(url + BLOCK_PATH, params=params) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
        return resp.headers.get(HEADER_CACHE, "")


SMALL_FILES = {
    "train/a.bin": 3 * BS + 100,
    "train/b.bin": BS,
    "train/sub/c.bin": 2 * BS,
    "val/d.bin": BS // 2,
    "val/e.bin": 0,
    "readme.txt": 1000,
}
