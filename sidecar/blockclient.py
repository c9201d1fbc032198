"""The hot path to the workers: `GET /v1/block` received straight into the block's own buffer.

`eddy.workerclient.WorkerClient` (aiohttp) costs about 1.5 CPU-seconds per GiB here — chunk objects,
a join, a copy — which caps a Python sidecar at a few hundred MB/s on a small machine. This client
speaks just the one request of the worker API (eddy/wire.py) over pooled keep-alive HTTP/1.1
connections with an `asyncio.BufferedProtocol`: the kernel copies the body directly into a bytearray
of the block's size, and nothing else touches the bytes except the CRC32C check.

Anything unusual — a status other than 200, no Content-Length, an https URL — is handed to the
regular `WorkerClient` for that request, so errors keep their types (`BlockChanged`, `BlockGone`,
`WorkerUnavailable`, ...) and their single source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from eddy.blocks import BlockRef
from eddy.crc import crc32c_of
from eddy.wire import BLOCK_PATH, DATASET_PARAM, HEADER_CRC
from eddy.workerclient import WorkerClient, WorkerUnavailable
from sidecar.buffers import uninitialized_bytearray

_HEAD_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024


class _Delegate(Exception):
    """The response is not a plain 200 with a length: let WorkerClient redo the request."""


class _BlockProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._scratch = bytearray(_HEAD_CHUNK)
        self._head = bytearray()
        self._body: bytearray | None = None
        self._view: memoryview | None = None
        self._got = 0
        self._done: asyncio.Future[tuple[bytearray, dict[str, str]]] | None = None
        self._headers: dict[str, str] = {}
        self.reusable = True
        self.closed = False

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(WorkerUnavailable(f"connection lost: {exc or 'closed by the worker'}"))

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._view is not None:
            return self._view[self._got :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._view is not None:
            self._got += nbytes
            self._maybe_finish()
            return
        if not self._head:
            end = self._scratch.find(b"\r\n\r\n", 0, nbytes)
            if end >= 0:  # the whole head in the first read (the usual case): parsed where it landed
                self._parse_head(bytes(self._scratch[:end]), memoryview(self._scratch)[end + 4 : nbytes])
                return
        self._head += memoryview(self._scratch)[:nbytes]
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEAD:
                self._fail(_Delegate("response head too large"))
            return
        self._parse_head(bytes(self._head[:end]), memoryview(self._head)[end + 4 :])

    def eof_received(self) -> bool | None:
        self._fail(WorkerUnavailable("connection closed by the worker mid-response"))
        return None

    # ------------------------------------------------------------------ request/response
    def request(self, raw: bytes) -> asyncio.Future[tuple[bytearray, dict[str, str]]]:
        assert self.transport is not None
        self._head.clear()
        self._body = self._view = None
        self._got = 0
        self._headers = {}
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._done

    def _parse_head(self, head: bytes, rest: memoryview) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._headers = headers
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        length = headers.get("content-length", "")
        if status != 200 or not length.isdigit() or "chunked" in headers.get("transfer-encoding", ""):
            self.reusable = False  # the unread body would confuse the next response
            self._fail(_Delegate(f"status {status}"))
            return
        self._body = uninitialized_bytearray(int(length))  # every byte is written before use
        self._view = memoryview(self._body)
        n = min(len(rest), len(self._body))
        self._view[:n] = rest[:n]
        self._got = n
        if len(rest) > n:
            self.reusable = False
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._body is not None and self._got >= len(self._body) and self._done and not self._done.done():
            body, self._body, self._view = self._body, None, None
            self._done.set_result((body, self._headers))

    def _fail(self, exc: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)


@dataclass(frozen=True)
class _Target:
    """What a block request to one worker URL needs besides the block's own query (built once per URL)."""

    host: str
    port: int
    before_query: str  # "GET /v1/block?"
    after_query: str  # " HTTP/1.1", Host, Authorization, Accept-Encoding

    @classmethod
    def of(cls, url: str, auth: dict[str, str]) -> _Target | None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            return None  # https or odd URLs: WorkerClient's business
        lines = "".join(f"{name}: {value}\r\n" for name, value in auth.items())
        return cls(parts.hostname, parts.port or 80, f"GET {parts.path.rstrip('/')}{BLOCK_PATH}?",
                   f" HTTP/1.1\r\nHost: {parts.netloc}\r\n{lines}Accept-Encoding: identity\r\n\r\n")


def block_query(ref: BlockRef, dataset: str | None) -> str:
    """The block's query string: eddy/wire.py `ref_to_params` plus the dataset (a unit test holds the
    two to the same parameters). `urlencode` of that dict cost ~11 us a block, a fair share of a small
    file's fetch; quoting only the strings (`/` kept, as a query may hold it) costs ~3 us."""
    query = (f"mount={quote(ref.mount, safe='')}&key={quote(ref.key)}&etag={quote(ref.etag, safe='')}"
             f"&index={ref.index}&size={ref.object_size}&block_size={ref.block_size}")
    return f"{query}&{DATASET_PARAM}={quote(dataset, safe='')}" if dataset else query


class FastBlockClient:
    """`get_block(url, ref)` like WorkerClient's, through pooled raw connections; the rest delegates."""

    def __init__(
        self, fallback: WorkerClient, *, dataset: str | None = None, verify_crc: bool = True
    ) -> None:
        self.fallback = fallback
        self.dataset = dataset
        self.verify_crc = verify_crc
        self._idle: dict[tuple[str, int], list[_BlockProtocol]] = {}
        self._targets: dict[str, _Target | None] = {}

    async def get_block(
        self, url: str, ref: BlockRef, start: int = 0, end: int | None = None, *, timeout: float | None = None
    ) -> bytes:
        try:
            target = self._targets[url]
        except KeyError:
            target = self._targets[url] = _Target.of(url, self.fallback.auth_headers)
        if target is None or start or end is not None:
            return await self.fallback.get_block(url, ref, start, end, timeout=timeout)
        host, port = target.host, target.port
        raw = f"{target.before_query}{block_query(ref, self.dataset)}{target.after_query}".encode()
        proto = await self._connection(host, port)
        ok = False
        try:
            body, headers = await proto.request(raw)
            ok = True
        except _Delegate:
            return await self.fallback.get_block(url, ref, timeout=timeout)
        except OSError as exc:
            raise WorkerUnavailable(f"{url} block {ref.key}#{ref.index}: {exc}") from None
        finally:
            if ok and proto.reusable and not proto.closed:
                self._idle.setdefault((host, port), []).append(proto)
            elif proto.transport is not None:
                proto.transport.close()
        if len(body) != ref.length:
            raise WorkerUnavailable(f"{url} block {ref.key}#{ref.index}: {len(body)} of {ref.length} bytes")
        crc = headers.get(HEADER_CRC.lower(), "")
        # Checked in place (the native CRC32C over the bytearray, GIL released): no 8 MiB copy to bytes.
        if self.verify_crc and crc and int(crc) != crc32c_of(body):
            raise WorkerUnavailable(f"{url} block {ref.key}#{ref.index}: CRC32C mismatch in transfer")
        return body  # type: ignore[return-value]  # a bytearray: served as is, never copied

    async def _connection(self, host: str, port: int) -> _BlockProtocol:
        idle = self._idle.get((host, port))
        while idle:
            proto = idle.pop()
            if not proto.closed:
                return proto
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_connection(_BlockProtocol, host, port)
        except OSError as exc:
            raise WorkerUnavailable(f"http://{host}:{port}: {exc.strerror or exc}") from None
        return proto

    async def get_meta(self, url: str, name: str, *, timeout: float | None = None) -> bytes | None:
        return await self.fallback.get_meta(url, name, timeout=timeout)

    async def close(self) -> None:
        for protos in self._idle.values():
            for proto in protos:
                if proto.transport is not None:
                    with contextlib.suppress(Exception):
                        proto.transport.close()
        self._idle.clear()
        await self.fallback.close()
