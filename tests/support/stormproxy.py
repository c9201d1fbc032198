"""A fault proxy that storms: a share of LIST, HEAD and GET requests answered `503 SlowDown`, another
share delayed, from a seeded RNG, with counts per operation (issue 16 §3: "0 wrong bytes under 20%
503 SlowDown with 10% of requests delayed 2 s"; one LIST that got six 503s in a row failed a DataLoad).

    async with StormProxy(s3_server.endpoint, fail=0.2, delay=0.1, delay_s=0.5, list_burst=8) as proxy:
        ...  # point a mount's endpoint at proxy.endpoint
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from aiohttp import web

from tests.support.faultproxy import FaultProxy, s3_error_body


def operation(request: web.Request) -> str:
    """"list", "head", "get" (ranged or whole object) or "other"."""
    if request.method == "HEAD":
        return "head"
    if request.method == "GET":
        return "list" if "list-type" in request.query else "get"
    return "other"


class StormProxy(FaultProxy):
    def __init__(self, upstream: str, *, fail: float = 0.2, delay: float = 0.1, delay_s: float = 0.5,
                 list_burst: int = 0, seed: int = 16) -> None:
        super().__init__(upstream)
        self.fail, self.delay, self.delay_s = fail, delay, delay_s
        self.list_burst = list_burst  # the first LISTs all fail: more in a row than any attempt count
        self.rng = random.Random(seed)
        self.seen: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.delayed: Counter[str] = Counter()
        self.calm = False  # True: forward everything (setup, checks)

    async def __aenter__(self) -> StormProxy:
        await self.start()
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        op = operation(request)
        if self.calm or op == "other":
            return await super()._handle(request)
        self.seen[op] += 1
        burst = op == "list" and self.failed["list"] < self.list_burst
        if burst or self.rng.random() < self.fail:
            self.requests += 1
            self.failed[op] += 1
            await request.read()
            body = s3_error_body("SlowDown", "Please reduce your request rate.")
            return web.Response(status=503, body=body, content_type="application/xml")
        if self.rng.random() < self.delay:
            self.delayed[op] += 1
            await asyncio.sleep(self.delay_s)
        return await super()._handle(request)
