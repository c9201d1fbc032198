"""The read-through fast path: one signed ranged GET received straight into a block buffer.

The object store client's ranged GET (`eddy/objectstore.py`, aiohttp) hands the body over as chunk
objects: aiohttp's parser, a `bytes` per chunk, then a copy into the block. During a DataLoad that
machinery was a third of the worker's CPU (docs/worker.md, "Read-through"). This client speaks just
the one request over pooled keep-alive HTTP/1.1 connections with an `asyncio.BufferedProtocol`: the
kernel copies the body directly into the caller's buffer, and nothing else touches it.

Only the plain case is handled here: `http://` endpoints, a `206` of exactly the asked length with the
pinned ETag. Anything else (`https://`, another status, a chunked body, a server that ignored Range,
a connection or timeout failure) raises `FastPathUnavailable`, and the caller redoes the request on the
regular client, whose retries and typed errors (`ObjectChanged`, `ObjectNotFound`, ...) stay the single
source of truth. TLS endpoints keep the regular client: there decryption, not parsing, is the cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

_HEAD_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024

Check = Callable[[int, dict[str, str]], str]  # (status, headers) -> "" if the body may be received


class FastPathUnavailable(Exception):
    """Not a plain answer (or the connection failed): redo the request on the regular client."""


class _RangeProtocol(asyncio.BufferedProtocol):
    """One connection; `request()` sends a GET and receives the checked body into a view."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._scratch = bytearray(_HEAD_CHUNK)
        self._head = bytearray()
        self._view: memoryview | None = None
        self._want: memoryview | None = None
        self._got = 0
        self._check: Check | None = None
        self._done: asyncio.Future[dict[str, str]] | None = None
        self._headers: dict[str, str] = {}
        self.received = False  # any byte of a response on this connection
        self.reusable = True
        self.closed = False

    # ------------------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(f"connection lost: {exc or 'closed by the server'}")

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._view is not None and self._done is not None and not self._done.done():
            return self._view[self._got:]
        return self._scratch  # the head, or bytes after the request ended (the connection is dropped)

    def buffer_updated(self, nbytes: int) -> None:
        self.received = True
        if self._done is None or self._done.done():
            self.reusable = False  # bytes nobody asked for
            return
        if self._view is not None:
            self._got += nbytes
            self._maybe_finish()
            return
        self._head += self._scratch[:nbytes]
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEAD:
                self._fail("response head too large")
            return
        self._parse_head(bytes(self._head[:end]), memoryview(self._head)[end + 4:])

    def eof_received(self) -> bool | None:
        self._fail("connection closed by the server mid-response")
        return None

    # ------------------------------------------------------------------------- request/response
    def request(self, raw: bytes, into: memoryview, check: Check) -> asyncio.Future[dict[str, str]]:
        assert self.transport is not None
        self._head.clear()
        self._view = None
        self._want = into
        self._got = 0
        self._check = check
        self._headers = {}
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._done

    def _parse_head(self, head: bytes, rest: memoryview) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._headers = headers
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        assert self._want is not None and self._check is not None
        length = headers.get("content-length", "")
        why = self._check(status, headers)
        if not why and (not length.isdigit() or int(length) != len(self._want)):
            why = f"Content-Length {length or 'missing'}, expected {len(self._want)}"
        if not why and "transfer-encoding" in headers:
            why = "a transfer-encoded body"
        if why:
            self.reusable = False  # the unread body would confuse the next response
            self._fail(why)
            return
        self._view = self._want
        n = min(len(rest), len(self._view))
        self._view[:n] = rest[:n]
        self._got = n
        if len(rest) > n:
            self.reusable = False
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._view is not None and self._got >= len(self._view) and self._done and not self._done.done():
            self._view = self._want = None
            self._done.set_result(self._headers)

    def _fail(self, why: str) -> None:
        if self._done is not None and not self._done.done():
            self._view = self._want = None  # never write into the caller's buffer after this
            self._done.set_exception(FastPathUnavailable(why))


class RangeFetcher:
    """Pooled keep-alive connections per endpoint; `get_into` receives one ranged GET into a view."""

    def __init__(self, *, timeout: float = 30.0, connect_timeout: float = 10.0, max_idle: int = 32) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_RangeProtocol]] = {}
        self.served = 0  # requests answered on this path
        self.declined = 0  # requests handed back to the regular client
        self.connections = 0  # connections opened

    @staticmethod
    def handles(url: str) -> bool:
        return url.startswith("http://")

    async def get_into(
        self, url: str, headers: Mapping[str, str], into: memoryview, start: int, etag: str | None,
    ) -> None:
        """GET `url` with `headers` (signed, with `Range`) and receive exactly `len(into)` bytes.

        Raises FastPathUnavailable for anything but a 206 of that length starting at `start` with the
        ETag `etag` (when given); the caller then asks the regular client."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise FastPathUnavailable(f"not a plain http endpoint: {parts.scheme}")
        host, port = parts.hostname, parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()
                  if name.lower() not in ("host", "accept-encoding")]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        def check(status: int, got: dict[str, str]) -> str:
            if status != 206:
                return f"status {status}"
            if not got.get("content-range", "").startswith(f"bytes {start}-"):
                return f"Content-Range {got.get('content-range', '')!r}"
            tag = got.get("etag", "").strip('"')
            if etag and tag and tag != etag:
                return f"ETag {tag!r}, expected {etag!r}"
            if got.get("content-encoding", "identity").lower() != "identity":
                return "an encoded body"
            return ""

        for attempt in range(2):
            proto, pooled = await self._connection(host, port)
            ok = False
            try:
                async with asyncio.timeout(self.timeout):
                    await proto.request(raw, into, check)
                ok = True
                self.served += 1
                return
            except FastPathUnavailable:
                # A pooled connection the server had closed meanwhile: once more on a new one.
                if pooled and not proto.received and attempt == 0:
                    continue
                self.declined += 1
                raise
            except (OSError, TimeoutError) as exc:
                self.declined += 1
                raise FastPathUnavailable(f"{type(exc).__name__}: {exc}") from None
            finally:
                self._release((host, port), proto, ok)

    async def _connection(self, host: str, port: int) -> tuple[_RangeProtocol, bool]:
        idle = self._idle.get((host, port))
        while idle:
            proto = idle.pop()
            if not proto.closed:
                proto.received = False
                return proto, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await loop.create_connection(_RangeProtocol, host, port)
        except (OSError, TimeoutError) as exc:
            self.declined += 1
            raise FastPathUnavailable(f"connecting to {host}:{port}: {exc}") from None
        self.connections += 1
        return proto, False

    def _release(self, key: tuple[str, int], proto: _RangeProtocol, ok: bool) -> None:
        idle = self._idle.setdefault(key, [])
        if ok and proto.reusable and not proto.closed and len(idle) < self.max_idle:
            idle.append(proto)
        elif proto.transport is not None:
            proto.transport.close()

    def close(self) -> None:
        for protos in self._idle.values():
            for proto in protos:
                if proto.transport is not None:
                    with contextlib.suppress(Exception):
                        proto.transport.close()
        self._idle.clear()
