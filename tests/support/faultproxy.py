"""A misbehaving reverse proxy in front of the S3 server, to test retries against real HTTP.

    async with FaultProxy(s3_server.endpoint) as proxy:
        proxy.fail_next(2, "slowdown")      # next 2 requests: 503 SlowDown with an S3 XML body
        store = ObjectStore(..., endpoint_url=proxy.endpoint, ...)

Faults: "slowdown" (503 SlowDown), "throttle" (429), "500" (500 InternalError), "hang" (accept the
request, never answer until the proxy closes), "reset" (drop the connection). Everything else is
forwarded unchanged, Host header included, so SigV4 signatures made for the proxy still verify;
`override_response_headers` forces headers onto forwarded responses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Literal

import aiohttp
from aiohttp import web
from yarl import URL

Fault = Literal["slowdown", "throttle", "500", "hang", "reset"]

_ERRORS: dict[str, tuple[int, str, str]] = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "throttle": (429, "TooManyRequests", "Too many requests."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length",
})


def s3_error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>faultproxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = 0
        self.requests = 0  # every request seen
        self.faults_served = 0
        self._faults: deque[Fault] = deque()
        # Headers forced onto forwarded responses, e.g. {"ETag": '"other"'} to play a server that
        # ignored If-Match and served another version.
        self.override_response_headers: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail_next(self, count: int, fault: Fault = "slowdown") -> None:
        """Answer the next `count` requests with `fault` (queued after any faults still pending)."""
        self._faults.extend([fault] * count)

    def clear(self) -> None:
        self._faults.clear()

    @property
    def pending(self) -> int:
        return len(self._faults)

    async def start(self) -> FaultProxy:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if self._faults:
            fault = self._faults.popleft()
            self.faults_served += 1
            if fault == "hang":
                await self._closing.wait()
                raise web.HTTPServiceUnavailable()
            if fault == "reset":
                transport = request.transport
                if transport is not None:
                    transport.abort()
                raise web.HTTPServiceUnavailable()
            status, code, message = _ERRORS[fault]
            return web.Response(status=status, body=s3_error_body(code, message),
                                content_type="application/xml")
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, URL(self.upstream + request.raw_path, encoded=True), headers=headers,
            data=body if body else None, allow_redirects=False,
            skip_auto_headers=("User-Agent", "Content-Type"),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            for key, value in self.override_response_headers.items():
                response.headers[key] = value
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):
                async for chunk in upstream.content.iter_chunked(1 << 20):
                    await response.write(chunk)
                await response.write_eof()
            return response
