"""The kernel's raw HTTP/1.1 client (eddy/rawhttp.py), against a tiny real server on 127.0.0.1.

The server (asyncio.start_server) answers each request head with the next scripted answer, so each
test shows one behaviour: a plain body lands in the caller's buffer over one keep-alive connection; a
chunked, short, unlengthed or refused answer is `Refused` and its connection dropped; a connection
closed mid-body is `ConnectionBroken`; a pooled connection the server closed meanwhile is retried once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from eddy.rawhttp import ConnectionBroken, ConnectionPool, Refused, plain_http_target

BODY = os.urandom(300 * 1024)  # more than one read's worth
REQUEST = b"GET /x HTTP/1.1\r\nHost: test\r\n\r\n"


def ok_head(length: int = len(BODY), extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nX-Test: yes\r\n{extra}\r\n".encode()


@dataclass
class Script:
    """Answers in order, one per request head; an answer is the bytes to write, then whether to close."""

    answers: list[tuple[bytes, bool]]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        try:
            while script.answers:
                script.requests.append(await reader.readuntil(b"\r\n\r\n"))
                data, close = script.answers.pop(0)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def into(buf: bytearray) -> Callable[[int, dict[str, str], int | None], memoryview | str]:
    """A `Receive` that takes a 200 into `buf` and refuses anything else."""

    def receive(status: int, headers: dict[str, str], length: int | None) -> memoryview | str:
        return memoryview(buf) if status == 200 else f"status {status}"

    return receive


async def test_plain_bodies_land_in_the_buffer_over_one_kept_alive_connection() -> None:
    script = Script([(ok_head() + BODY, False)] * 3)
    pool = ConnectionPool()
    async with scripted_server(script) as port:
        try:
            for _ in range(3):
                buf = bytearray(len(BODY))
                headers = await pool.get_into("127.0.0.1", port, REQUEST, into(buf), timeout=5)
                assert buf == BODY and headers["x-test"] == "yes"
        finally:
            pool.close()
    assert script.connections == 1 and pool.connections == 1 and len(script.requests) == 3


async def test_a_head_in_pieces_is_assembled_and_a_huge_head_refused() -> None:
    head = ok_head()
    pool = ConnectionPool()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in (head[:7], head[7:30], head[30:] + BODY):  # the head in three reads
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (80 * 1024) + b"\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        buf = bytearray(len(BODY))
        await pool.get_into("127.0.0.1", port, REQUEST, into(buf), timeout=5)
        assert buf == BODY
        with pytest.raises(Refused, match="head too large"):
            await pool.get_into("127.0.0.1", port, REQUEST, into(bytearray(len(BODY))), timeout=5)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "transfer-encoded"),
    (ok_head(len(BODY) - 1) + BODY[:-1], "Content-Length"),  # a short body: not the length asked for
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY, "no Content-Length"),
    (ok_head(extra="Content-Encoding: gzip\r\n") + BODY, "encoded"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno", "status 404"),
])
async def test_what_is_not_a_plain_body_is_refused_and_its_connection_dropped(
    answer: bytes, reason: str
) -> None:
    script = Script([(answer, False), (ok_head() + BODY, False)])
    pool = ConnectionPool()
    async with scripted_server(script) as port:
        try:
            buf = bytearray(b"\x00" * len(BODY))
            with pytest.raises(Refused, match=reason):
                await pool.get_into("127.0.0.1", port, REQUEST, into(buf), timeout=5)
            assert buf == bytes(len(BODY))  # nothing of the refused answer reached the buffer
            await pool.get_into("127.0.0.1", port, REQUEST, into(buf), timeout=5)  # on a new connection
            assert buf == BODY
        finally:
            pool.close()
    assert pool.connections == 2


async def test_a_connection_closed_mid_body_is_broken_and_not_retried() -> None:
    script = Script([(ok_head() + BODY, False), (ok_head() + BODY[: len(BODY) // 2], True)])
    pool = ConnectionPool()
    async with scripted_server(script) as port:
        try:
            await pool.get_into("127.0.0.1", port, REQUEST, into(bytearray(len(BODY))), timeout=5)
            with pytest.raises(ConnectionBroken, match=r"closed|lost"):  # on the pooled connection
                await pool.get_into("127.0.0.1", port, REQUEST, into(bytearray(len(BODY))), timeout=5)
        finally:
            pool.close()
    # part of an answer arrived: not a stale connection, so no second try on a new one
    assert script.connections == 1 and pool.connections == 1


async def test_a_pooled_connection_the_server_closed_is_retried_once_on_a_new_one() -> None:
    script = Script([(ok_head() + BODY, True), (ok_head() + BODY, False)])  # closes after its answer
    pool = ConnectionPool()
    async with scripted_server(script) as port:
        try:
            buf = bytearray(len(BODY))
            await pool.get_into("127.0.0.1", port, REQUEST, into(buf), timeout=5)
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle ...
            buf[:] = bytes(len(BODY))
            await pool.get_into("127.0.0.1", port, REQUEST, into(buf), timeout=5)
            assert buf == BODY  # ... and the request goes to a new connection
        finally:
            pool.close()
    assert script.connections == 2 and len(script.requests) == 2


async def test_connect_failures_and_timeouts_are_broken_connections() -> None:
    pool = ConnectionPool(connect_timeout=5)
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(ConnectionBroken, match=r"connecting to 127\.0\.0\.1"):
            await pool.get_into("127.0.0.1", port, REQUEST, into(bytearray(1)))

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the request, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionBroken, match="TimeoutError"):
            await pool.get_into("127.0.0.1", server.sockets[0].getsockname()[1], REQUEST,
                                into(bytearray(1)), timeout=0.2)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


def test_only_plain_http_urls_are_targets() -> None:
    target = plain_http_target("http://w-0.svc:8080/base?x=1")
    assert target is not None
    assert (target.host, target.port, target.netloc, target.path) == ("w-0.svc", 8080, "w-0.svc:8080",
                                                                      "/base?x=1")
    assert plain_http_target("http://h/")[1] == 80  # type: ignore[index]
    assert plain_http_target("https://h/x") is None and plain_http_target("http:///x") is None
