"""How a block's bytes leave the worker: the `Range` header, and the response written from a mapping
(send(2)), a block file (sendfile), inline (small MEM-level blocks) or memory.

Which copy of a block to send (a hit, a fetched miss, a read-through) is the handler's choice
(worker/server.py `get_block`); this module only sends it, counting the bytes in `served_bytes`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import BinaryIO

from aiohttp import web
from prometheus_client import Counter

from eddy.blocks import BlockRef
from eddy.wire import ERR_BAD_REQUEST, ERR_RANGE
from worker.blockfile import BlockFileError
from worker.httperror import HTTPError

CHUNK = 1 << 20
INLINE_MAX = 512 << 10  # MEM-level hits up to this size are read into the response (see BlockSender.inline)

Span = tuple[int, int]  # (start, stop) inside a block, stop exclusive


def parse_range(header: str | None, length: int) -> Span | None:
    """`(start, stop)` (stop exclusive) of a single `bytes=` range inside a block of `length` bytes."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip() != "bytes" or not spec or "," in spec:
        raise HTTPError(400, ERR_BAD_REQUEST, f"Range {header[:80]!r}: only one 'bytes=a-b' range is served")
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash:
            raise ValueError
        if first == "":
            suffix = int(last)
            if suffix < 0:
                raise ValueError
            start, stop = (max(0, length - suffix), length) if suffix else (length, length)
        else:
            start = int(first)
            stop = int(last) + 1 if last else max(length, start + 1)
            if start < 0 or stop <= start:
                raise ValueError
    except ValueError:
        raise HTTPError(400, ERR_BAD_REQUEST, f"Range {header[:80]!r} is malformed") from None
    if start >= length or stop == start:
        raise HTTPError(
            416, ERR_RANGE, f"Range {header[:80]!r} is not satisfiable in the {length}-byte block",
            {"Content-Range": f"bytes */{length}"},
        )
    return start, min(stop, length)


def span_length(rng: Span | None, length: int) -> int:
    """How many bytes of a `length`-byte block a request for `rng` (None: all of it) is sent."""
    return length if rng is None else rng[1] - rng[0]


class BlockSender:
    """Writes block responses, counting the body bytes sent in `served_bytes`."""

    def __init__(self, served_bytes: Counter) -> None:
        self.served_bytes = served_bytes

    def _response(self, n: int, total: int, rng: Span | None, headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(status=206 if rng is not None else 200, headers=headers)
        resp.content_type = "application/octet-stream"
        resp.headers["Accept-Ranges"] = "bytes"
        if rng is not None:
            resp.headers["Content-Range"] = f"bytes {rng[0]}-{rng[1] - 1}/{total}"
        resp.content_length = n
        return resp

    def inline(
        self, file: BinaryIO, offset: int, ref: BlockRef, rng: Span | None, headers: dict[str, str]
    ) -> web.StreamResponse:
        """A small block on the MEM level, read into the response: headers and body leave in one
        write, where sendfile costs a second syscall and a wait for the socket to drain (per request,
        this is most of a small block's cost). A tmpfs read is a memory copy, never a wait for a disk."""
        start, stop = rng if rng is not None else (0, ref.length)
        with file:
            data = os.pread(file.fileno(), stop - start, offset + start)
        if len(data) != stop - start:
            raise BlockFileError(f"truncated: {len(data)} of {stop - start} bytes")
        resp = web.Response(body=data, status=206 if rng is not None else 200, headers=headers,
                            content_type="application/octet-stream")
        resp.headers["Accept-Ranges"] = "bytes"
        if rng is not None:
            resp.headers["Content-Range"] = f"bytes {rng[0]}-{rng[1] - 1}/{ref.length}"
        self.served_bytes.inc(stop - start)
        return resp

    async def send_bytes(
        self, request: web.Request, data: bytes | bytearray, rng: Span | None, headers: dict[str, str],
    ) -> web.StreamResponse:
        start, stop = rng if rng is not None else (0, len(data))
        resp = self._response(stop - start, len(data), rng, headers)
        await resp.prepare(request)
        view = memoryview(data)
        for off in range(start, stop, CHUNK):
            await resp.write(view[off:min(off + CHUNK, stop)])
        await resp.write_eof()
        self.served_bytes.inc(stop - start)
        return resp

    async def send_view(
        self, request: web.Request, view: memoryview, ref: BlockRef, rng: Span | None,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """A block from its mapping (worker/mapped.py): the head through aiohttp, then the body with
        send(2) straight from the mapping on the connection's socket (as asyncio's own sendfile does
        after the head): no copy in user space, where `transport.write` would copy what the socket
        does not take at once into its buffer."""
        start, stop = rng if rng is not None else (0, ref.length)
        resp = self._response(stop - start, ref.length, rng, headers)
        await resp.prepare(request)  # sends the head now (StreamResponse does not hold it back)
        body = view[start:stop]
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        if transport.get_write_buffer_size():
            await resp.write(body)  # the head is still queued: the transport keeps the order
        elif body:
            await _sock_sendall(transport, body)
        await resp.write_eof()
        self.served_bytes.inc(stop - start)
        return resp

    async def send_file(
        self, request: web.Request, file: BinaryIO, offset: int, ref: BlockRef, rng: Span | None,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        start, stop = rng if rng is not None else (0, ref.length)
        with file:
            resp = self._response(stop - start, ref.length, rng, headers)
            await resp.prepare(request)
            if stop > start:
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("client went away")
                await asyncio.get_running_loop().sendfile(transport, file, offset + start, stop - start)
            await resp.write_eof()
        self.served_bytes.inc(stop - start)
        return resp


async def _sock_sendall(transport: asyncio.BaseTransport, data: memoryview) -> None:
    """Send `data` on a transport's socket with the event loop's `sock_sendall`, through a duplicate
    descriptor (the loop refuses a transport's own fd; the duplicate shares the connection and is
    unregistered before it is closed). The transport's buffer must be empty: the caller checks."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        raise ConnectionResetError("client went away")
    with socket.socket(fileno=os.dup(raw.fileno())) as sock:
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, data)
        except (BrokenPipeError, ConnectionError) as exc:  # the reader left mid-body: a disconnect
            raise ConnectionResetError(f"client went away: {exc}") from None
