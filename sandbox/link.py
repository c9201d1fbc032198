"""An OSS-like link for local mode: a TCP proxy that adds per-request latency and a shared bandwidth cap.

The embedded S3 server on loopback answers in microseconds at GB/s; a real OSS bucket reached from a
serverless pod does not. The seed's cache-less copy moved 1.16 GiB in 24.966 s (≈ 50 MB/s), so the
demo and the benchmarks put this link in front of the object store for every reader that "goes to the
bucket" (the sidecar's fallback and the workers' read-through alike), and leave the workers' own
serving on plain loopback.

It works at the TCP level so that it needs no knowledge of HTTP: a request is recognised as the first
client bytes after the server has spoken (or on a new connection), and is held back by `latency_s`;
every byte flowing back to clients draws from one token bucket (`eddy.ratelimit`) shared by all
connections, its burst 50 ms of the rate (at least one read's worth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from eddy.ratelimit import TokenBucket

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
DEFAULT_BANDWIDTH = 50_000_000  # bytes/s: the seed's cache-less copy, 1.16 GiB in 24.966 s
DEFAULT_LATENCY_S = 0.015


@dataclass
class LinkStats:
    connections: int = 0
    requests: int = 0
    bytes_down: int = 0
    bytes_up: int = 0


@dataclass
class Link:
    """`async with Link(upstream_host, upstream_port) as link:` then point clients at `link.endpoint`."""

    upstream_host: str
    upstream_port: int
    bandwidth: float = DEFAULT_BANDWIDTH
    latency_s: float = DEFAULT_LATENCY_S
    host: str = "127.0.0.1"
    port: int = 0
    stats: LinkStats = field(default_factory=LinkStats)
    _server: asyncio.Server | None = None
    _bucket: TokenBucket | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Link:
        self._bucket = TokenBucket(self.bandwidth, max(self.bandwidth * 0.05, CHUNK))
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "OSS-like link on %s → %s:%d (%.0f MB/s, %.0f ms per request)",
            self.endpoint,
            self.upstream_host,
            self.upstream_port,
            self.bandwidth / 1e6,
            self.latency_s * 1000,
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Link:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError as exc:
            log.warning("link: upstream unreachable: %s", exc)
            client_w.close()
            self._tasks.discard(task)
            return
        # True while the server spoke last: the next client bytes start a new request.
        turn = {"server_spoke": True}
        try:
            await asyncio.gather(self._pump_up(client_r, up_w, turn), self._pump_down(up_r, client_w, turn))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a peer went away, or stop() cancelled the connection: both end it quietly
        finally:
            for writer in (client_w, up_w):
                writer.close()
            self._tasks.discard(task)

    async def _pump_up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, turn: dict[str, bool]
    ) -> None:
        while data := await reader.read(CHUNK):
            if turn["server_spoke"]:
                turn["server_spoke"] = False
                self.stats.requests += 1
                if self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
            self.stats.bytes_up += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _pump_down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, turn: dict[str, bool]
    ) -> None:
        assert self._bucket is not None
        while data := await reader.read(CHUNK):
            turn["server_spoke"] = True
            await self._bucket.acquire(len(data))
            self.stats.bytes_down += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
