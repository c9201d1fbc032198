"""The worker's read-through fast path (worker/rangefetch.py): plain 206 answers are received into the
block buffer over pooled connections; anything else is declined, and the worker then asks the regular
object store client, so answers and errors stay the same.

Against the real S3 server (SeaweedFS) through the worker, and against a small aiohttp server on
127.0.0.1 that answers the odd cases (ignored Range, other ETag, chunked body, closed keep-alive).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from eddy.api import parse_dataset
from eddy.blocks import BlockRef
from eddy.workerclient import BlockChanged, WorkerClient
from tests.support.faultproxy import FaultProxy
from tests.support.s3 import S3Server
from worker.rangefetch import FastPathUnavailable, RangeFetcher
from worker.server import WorkerServer, WorkerSettings
from worker.tierstore import LevelConfig

BS = 256 * 1024
DATA = os.urandom(3 * BS + 100)


@contextlib.asynccontextmanager
async def _worker(
    s3: S3Server, bucket: str, tmp: Path, endpoint: str
) -> AsyncIterator[tuple[str, WorkerServer]]:
    doc = s3.dataset_doc(bucket, "data")
    doc["spec"]["mounts"][0]["options"]["fs.oss.endpoint"] = endpoint
    settings = WorkerSettings(
        dataset=parse_dataset(doc), levels=[LevelConfig("MEM", tmp / "mem", 64 * BS)],
        secrets=s3.secrets(), store_timeout=5.0, block_size=BS, max_fetches=2,
    )
    server = WorkerServer(settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", server
    finally:
        await runner.cleanup()


async def test_read_through_takes_the_fast_path_over_pooled_connections(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    etag = s3_server.put_object(s3_bucket, "data/obj.bin", DATA)
    refs = [BlockRef("demo", "obj.bin", etag, i, len(DATA), BS) for i in range(4)]
    async with _worker(s3_server, s3_bucket, tmp_path, fault_proxy.endpoint) as (url, server):
        assert server.service is not None
        fetcher = server.service._fetcher
        async with WorkerClient(timeout=10) as client:
            for ref in refs:
                assert await client.get_block(url, ref) == DATA[ref.start:ref.end]  # the last one is short
            results = await client.warm(url, refs)
            assert [r.status for r in results] == ["cached"] * 4
        assert (fetcher.served, fetcher.declined) == (4, 0)
        sample = server.metrics.registry.get_sample_value
        name = "eddy_worker_readthrough_fast_path_total"
        assert sample(name, {"result": "served"}) == 4 and not sample(name, {"result": "declined"})
        assert fetcher.connections == 1  # one keep-alive connection for four sequential misses
        assert fault_proxy.requests == 4


async def test_other_answers_are_declined_and_the_regular_client_decides(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    etag = s3_server.put_object(s3_bucket, "data/obj.bin", DATA)
    async with _worker(s3_server, s3_bucket, tmp_path, fault_proxy.endpoint) as (url, server):
        assert server.service is not None
        fetcher = server.service._fetcher
        async with WorkerClient(timeout=10) as client:
            # a 503 from the store: declined, then the regular client retries and succeeds
            fault_proxy.fail_next(1, "slowdown")
            ref = BlockRef("demo", "obj.bin", etag, 0, len(DATA), BS)
            assert await client.get_block(url, ref) == DATA[:BS]
            assert fetcher.declined == 1
            # another version (If-Match fails): declined, and the regular client reports it as ever
            with pytest.raises(BlockChanged):
                await client.get_block(url, BlockRef("demo", "obj.bin", "0" * 32, 1, len(DATA), BS))
            assert fetcher.declined == 2
            declined = server.metrics.registry.get_sample_value(
                "eddy_worker_readthrough_fast_path_total", {"result": "declined"})
            assert declined == 2


@contextlib.asynccontextmanager
async def _odd_server() -> AsyncIterator[str]:
    """Answers by path: /ignore (200, whole object), /etag (206 with another ETag), /chunked (206,
    chunked), /short (206, fewer bytes than asked), /ok (206), /close (206, `Connection: close`)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        first, last = (int(x) for x in request.headers["Range"].removeprefix("bytes=").split("-"))
        part = DATA[first:last + 1]
        kind = request.path.strip("/")
        if kind == "ignore":
            return web.Response(body=DATA, headers={"ETag": '"e"'})
        if kind == "chunked":
            resp = web.StreamResponse(status=206, headers={
                "ETag": '"e"', "Content-Range": f"bytes {first}-{last}/{len(DATA)}"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(part)
            await resp.write_eof()
            return resp
        tag = '"other"' if kind == "etag" else '"e"'
        body = part[:-1] if kind == "short" else part
        headers = {"ETag": tag, "Content-Range": f"bytes {first}-{first + len(body) - 1}/{len(DATA)}"}
        if kind == "close":
            headers["Connection"] = "close"
        return web.Response(status=206, body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{kind}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_fetcher_declines_what_it_does_not_handle() -> None:
    async with _odd_server() as base:
        fetcher = RangeFetcher(timeout=5)
        try:
            headers = {"Range": f"bytes={BS}-{2 * BS - 1}"}
            buf = bytearray(BS)
            await fetcher.get_into(f"{base}/ok", headers, memoryview(buf), BS, "e")
            assert buf == DATA[BS:2 * BS]
            for kind in ("ignore", "etag", "chunked", "short"):
                with pytest.raises(FastPathUnavailable):
                    await fetcher.get_into(f"{base}/{kind}", headers, memoryview(bytearray(BS)), BS, "e")
            with pytest.raises(FastPathUnavailable, match="not a plain http"):
                await fetcher.get_into("https://127.0.0.1:1/x", headers, memoryview(bytearray(BS)), BS, "e")
            # a connection the server closes after its answer is not pooled; the next request opens another
            before = fetcher.connections
            for _ in range(2):
                await fetcher.get_into(f"{base}/close", headers, memoryview(buf), BS, "e")
            assert fetcher.connections == before + 2
            assert fetcher.served == 3 and fetcher.declined == 4  # (https is never tried: `handles`)
        finally:
            fetcher.close()
