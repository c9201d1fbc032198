"""One HTTP/1.1 GET received straight into a caller's buffer, over pooled keep-alive connections.

The two hot data paths — the worker's ranged GET from the object store (worker/rangefetch.py) and the
sidecar's block GET from a worker (sidecar/blockclient.py) — cost a CPU-second or more per GiB through
aiohttp: its parser, a `bytes` per chunk, a join, a copy. This module speaks just the one plain request
with an `asyncio.BufferedProtocol`, so the kernel copies the body directly into the caller's buffer and
nothing else touches it.

Only the plain case is handled: a body with a `Content-Length`, no transfer or content encoding. The
caller decides, from the status and headers, whether to take the body and where it goes (`Receive`);
anything else raises `Refused` and the caller redoes the request on its regular (aiohttp) client, whose
typed errors stay the single source of truth. A connection failure (refused, reset, closed mid-body,
timeout) raises `ConnectionBroken`. Neither leaves the connection in the pool, and after either no byte
is written into the caller's buffer.

Pure: the standard library only (no aiohttp), so both parts can share it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

_HEAD_CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024

Receive = Callable[[int, dict[str, str], int | None], memoryview | str]
"""(status, lower-cased headers, Content-Length or None when there is none or the body is
transfer-encoded) -> the buffer of exactly that many bytes to receive the body into, or why the
response is refused. Called once per response, on the event loop, before any body byte is stored."""


class RawHttpError(Exception):
    """The raw request did not give a body; see the two kinds below."""


class Refused(RawHttpError):
    """An answer that is not the plain kind asked for (status, length, encoding, head too large)."""


class ConnectionBroken(RawHttpError):
    """The connection could not be made, failed, timed out or closed before the body was complete."""


class HttpTarget(NamedTuple):
    """Where a plain `http://` URL points: the address, the `Host` header, and the request target."""

    host: str
    port: int
    netloc: str
    path: str  # with "?query" when the URL has one


def plain_http_target(url: str) -> HttpTarget | None:
    """The target of an `http://` URL, or None for anything else (https, no host)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    return HttpTarget(parts.hostname, parts.port or 80, parts.netloc,
                      parts.path + (f"?{parts.query}" if parts.query else ""))


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; `request()` writes a request and receives one response's body."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._scratch = bytearray(_HEAD_CHUNK)
        self._head = bytearray()
        self._view: memoryview | None = None  # where the body goes, once the head is accepted
        self._got = 0
        self._receive: Receive | None = None
        self._done: asyncio.Future[dict[str, str]] | None = None
        self._headers: dict[str, str] = {}
        self.received = False  # any byte of a response on this connection since it was taken
        self.reusable = True
        self.closed = False

    # ------------------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionBroken(f"connection lost: {exc or 'closed by the server'}"))

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._view is not None:
            return self._view[self._got:]
        return self._scratch  # the head, or bytes after the request ended (the connection is dropped)

    def buffer_updated(self, nbytes: int) -> None:
        self.received = True
        if self._view is not None:
            self._got += nbytes
            self._maybe_finish()
            return
        if self._done is None or self._done.done():
            self.reusable = False  # bytes nobody asked for
            return
        if not self._head:
            end = self._scratch.find(b"\r\n\r\n", 0, nbytes)
            if end >= 0:  # the whole head in the first read (the usual case): parsed where it landed
                self._accept_head(bytes(self._scratch[:end]), memoryview(self._scratch)[end + 4:nbytes])
                return
        self._head += memoryview(self._scratch)[:nbytes]
        end = self._head.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if len(self._head) > MAX_HEAD:
                self._refuse("response head too large")
            return
        self._accept_head(bytes(self._head[:end]), memoryview(self._head)[end + 4:])

    def eof_received(self) -> bool | None:
        self._fail(ConnectionBroken("connection closed by the server mid-response"))
        return None

    # ------------------------------------------------------------------------- request/response
    def request(self, raw: bytes, receive: Receive) -> asyncio.Future[dict[str, str]]:
        """Send `raw` (a whole request); the future gives the response's headers once the body is in."""
        assert self.transport is not None
        self._head.clear()
        self._view = None
        self._got = 0
        self._receive = receive
        self._headers = {}
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._done

    def _accept_head(self, head: bytes, rest: memoryview) -> None:
        status, headers = _parse_head(head)
        self._headers = headers
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        text = headers.get("content-length", "")
        length = int(text) if text.isdigit() and "transfer-encoding" not in headers else None
        assert self._receive is not None
        into = self._receive(status, headers, length)
        if isinstance(into, str):
            self._refuse(into or "refused by the caller")
            return
        if length is None:
            self._refuse("a transfer-encoded body" if "transfer-encoding" in headers else "no Content-Length")
            return
        if len(into) != length:
            self._refuse(f"Content-Length {length}, expected {len(into)}")
            return
        if headers.get("content-encoding", "identity").lower() != "identity":
            self._refuse("an encoded body")
            return
        n = min(len(rest), len(into))
        into[:n] = rest[:n]
        self._got = n
        self._view = into
        if len(rest) > n:
            self.reusable = False
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        view = self._view
        if view is not None and self._got >= len(view) and self._done is not None and not self._done.done():
            self._view = None
            self._done.set_result(self._headers)

    def _refuse(self, why: str) -> None:
        self.reusable = False  # the unread body would confuse the next response
        self._fail(Refused(why))

    def abandon(self) -> None:
        """Drop the connection (a request that did not end well): no byte reaches the buffer after this."""
        self._view = None
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: RawHttpError) -> None:
        if self._done is not None and not self._done.done():
            self._view = None  # never write into the caller's buffer after this
            self._done.set_exception(exc)


class ConnectionPool:
    """Idle keep-alive connections per (host, port); `get_into` sends one request on one of them.

    A pooled connection the server closed meanwhile (nothing received on it) is retried once on a new
    one: a GET is safe to repeat. `max_idle` bounds the idle connections kept per endpoint."""

    def __init__(self, *, connect_timeout: float | None = 10.0, max_idle: int = 32) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self.connections = 0  # connections opened

    async def get_into(
        self, host: str, port: int, raw: bytes, receive: Receive, *, timeout: float | None = None,
    ) -> dict[str, str]:
        """Send `raw` to host:port and receive the body where `receive` says; returns the headers.

        Raises Refused or ConnectionBroken (module docstring)."""
        key = (host, port)
        for attempt in (1, 2):
            conn = self._idle_connection(key)
            pooled = conn is not None
            if conn is None:
                conn = await self._connect(host, port)
            ok = False
            try:
                if timeout is None:  # (no timeout context: a few microseconds a request, on small blocks)
                    headers = await conn.request(raw, receive)
                else:
                    async with asyncio.timeout(timeout):
                        headers = await conn.request(raw, receive)
                ok = True
                return headers
            except ConnectionBroken:
                if not pooled or conn.received or attempt == 2:
                    raise
                # a pooled connection the server had closed meanwhile: once more
            except (OSError, TimeoutError) as exc:
                raise ConnectionBroken(f"{type(exc).__name__}: {exc}") from None
            finally:
                self._give_back(key, conn, ok)
        raise AssertionError("unreachable")  # pragma: no cover

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.received = False
                return conn
        return None

    def _give_back(self, key: tuple[str, int], conn: _Connection, ok: bool) -> None:
        if ok and conn.reusable and not conn.closed:
            idle = self._idle.get(key)
            if idle is None:
                idle = self._idle[key] = []
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.abandon()

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, host, port)
        except (OSError, TimeoutError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConnectionBroken(f"connecting to {host}:{port}: {why or type(exc).__name__}") from None
        self.connections += 1
        return conn

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                if conn.transport is not None:
                    with contextlib.suppress(Exception):
                        conn.transport.close()
        self._idle.clear()
