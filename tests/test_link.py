"""The OSS-like link: bytes pass unchanged, requests on a keep-alive connection are counted one by one."""

from __future__ import annotations

import hashlib
import os

import aiohttp
from aiohttp import web

from sandbox.link import Link

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


async def _upstream() -> tuple[web.AppRunner, int]:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/blob", blob)
    app.router.add_put("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def test_link_passes_bytes_and_counts_requests() -> None:
    runner, port = await _upstream()
    try:
        async with Link("127.0.0.1", port, bandwidth=0, latency_s=0.001) as link:
            connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection for all requests
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(3):
                    async with session.get(f"{link.endpoint}/blob") as r:
                        assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(PAYLOAD).digest()
                async with session.put(f"{link.endpoint}/echo", data=PAYLOAD[:100_000]) as r:
                    assert await r.read() == PAYLOAD[:100_000]
            assert link.stats.connections == 1
            assert link.stats.requests == 4
            assert link.stats.bytes_down >= 3 * len(PAYLOAD)
    finally:
        await runner.cleanup()


async def test_link_to_a_dead_upstream_closes_the_client_connection() -> None:
    runner, port = await _upstream()
    await runner.cleanup()  # nothing listens there now
    async with Link("127.0.0.1", port, bandwidth=0, latency_s=0) as link, aiohttp.ClientSession() as session:
        try:
            async with session.get(f"{link.endpoint}/blob") as r:
                await r.read()
            raise AssertionError("a dead upstream must not answer")
        except aiohttp.ClientError:
            pass
