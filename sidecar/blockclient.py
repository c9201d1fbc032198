"""The hot path to the workers: `GET /v1/block` received straight into the block's own buffer.

`eddy.workerclient.WorkerClient` (aiohttp) costs about 1.5 CPU-seconds per GiB here — chunk objects,
a join, a copy — which caps a Python sidecar at a few hundred MB/s on a small machine. This client
sends the one request of the worker API (eddy/wire.py) through the kernel's raw HTTP/1.1 client
(`eddy/rawhttp.py`, pooled keep-alive connections): the kernel copies the body directly into a
bytearray of the block's size, and nothing else touches the bytes except the CRC32C check.

Anything unusual — a status other than 200, no Content-Length, an encoded body, an https URL — is
handed to the regular `WorkerClient` for that request, so errors keep their types (`BlockChanged`,
`BlockGone`, `WorkerUnavailable`, ...) and their single source of truth. A connection that fails or
closes mid-body is a `WorkerUnavailable` (the reader then tries elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from eddy.blocks import BlockRef
from eddy.crc import crc32c_of
from eddy.rawhttp import ConnectionBroken, ConnectionPool, Refused, plain_http_target
from eddy.wire import BLOCK_PATH, DATASET_PARAM, HEADER_CRC
from eddy.workerclient import WorkerClient, WorkerUnavailable
from sidecar.buffers import uninitialized_bytearray

_MAX_IDLE = 1024  # idle connections kept per worker: as many as the reads in flight may need


@dataclass(frozen=True)
class _Target:
    """What a block request to one worker URL needs besides the block's own query (built once per URL)."""

    host: str
    port: int
    before_query: str  # "GET /v1/block?"
    after_query: str  # " HTTP/1.1", Host, Authorization, Accept-Encoding

    @classmethod
    def of(cls, url: str, auth: dict[str, str]) -> _Target | None:
        target = plain_http_target(url)
        if target is None or "?" in target.path:
            return None  # https or odd URLs: WorkerClient's business
        lines = "".join(f"{name}: {value}\r\n" for name, value in auth.items())
        return cls(target.host, target.port, f"GET {target.path.rstrip('/')}{BLOCK_PATH}?",
                   f" HTTP/1.1\r\nHost: {target.netloc}\r\n{lines}Accept-Encoding: identity\r\n\r\n")


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
        self._pool = ConnectionPool(connect_timeout=None, max_idle=_MAX_IDLE)
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
        raw = f"{target.before_query}{block_query(ref, self.dataset)}{target.after_query}".encode()
        body = bytearray()

        def receive(status: int, headers: dict[str, str], length: int | None) -> memoryview | str:
            nonlocal body
            if status != 200 or length is None:
                return f"status {status}, Content-Length {length}"
            body = uninitialized_bytearray(length)  # every byte is written before use
            return memoryview(body)

        try:
            headers = await self._pool.get_into(target.host, target.port, raw, receive, timeout=timeout)
        except Refused:
            return await self.fallback.get_block(url, ref, timeout=timeout)
        except ConnectionBroken as exc:
            raise WorkerUnavailable(f"{url} block {ref.key}#{ref.index}: {exc}") from None
        if len(body) != ref.length:
            raise WorkerUnavailable(f"{url} block {ref.key}#{ref.index}: {len(body)} of {ref.length} bytes")
        crc = headers.get(HEADER_CRC.lower(), "")
        # Checked in place (the native CRC32C over the bytearray, GIL released): no 8 MiB copy to bytes.
        if self.verify_crc and crc and int(crc) != crc32c_of(body):
            raise WorkerUnavailable(f"{url} block {ref.key}#{ref.index}: CRC32C mismatch in transfer")
        return body  # type: ignore[return-value]  # a bytearray: served as is, never copied

    async def get_meta(self, url: str, name: str, *, timeout: float | None = None) -> bytes | None:
        return await self.fallback.get_meta(url, name, timeout=timeout)

    async def close(self) -> None:
        self._pool.close()
        await self.fallback.close()
