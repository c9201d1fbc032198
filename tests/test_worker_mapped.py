"""MEM hits sent from kept mappings (worker/mapped.py): same bytes, a changed file is caught, and a
block that leaves the MEM level (eviction, discard, purge) loses its mapping at once.

A real worker (aiohttp app) in front of a real S3 server (SeaweedFS), on 127.0.0.1; blocks of 1 MiB,
above the size under which MEM hits are read into the response instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from eddy.api import parse_dataset
from eddy.blocks import BlockRef
from eddy.wire import BLOCK_PATH, ref_to_params
from eddy.workerclient import WorkerClient, WorkerUnavailable
from tests.support.faultproxy import FaultProxy
from tests.support.s3 import S3Server
from tests.test_worker_server import _flip_byte
from worker.server import WorkerServer, WorkerSettings
from worker.service import MAP_MIN_BYTES
from worker.tierstore import LevelConfig

BS = 1 << 20
BLOCKS = 6


@contextlib.asynccontextmanager
async def _worker(
    s3: S3Server, bucket: str, proxy: FaultProxy, tmp: Path, mem_blocks: int, mapped_bytes: int = 1 << 30,
) -> AsyncIterator[tuple[str, WorkerServer]]:
    doc = s3.dataset_doc(bucket, "data")
    doc["spec"]["mounts"][0]["options"]["fs.oss.endpoint"] = proxy.endpoint
    settings = WorkerSettings(
        dataset=parse_dataset(doc),
        levels=[LevelConfig("MEM", tmp / "mem", mem_blocks * (BS + 4096), 0.95, 0.7),
                LevelConfig("SSD", tmp / "ssd", 64 * BS, 0.95, 0.7)],
        secrets=s3.secrets(), store_timeout=5.0, block_size=BS, mapped_bytes=mapped_bytes,
    )
    server = WorkerServer(settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", server
    finally:
        await runner.cleanup()


def _object(s3: S3Server, bucket: str) -> tuple[bytes, list[BlockRef]]:
    data = os.urandom(BLOCKS * BS)
    etag = s3.put_object(bucket, "data/big.bin", data)
    return data, [BlockRef("demo", "big.bin", etag, i, len(data), BS) for i in range(BLOCKS)]


async def test_mem_hits_come_from_mappings_and_match(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    assert BS > MAP_MIN_BYTES
    data, refs = _object(s3_server, s3_bucket)
    async with _worker(s3_server, s3_bucket, fault_proxy, tmp_path, mem_blocks=16) as (url, server):
        assert server.service is not None and server.service.mapped is not None
        mapped = server.service.mapped
        async with WorkerClient(timeout=10) as client:
            for ref in refs:
                assert (await client.get_block_reply(url, ref)).cache == "miss"
            assert len(mapped) == BLOCKS  # the miss is served from the block file just written, mapped
            requests = fault_proxy.requests
            for _ in range(2):
                for ref in refs:
                    reply = await client.get_block_reply(url, ref)
                    assert (reply.cache, reply.tier) == ("hit", "MEM")
                    assert reply.data == data[ref.start:ref.end]
            assert fault_proxy.requests == requests
            assert mapped.bytes == BLOCKS * BS
            # a range inside a mapped block, and one crossing its end
            part = await client.get_block(url, refs[2], 1000, 300_000)
            assert part == data[refs[2].start + 1000:refs[2].start + 300_000]
        async with aiohttp.ClientSession() as session:
            params, tail = ref_to_params(refs[3]), {"Range": f"bytes={BS - 10}-"}
            async with session.get(url + BLOCK_PATH, params=params, headers=tail) as r:
                assert r.status == 206
                assert await r.read() == data[refs[3].end - 10:refs[3].end]


async def test_a_changed_mapped_block_is_caught_and_refetched(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    data, refs = _object(s3_server, s3_bucket)
    async with (
        _worker(s3_server, s3_bucket, fault_proxy, tmp_path, mem_blocks=16) as (url, server),
        WorkerClient(timeout=10) as client,
    ):
        ref = refs[1]
        await client.get_block(url, ref)
        assert (await client.get_block_reply(url, ref)).cache == "hit"
        hit = server.store.lookup(ref)
        assert hit is not None
        _flip_byte(hit.path, hit.header.header_len + 4321)  # written through the filesystem
        reply = await client.get_block_reply(url, ref)
        assert reply.cache == "miss" and reply.data == data[ref.start:ref.end]  # never the flipped bytes
        assert server.store.corrupt == 1
        again = await client.get_block_reply(url, ref)
        assert again.cache == "hit" and again.data == data[ref.start:ref.end]


async def test_mappings_leave_with_their_blocks(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    data, refs = _object(s3_server, s3_bucket)
    async with _worker(s3_server, s3_bucket, fault_proxy, tmp_path, mem_blocks=3) as (url, server):
        assert server.service is not None and server.service.mapped is not None
        mapped = server.service.mapped
        mem = server.store.index.levels[0]
        async with WorkerClient(timeout=10) as client:
            for ref in refs:  # six blocks through a MEM level of three: the older ones are demoted
                assert await client.get_block(url, ref) == data[ref.start:ref.end]
                on_mem = set(mem.entries)
                assert len(mapped) <= len(on_mem)
                assert all(mapped.get(digest) is None or digest in on_mem for digest in
                           [r.digest for r in refs])
            assert server.store.demotions > 0
            await client.purge(url)
        assert len(mapped) == 0 and mapped.bytes == 0


async def test_mapped_bytes_bound_and_off(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    data, refs = _object(s3_server, s3_bucket)
    for cap, most in ((2 * BS, 2), (0, 0)):
        worker = _worker(s3_server, s3_bucket, fault_proxy, tmp_path / str(cap), 16, mapped_bytes=cap)
        async with worker as (url, server):
            assert server.service is not None
            async with WorkerClient(timeout=10) as client:
                for _ in range(2):
                    for ref in refs:
                        assert await client.get_block(url, ref) == data[ref.start:ref.end]
            mapped = server.service.mapped
            assert (len(mapped) if mapped is not None else 0) == most


async def test_a_reader_leaving_mid_block_is_a_disconnect_not_an_error(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data, refs = _object(s3_server, s3_bucket)
    async with (
        _worker(s3_server, s3_bucket, fault_proxy, tmp_path, mem_blocks=16) as (url, server),
        WorkerClient(timeout=10) as client,
    ):
        for ref in refs:
            await client.get_block(url, ref)  # kept and mapped
        assert server.service is not None and server.service.mapped is not None
        assert len(server.service.mapped) == BLOCKS
        host, port = url.removeprefix("http://").split(":")
        query = urlencode(ref_to_params(refs[0]))
        for _ in range(5):  # read the head and a little of the body, then close
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET {BLOCK_PATH}?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await reader.readexactly(4096)
            writer.transport.abort()  # an RST: the worker's send fails mid-body
        assert await client.get_block(url, refs[0]) == data[:BS]  # and it goes on serving
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_verify_always_set_on_a_running_worker_checks_mapped_blocks(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A rotted byte under an unchanged stamp (simulated: flipped, then the new stamp recorded as
    checked and the mapping made again) is served from the mapping under `changed` (the client's CRC
    check refuses it), and caught by the worker once `verify` is `always`."""
    data, refs = _object(s3_server, s3_bucket)
    async with (
        _worker(s3_server, s3_bucket, fault_proxy, tmp_path, mem_blocks=16) as (url, server),
        WorkerClient(timeout=10) as client,
    ):
        service = server.service
        assert service is not None and service.mapped is not None
        ref = refs[2]
        await client.get_block(url, ref)
        hit = server.store.lookup(ref)
        assert hit is not None
        _flip_byte(hit.path, hit.header.header_len + 99)
        st = os.stat(hit.path)
        hit.entry.verified = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), 0.0)
        with pytest.raises(WorkerUnavailable, match="CRC32C mismatch"):
            await client.get_block(url, ref)  # mapped again under the recorded stamp, not re-checked
        assert service.mapped.get(ref.digest) is not None
        service.verify = "always"
        reply = await client.get_block_reply(url, ref)
        assert reply.cache == "miss" and reply.data == data[ref.start:ref.end]
        assert server.store.corrupt == 1
