"""The worker's listening socket with a connection cap.

aiohttp closes a connection that sends no complete request within `keepalive_timeout` (the timer
starts when the connection is made and restarts after each response), which also ends half-open
and slow-header connections. What it lacks is a cap: `CappedSite` answers a connection beyond
`max_connections` with `503` and closes it at once, so a flood of sockets cannot take the worker's
file descriptors or memory.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

log = logging.getLogger(__name__)

_BUSY_BODY = b'{"error": "too_many_connections", "message": "the worker is at its connection cap"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class CappedSite(web.TCPSite):
    """A TCPSite that refuses connections beyond `max_connections` open at once."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int,
                 backlog: int = 256) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self.max_connections = max_connections
        self.refused = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def factory() -> asyncio.Protocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("connection cap %d reached: refused %d connections so far",
                                self.max_connections, self.refused)
                return _Refuse()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        sockets = self._server.sockets
        if sockets:
            self._bound_port = sockets[0].getsockname()[1]
