"""The worker's HTTP API against a real S3 server (SeaweedFS) behind a counting proxy, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from eddy.api import parse_dataset
from eddy.blocks import BlockRef, blocks_of
from eddy.wire import BLOCK_PATH, ref_to_params
from eddy.workerclient import (
    BlockChanged,
    BlockGone,
    WorkerBadRequest,
    WorkerClient,
    WorkerUnavailable,
)
from tests.support.faultproxy import FaultProxy
from tests.support.s3 import S3Server
from worker.blockfile import block_path
from worker.server import WorkerServer, WorkerSettings
from worker.tierstore import LevelConfig

BS = 64 * 1024  # small blocks keep the test data small


@dataclass
class Env:
    url: str
    server: WorkerServer
    proxy: FaultProxy
    s3: S3Server
    bucket: str
    client: WorkerClient
    objects: dict[str, tuple[bytes, str]]  # key -> (data, etag)
    tmp: Path

    def ref(self, key: str, index: int = 0, *, etag: str | None = None, mount: str = "demo") -> BlockRef:
        data, real_etag = self.objects[key]
        return BlockRef(mount, key, real_etag if etag is None else etag, index, len(data), BS)

    def expected(self, key: str, index: int = 0) -> bytes:
        data = self.objects[key][0]
        return data[index * BS:(index + 1) * BS]


async def _start(
    s3: S3Server, bucket: str, proxy: FaultProxy, tmp: Path, levels: list[LevelConfig] | None = None
) -> AsyncIterator[tuple[str, WorkerServer]]:
    doc = s3.dataset_doc(bucket, "data")
    doc["spec"]["mounts"][0]["options"]["fs.oss.endpoint"] = proxy.endpoint
    settings = WorkerSettings(
        dataset=parse_dataset(doc),
        levels=levels or [
            LevelConfig("MEM", tmp / "mem", 4 * BS + 4096, 0.95, 0.7),
            LevelConfig("SSD", tmp / "ssd", 64 * BS, 0.95, 0.7),
        ],
        secrets=s3.secrets(),
        meta_dir=tmp / "ssd" / "meta",
        store_timeout=5.0,
        block_size=BS,
    )
    server = WorkerServer(settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        await runner.cleanup()


@pytest.fixture
async def env(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> AsyncIterator[Env]:
    objects: dict[str, tuple[bytes, str]] = {}
    for key, size in (("a.bin", 3 * BS + 1000), ("b.bin", 2 * BS), ("empty", 0)):
        data = os.urandom(size)
        etag = s3_server.put_object(s3_bucket, f"data/{key}", data)
        objects[key] = (data, etag)
    gen = _start(s3_server, s3_bucket, fault_proxy, tmp_path)
    url, server = await gen.__anext__()
    client = WorkerClient(timeout=10)
    try:
        yield Env(url, server, fault_proxy, s3_server, s3_bucket, client, objects, tmp_path)
    finally:
        await client.close()
        await gen.aclose()


async def test_read_through_then_hit(env: Env) -> None:
    ref = env.ref("a.bin", 1)
    before = env.proxy.requests
    first = await env.client.get_block_reply(env.url, ref)
    assert first.data == env.expected("a.bin", 1)
    assert first.cache == "miss" and first.tier == "MEM"
    assert env.proxy.requests == before + 1
    second = await env.client.get_block_reply(env.url, ref)
    assert second.data == first.data
    assert second.cache == "hit" and second.tier == "MEM"
    assert env.proxy.requests == before + 1  # the hit made no object-store request
    # The last (short) block and a whole object, block by block, equal the object's bytes.
    data, etag = env.objects["a.bin"]
    whole = blocks_of("demo", "a.bin", etag, len(data), BS)
    got = b"".join([await env.client.get_block(env.url, r) for r in whole])
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    # Ranges inside a block, on a hit and on a miss.
    assert await env.client.get_block(env.url, ref, 100, 5000) == env.expected("a.bin", 1)[100:5000]
    miss = env.ref("b.bin", 1)
    assert await env.client.get_block(env.url, miss, 10, 20) == env.expected("b.bin", 1)[10:20]
    # An empty object has one empty block.
    assert await env.client.get_block(env.url, env.ref("empty", 0)) == b""
    stats = await env.client.stats(env.url)
    assert stats["dataset"] == "default/serverless-data"
    assert stats["blocks"] >= 5
    metrics = await _text(env.url + "/metrics")
    assert "eddy_worker_block_hits_total" in metrics and "eddy_worker_readthrough_bytes_total" in metrics


async def test_memory_mode_serves_the_same_bytes(env: Env) -> None:
    assert env.server.service is not None
    env.server.service.serve_mode = "memory"
    ref = env.ref("a.bin", 3)  # the short last block
    assert await env.client.get_block(env.url, ref) == env.expected("a.bin", 3)  # miss
    reply = await env.client.get_block_reply(env.url, ref)  # hit, read into memory and streamed
    assert reply.cache == "hit" and reply.data == env.expected("a.bin", 3)
    assert await env.client.get_block(env.url, ref, 7, 900) == env.expected("a.bin", 3)[7:900]


async def test_single_flight_32_readers_one_get(env: Env) -> None:
    ref = env.ref("b.bin", 0)
    before = env.proxy.requests
    results = await asyncio.gather(*(env.client.get_block(env.url, ref) for _ in range(32)))
    assert all(r == env.expected("b.bin", 0) for r in results)
    assert env.proxy.requests - before == 1


@pytest.mark.parametrize("verify", ["always", "changed"])
async def test_flipped_byte_is_detected_and_refetched(env: Env, verify: str) -> None:
    assert env.server.service is not None
    env.server.service.verify = verify
    ref = env.ref("a.bin", 0)
    await env.client.get_block(env.url, ref)
    assert (await env.client.get_block_reply(env.url, ref)).cache == "hit"  # checked once: stamp kept
    hit = env.server.store.lookup(ref)
    assert hit is not None
    _flip_byte(hit.path, hit.header.header_len + 1234)
    before = env.proxy.requests
    reply = await env.client.get_block_reply(env.url, ref)
    assert reply.data == env.expected("a.bin", 0)  # never the corrupted bytes
    assert reply.cache == "miss"
    assert env.proxy.requests == before + 1
    assert env.server.store.corrupt == 1
    again = await env.client.get_block_reply(env.url, ref)
    assert again.cache == "hit" and again.data == env.expected("a.bin", 0)


async def test_reverify_after_time_on_disk_levels_not_on_mem(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """`--reverify-after` re-checks a block whose file stamp did not change (bit rot on a disk) on the
    SSD level; on MEM (tmpfs) only a changed stamp makes a hit re-check (docs/worker.md "Verification").
    Bit rot is simulated by flipping a byte and then recording the flipped file's stamp as checked."""
    data = os.urandom(2 * BS)
    etag = s3_server.put_object(s3_bucket, "data/rot.bin", data)
    for medium in ("SSD", "MEM"):
        gen = _start(s3_server, s3_bucket, fault_proxy, tmp_path / medium,
                     [LevelConfig(medium, tmp_path / medium / "level", 64 * BS)])
        url, server = await gen.__anext__()
        client = WorkerClient(timeout=10)
        try:
            assert server.service is not None
            server.service.reverify_after = 60.0
            ref = BlockRef("demo", "rot.bin", etag, 0, len(data), BS)
            assert (await client.get_block_reply(url, ref)).tier == medium
            hit = server.store.lookup(ref)
            assert hit is not None
            _flip_byte(hit.path, hit.header.header_len + 77)
            st = os.stat(hit.path)
            long_ago = time.monotonic() - 3600  # checked an hour ago, with today's (flipped) stamp
            hit.entry.verified = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), long_ago)
            if medium == "SSD":  # caught by the time-based re-check, refetched, never served
                reply = await client.get_block_reply(url, ref)
                assert reply.cache == "miss" and reply.data == data[:BS]
                assert server.store.corrupt == 1
            else:  # MEM: not re-checked on time alone; the client's CRC check is what catches it
                with pytest.raises(WorkerUnavailable, match="CRC32C mismatch"):
                    await client.get_block_reply(url, ref)
                assert server.store.corrupt == 0
                # ... and any write to the file (a changed stamp) is still caught on the next hit
                _flip_byte(hit.path, hit.header.header_len + 78)
                again = await client.get_block_reply(url, ref)
                assert again.cache == "miss" and again.data == data[:BS]
                assert server.store.corrupt == 1
        finally:
            await client.close()
            await gen.aclose()


async def test_bad_inputs(env: Env) -> None:
    ok = ref_to_params(env.ref("a.bin", 0))

    async def call(
        params: dict[str, str], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(env.url + BLOCK_PATH, params=params,
                                                       headers=headers or {}) as r:
            return r.status, await r.json()

    status, body = await call({k: v for k, v in ok.items() if k != "etag"})
    assert (status, body["error"]) == (400, "bad_request") and "etag" in body["message"]
    status, body = await call({**ok, "index": "x"})
    assert status == 400 and "'index' is not an integer" in body["message"]
    status, body = await call({**ok, "index": "99"})
    assert status == 400 and "past the end" in body["message"]
    status, body = await call({**ok, "etag": ""})
    assert status == 400 and "etag" in body["message"]
    status, body = await call({**ok, "mount": "nope"})
    assert (status, body["error"]) == (404, "unknown_mount") and "'nope'" in body["message"]
    status, body = await call({**ok, "dataset": "other/ds"})
    assert (status, body["error"]) == (404, "unknown_dataset")
    status, body = await call(ok, {"Range": f"bytes={BS}-{BS + 10}"})
    assert (status, body["error"]) == (416, "range_not_satisfiable")
    status, body = await call(ok, {"Range": "bytes=5-1"})
    assert status == 400 and "malformed" in body["message"]
    # Object gone, object changed.
    status, body = await call(ref_to_params(BlockRef("demo", "missing.bin", "abc", 0, 10, BS)))
    assert (status, body["error"]) == (404, "object_gone") and "object store" in body["message"]
    status, body = await call({**ok, "etag": "0123456789abcdef0123456789abcdef"})
    assert status == 412 and body["error"] == "object_changed"
    # Unknown path, bad warm body, bad meta name.
    async with aiohttp.ClientSession() as s:
        async with s.get(env.url + "/v1/nothing") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        async with s.post(env.url + "/v1/warm", data=b"not json") as r:
            assert r.status == 400 and "not JSON" in (await r.json())["message"]
        async with s.post(env.url + "/v1/warm", json={"blocks": 3}) as r:
            assert r.status == 400
        async with s.put(env.url + "/v1/meta/..bad", data=b"x") as r:
            assert r.status == 400


async def test_object_store_failure_is_5xx(env: Env) -> None:
    env.proxy.fail_next(50, "500")
    async with aiohttp.ClientSession() as s, s.get(
        env.url + BLOCK_PATH, params=ref_to_params(env.ref("b.bin", 1))
    ) as r:
        body = await r.json()
    env.proxy.clear()
    assert r.status == 503 and body["error"] == "object_store_unavailable"
    assert "object store failed" in body["message"]


async def test_workerclient_error_mapping(env: Env) -> None:
    with pytest.raises(BlockGone) as gone:
        await env.client.get_block(env.url, BlockRef("demo", "missing.bin", "abc", 0, 10, BS))
    assert gone.value.status == 404
    with pytest.raises(BlockChanged):
        await env.client.get_block(env.url, env.ref("a.bin", 0, etag="0" * 32))
    with pytest.raises(WorkerBadRequest) as bad:
        await env.client.get_block(env.url, env.ref("a.bin", 0, mount="nope"))
    assert bad.value.code == "unknown_mount"
    other = WorkerClient(timeout=5, dataset="other/ds")
    try:
        with pytest.raises(WorkerBadRequest) as wrong:
            await other.stats(env.url)
        assert wrong.value.code == "unknown_dataset"
    finally:
        await other.close()
    with pytest.raises(WorkerUnavailable):
        await env.client.get_block("http://127.0.0.1:9", env.ref("a.bin", 0))  # nothing listens
    env.proxy.fail_next(50, "slowdown")
    with pytest.raises(WorkerUnavailable) as down:
        await env.client.get_block(env.url, env.ref("b.bin", 0))
    env.proxy.clear()
    assert down.value.status == 503 and "object store" in str(down.value)
    assert await env.client.ready(env.url)
    assert not await env.client.ready("http://127.0.0.1:9")


async def test_warm_meta_purge(env: Env) -> None:
    refs = [env.ref("a.bin", i) for i in range(4)]
    bad = env.ref("a.bin", 0, mount="nope")
    results = await env.client.warm(env.url, [*refs, bad])
    assert [r.status for r in results] == ["fetched"] * 4 + ["error"]
    assert results[4].code == "unknown_mount"
    assert sum(r.bytes for r in results[:4]) == len(env.objects["a.bin"][0])
    again = await env.client.warm(env.url, refs)  # idempotent
    assert [r.status for r in again] == ["cached"] * 4
    before = env.proxy.requests
    assert await env.client.get_block(env.url, refs[2]) == env.expected("a.bin", 2)
    assert env.proxy.requests == before  # warmed blocks are hits
    # meta blobs
    assert await env.client.get_meta(env.url, "listing") is None
    await env.client.put_meta(env.url, "listing", b"snapshot-bytes")
    assert await env.client.get_meta(env.url, "listing") == b"snapshot-bytes"
    assert (env.tmp / "ssd" / "meta" / "listing").read_bytes() == b"snapshot-bytes"
    # purge
    removed = await env.client.purge(env.url)
    assert removed["blocks"] == 4
    stats = await env.client.stats(env.url)
    assert stats["blocks"] == 0 and stats["cached_bytes"] == 0
    assert not block_path(env.tmp / "mem" / "blocks", refs[0].digest).exists()


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.text()


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


async def test_block_bigger_than_every_quota_is_served_not_kept(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(BS)
    etag = s3_server.put_object(s3_bucket, "data/x.bin", data)
    ref = BlockRef("demo", "x.bin", etag, 0, len(data), BS)
    gen = _start(s3_server, s3_bucket, fault_proxy, tmp_path, [LevelConfig("MEM", tmp_path / "m", 1000)])
    url, _ = await gen.__anext__()
    try:
        async with WorkerClient(timeout=10) as client:
            reply = await client.get_block_reply(url, ref)
            assert reply.data == data and reply.cache == "miss" and reply.tier == ""
            [result] = await client.warm(url, [ref])
            assert result.status == "error" and result.code == "cache_full"
            stats = await client.stats(url)
            assert stats["blocks"] == 0 and stats["levels"][0]["used"] == 0
    finally:
        await gen.aclose()
