"""WorkerClient against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import google_crc32c
import pytest
from aiohttp import web

from eddy.blocks import BlockRef
from eddy.wire import HEADER_CACHE, HEADER_CRC, HEADER_TIER
from eddy.workerclient import (
    BlockChanged,
    BlockGone,
    WorkerBadRequest,
    WorkerClient,
    WorkerUnavailable,
)

DATA = os.urandom(100_000)
REF = BlockRef("demo", "k", "e", 0, len(DATA), 1 << 20)


async def block(request: web.Request) -> web.StreamResponse:
    behaviour = request.query["key"]
    if behaviour == "ok":
        rng = request.headers.get("Range")
        headers = {HEADER_CACHE: "hit", HEADER_TIER: "MEM", HEADER_CRC: str(google_crc32c.value(DATA))}
        if rng:
            a, b = rng.removeprefix("bytes=").split("-")
            return web.Response(body=DATA[int(a):int(b) + 1], status=206, headers=headers)
        return web.Response(body=DATA, headers=headers)
    if behaviour == "badcrc":
        return web.Response(body=DATA, headers={HEADER_CRC: "12345"})
    if behaviour == "short":
        resp = web.StreamResponse()
        resp.content_length = len(DATA)
        await resp.prepare(request)
        await resp.write(DATA[:1000])
        assert request.transport is not None
        request.transport.close()
        return resp
    if behaviour == "slow":
        await asyncio.sleep(2)
        return web.Response(body=DATA)
    status, code = {
        "gone": (404, "object_gone"), "changed": (412, "object_changed"), "conflict": (409, ""),
        "bad": (400, "bad_request"), "range": (416, "range_not_satisfiable"), "down": (503, "x"),
        "html": (502, ""),
    }[behaviour]
    if behaviour == "html":
        return web.Response(status=502, text="<html>bad gateway</html>")
    return web.json_response({"error": code, "message": f"{behaviour} happened"}, status=status)


async def warm(request: web.Request) -> web.Response:
    body = await request.json()
    n = len(body["blocks"]) - (1 if body.get("dataset") == "short/answer" else 0)
    return web.json_response({"results": [
        {"index": i, "status": "fetched", "tier": "SSD", "bytes": 10} for i in range(n)
    ]})


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v1/block", block)
    app.router.add_post("/v1/warm", warm)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def ref(key: str) -> BlockRef:
    return BlockRef(REF.mount, key, REF.etag, 0, REF.object_size, REF.block_size)


async def test_reads_whole_and_ranges(url: str) -> None:
    async with WorkerClient(timeout=5) as client:
        reply = await client.get_block_reply(url, ref("ok"))
        assert reply.data == DATA and (reply.cache, reply.tier) == ("hit", "MEM")
        assert await client.get_block(url, ref("ok"), 10, 2000) == DATA[10:2000]
        assert await client.get_block(url, ref("ok"), 5, 5) == b""
        with pytest.raises(ValueError):
            await client.get_block(url, ref("ok"), 0, len(DATA) + 1)


async def test_error_mapping(url: str) -> None:
    async with WorkerClient(timeout=1) as client:
        cases: list[tuple[str, type[Exception], int]] = [
            ("gone", BlockGone, 404), ("changed", BlockChanged, 412), ("conflict", BlockChanged, 409),
            ("bad", WorkerBadRequest, 400), ("range", WorkerBadRequest, 416),
            ("down", WorkerUnavailable, 503), ("html", WorkerUnavailable, 502),
        ]
        for key, kind, status in cases:
            with pytest.raises(kind) as info:
                await client.get_block(url, ref(key))
            assert info.value.status == status
            if key not in ("html", "conflict"):
                assert f"{key} happened" in str(info.value)
        for key in ("badcrc", "short", "slow"):
            with pytest.raises(WorkerUnavailable):
                await client.get_block(url, ref(key))


async def test_warm_results(url: str) -> None:
    async with WorkerClient(timeout=5) as client:
        results = await client.warm(url, [ref("a"), ref("b")])
        assert [(r.index, r.status, r.tier, r.ok) for r in results] == [(0, "fetched", "SSD", True),
                                                                        (1, "fetched", "SSD", True)]
    async with WorkerClient(timeout=5, dataset="short/answer") as client:
        with pytest.raises(WorkerUnavailable, match="1 results for 2 blocks"):
            await client.warm(url, [ref("a"), ref("b")])
