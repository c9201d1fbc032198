"""The read-through fast path: one signed ranged GET received straight into a block buffer.

The object store client's ranged GET (`eddy/objectstore.py`, aiohttp) hands the body over as chunk
objects: aiohttp's parser, a `bytes` per chunk, then a copy into the block. During a DataLoad that
machinery was a third of the worker's CPU (docs/worker.md, "Read-through"). This client sends the one
request through the kernel's raw HTTP/1.1 client (`eddy/rawhttp.py`, pooled keep-alive connections, the
body received by the kernel directly into the caller's buffer) and checks the answer.

Only the plain case is handled here: `http://` endpoints, a `206` of exactly the asked length with the
pinned ETag. Anything else (`https://`, another status, a chunked body, a server that ignored Range,
a connection or timeout failure) raises `FastPathUnavailable`, and the caller redoes the request on the
regular client, whose retries and typed errors (`ObjectChanged`, `ObjectNotFound`, ...) stay the single
source of truth. TLS endpoints keep the regular client: there decryption, not parsing, is the cost.
"""

from __future__ import annotations

from collections.abc import Mapping

from eddy.rawhttp import ConnectionPool, RawHttpError, plain_http_target


class FastPathUnavailable(Exception):
    """Not a plain answer (or the connection failed): redo the request on the regular client."""


class RangeFetcher:
    """Pooled keep-alive connections per endpoint; `get_into` receives one ranged GET into a view."""

    def __init__(self, *, timeout: float = 30.0, connect_timeout: float = 10.0, max_idle: int = 32) -> None:
        self.timeout = timeout
        self._pool = ConnectionPool(connect_timeout=connect_timeout, max_idle=max_idle)
        self.served = 0  # requests answered on this path
        self.declined = 0  # requests handed back to the regular client

    @property
    def connections(self) -> int:
        """Connections opened."""
        return self._pool.connections

    @staticmethod
    def handles(url: str) -> bool:
        return url.startswith("http://")

    async def get_into(
        self, url: str, headers: Mapping[str, str], into: memoryview, start: int, etag: str | None,
    ) -> None:
        """GET `url` with `headers` (signed, with `Range`) and receive exactly `len(into)` bytes.

        Raises FastPathUnavailable for anything but a 206 of that length starting at `start` with the
        ETag `etag` (when given); the caller then asks the regular client."""
        target = plain_http_target(url)
        if target is None:
            raise FastPathUnavailable(f"not a plain http endpoint: {url.partition(':')[0]}")
        lines = [f"GET {target.path} HTTP/1.1", f"Host: {target.netloc}", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()
                  if name.lower() not in ("host", "accept-encoding")]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        def receive(status: int, got: dict[str, str], length: int | None) -> memoryview | str:
            if status != 206:
                return f"status {status}"
            if not got.get("content-range", "").startswith(f"bytes {start}-"):
                return f"Content-Range {got.get('content-range', '')!r}"
            tag = got.get("etag", "").strip('"')
            if etag and tag and tag != etag:
                return f"ETag {tag!r}, expected {etag!r}"
            return into  # the length and encoding are checked by eddy/rawhttp.py

        try:
            await self._pool.get_into(target.host, target.port, raw, receive, timeout=self.timeout)
        except RawHttpError as exc:
            self.declined += 1
            raise FastPathUnavailable(str(exc)) from None
        self.served += 1

    def close(self) -> None:
        self._pool.close()
