"""The worker protects itself (issue 16 §2): a real `eddy worker` process with tokens, fed hostile input.

Figures the tests hold the worker to (docs/worker.md, "Security", states the same):
- no token or a wrong one: 401; the read token on warm, meta writes or purge: 403;
- every malformed request (bad parameters, keys, ranges, JSON, HTTP): a 4xx, never a 5xx;
- a caller's `block_size` is refused (400 `block_size_mismatch`): 1 GiB blocks cost the worker nothing;
- meta blobs: > 64 MiB one: 413; past 128 MiB together: 507;
- 500 half-open connections are all closed by the worker within its idle timeout (2 s here) + 3 s;
- beyond `--max-connections` a connection gets 503 and is closed at once;
- after all of the above the worker's RSS (from /proc/<pid>/status) stays under RSS_BOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from eddy.blocks import BlockRef
from eddy.wire import ref_to_params
from eddy.workerclient import WorkerBadRequest, WorkerClient
from tests.support.faultproxy import FaultProxy
from tests.support.s3 import S3Server
from tests.test_worker_restart import BS, Worker, _free_port, _manifest, _wait_ready

MiB = 1 << 20
RSS_BOUND = 400 * MiB  # the worker's resident set after the whole abuse run (idle it is ~100 MiB)
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 600
READ, ADMIN = "r" * 8 + "-read-token-0123", "a" * 8 + "-admin-token-456"


@dataclass
class Env:
    url: str
    port: int
    worker: Worker
    ref: BlockRef
    data: bytes

    @property
    def pid(self) -> int:
        assert self.worker.proc is not None
        return self.worker.proc.pid


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
async def env(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path
) -> AsyncIterator[Env]:
    data = os.urandom(3 * BS + 100)
    etag = s3_server.put_object(s3_bucket, "data/obj.bin", data)
    manifest = _manifest(s3_server, s3_bucket, fault_proxy.endpoint, tmp_path)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "read").write_text(READ + "\n")
    (tokens / "admin").write_text(ADMIN)
    port = _free_port()
    args = ["worker", "-f", str(manifest), "--port", str(port),
            "--secret-dir", str(s3_server.write_secret_dir(tmp_path / "secrets")),
            "--block-size", str(BS), "--token-dir", str(tokens), "--idle-timeout", str(IDLE_TIMEOUT),
            "--body-timeout", "2", "--max-connections", str(MAX_CONNECTIONS)]
    worker = Worker(args, tmp_path / "worker.log")
    worker.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with WorkerClient(token="") as probe:
            await _wait_ready(probe, url, worker)
        yield Env(url, port, worker, BlockRef("demo", "obj.bin", etag, 1, len(data), BS), data)
    finally:
        worker.kill()
    log = (tmp_path / "worker.log").read_text()
    assert READ not in log and ADMIN not in log  # tokens are never logged
    assert "authentication on" in log


async def raw(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library normalising them); the status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        return status, headers, body
    finally:
        writer.close()


def get(path: str, token: str | None = READ, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: w\r\n{auth}{extra}Connection: close\r\n\r\n".encode("latin-1")


def block_path(env: Env, **overrides: str) -> str:
    params = {**ref_to_params(env.ref), **overrides}
    return "/v1/block?" + urlencode({k: v for k, v in params.items() if v != "<drop>"})


async def test_tokens_and_roles(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        async def status(method: str, path: str, token: str | None, body: bytes | None = None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with s.request(method, env.url + path, headers=headers, data=body) as r:
                await r.read()
                return r.status

        block = block_path(env)
        warm = json.dumps({"blocks": [ref_to_params(env.ref)]}).encode()
        admin_only = [
            ("POST", "/v1/warm", warm), ("PUT", "/v1/meta/listing", b"x"), ("DELETE", "/v1/blocks", None)
        ]
        reads = [("GET", block, None), ("GET", "/v1/stats", None), ("GET", "/v1/meta/listing", None)]
        for method, path, body in admin_only + reads:
            assert await status(method, path, None, body) == 401, (method, path)
            assert await status(method, path, "not-the-token-at-all", body) == 401, (method, path)
            assert await status(method, path, READ + "x", body) == 401, (method, path)
        for method, path, body in admin_only:
            assert await status(method, path, READ, body) == 403, (method, path)
        assert await status("GET", block, READ) == 200
        assert await status("POST", "/v1/warm", ADMIN, warm) == 200
        assert await status("PUT", "/v1/meta/listing", ADMIN, b"snapshot") == 200
        assert await status("GET", "/v1/meta/listing", READ) == 200
        assert await status("DELETE", "/v1/blocks", ADMIN) == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need no token
            assert await status("GET", open_path, None) == 200
    # The client library: the read token reads, and is refused a purge with a typed error.
    async with WorkerClient(token=READ) as reader:
        assert await reader.get_block(env.url, env.ref) == env.data[BS:2 * BS]
        with pytest.raises(WorkerBadRequest) as denied:
            await reader.purge(env.url)
        assert denied.value.status == 403 and denied.value.code == "forbidden"
    async with WorkerClient(token="") as anonymous:
        with pytest.raises(WorkerBadRequest) as refused:
            await anonymous.get_block(env.url, env.ref)
        assert refused.value.status == 401 and refused.value.code == "unauthorized"
        # A client shared across datasets (the controller's) passes each dataset's token per request.
        assert (await anonymous.stats(env.url, token=READ))["dataset"] == "default/serverless-data"


class CountingClient(WorkerClient):
    """The sidecar's slow path, counted: the fast path must not need it when it holds a valid token."""

    delegated = 0

    async def get_block(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        self.delegated += 1
        return await super().get_block(*args, **kwargs)  # type: ignore[arg-type]


async def test_the_sidecars_fast_path_sends_its_token(env: Env) -> None:
    from sidecar.blockclient import FastBlockClient

    async with CountingClient(token=READ) as fallback:
        fast = FastBlockClient(fallback)
        try:
            block = await fast.get_block(env.url, env.ref)
        finally:
            await fast.close()
    assert block == env.data[BS: 2 * BS] and fallback.delegated == 0


async def test_every_malformed_request_gets_a_4xx(env: Env) -> None:
    size = len(env.data)
    last = env.ref.length
    cases: list[tuple[str, bytes, int]] = [
        ("no parameters", get("/v1/block"), 400),
        ("index not a number", get(block_path(env, index="abc")), 400),
        ("index negative", get(block_path(env, index="-1")), 400),
        ("index huge", get(block_path(env, index="9" * 40)), 400),
        ("index past the end", get(block_path(env, index="99")), 400),
        ("size a float", get(block_path(env, size="1e3")), 400),
        ("size beyond any object", get(block_path(env, size=str(1 << 60))), 400),
        ("size a lie", get(block_path(env, size=str(10 * BS), index="5")), 400),
        ("size a small lie", get(block_path(env, size=str(3 * BS + 200), index="3")), 400),
        ("key with ..", get(block_path(env, key="../secret")), 400),
        ("key with a .. segment inside", get(block_path(env, key="a/../../b")), 400),
        ("key with NUL", get(block_path(env, key="a\x00b")), 400),
        ("key absolute", get(block_path(env, key="/etc/passwd")), 400),
        ("key too long", get(block_path(env, key="k" * 1100)), 400),
        ("etag with a control char", get(block_path(env, etag="e\x01")), 400),
        ("no etag", get(block_path(env, etag="")), 400),
        ("unknown mount", get(block_path(env, mount="nope")), 404),
        ("another dataset", get(block_path(env, dataset="other/ds")), 404),
        ("a caller's block size", get(block_path(env, block_size=str(1 << 30))), 400),
        ("range not bytes", get(block_path(env), extra="Range: items=0-1\r\n"), 400),
        ("range garbage", get(block_path(env), extra="Range: bytes=abc\r\n"), 400),
        ("range inverted", get(block_path(env), extra="Range: bytes=5-3\r\n"), 400),
        ("range several", get(block_path(env), extra="Range: bytes=0-1,3-4\r\n"), 400),
        ("range past the end", get(block_path(env), extra=f"Range: bytes={last + 10}-\r\n"), 416),
        ("range from the end", get(block_path(env), extra=f"Range: bytes={last}-{last + 5}\r\n"), 416),
        ("empty suffix range", get(block_path(env), extra="Range: bytes=-0\r\n"), 416),
        ("bad meta name", get("/v1/meta/%00x"), 400),
        ("meta name too long", get("/v1/meta/" + "m" * 300), 400),
        ("unknown path", get("/v1/nothing"), 404),
        ("wrong method", b"PATCH /v1/blocks HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer " + ADMIN.encode()
         + b"\r\nConnection: close\r\n\r\n", 405),
        ("garbage request line", b"\x00\x01\x02 nonsense\r\n\r\n", 400),
        ("header too long", get("/v1/stats", extra="X-Big: " + "h" * 20000 + "\r\n"), 400),
    ]

    def post(path: str, body: bytes, token: str = ADMIN, method: str = "POST") -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    cases += [
        ("warm: not JSON", post("/v1/warm", b"not json"), 400),
        ("warm: not UTF-8", post("/v1/warm", b"\xff\xfe\xfa"), 400),
        ("warm: deep JSON", post("/v1/warm", b"[" * 200_000 + b"]" * 200_000), 400),
        ("warm: deep object", post("/v1/warm", b'{"a":' * 100_000 + b"1" + b"}" * 100_000), 400),
        ("warm: blocks not a list", post("/v1/warm", b'{"blocks": "x"}'), 400),
        ("warm: too many blocks", post("/v1/warm", json.dumps({"blocks": [{}] * 10_001}).encode()), 400),
        ("warm: another dataset", post("/v1/warm", b'{"blocks": [], "dataset": "x/y"}'), 404),
        ("warm: body over 4 MiB", post("/v1/warm", b"[" + b" " * (5 << 20) + b"]"), 413),
        ("warm: chunked body over 4 MiB", b"POST /v1/warm HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer "
         + ADMIN.encode() + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
         + b"".join(b"100000\r\n" + b" " * (1 << 20) + b"\r\n" for _ in range(5)) + b"0\r\n\r\n", 413),
        ("meta: bad name", post("/v1/meta/..", b"x", method="PUT"), 400),
        ("meta: lying length", post("/v1/meta/ok", b"", method="PUT").replace(
            b"Content-Length: 0", b"Content-Length: 99999999999"), 413),
    ]
    statuses = {}
    for name, request, want in cases:
        status, headers, body = await raw(env.port, request)
        statuses[name] = status
        assert 400 <= status < 500, (name, status, body[:300])
        assert status == want, (name, status, body[:300])
        if name.startswith("range") and want == 416:
            assert headers["content-range"] == f"bytes */{last}"
    # Warm items that are malformed are each reported, the request itself is fine.
    bad_items = [{"mount": "demo"}, "x", {**ref_to_params(env.ref), "key": "../x"},
                 {**ref_to_params(env.ref), "index": 1.5}, {**ref_to_params(env.ref), "block_size": 4096}]
    status, _, body = await raw(env.port, post("/v1/warm", json.dumps({"blocks": bad_items}).encode()))
    assert status == 200
    results = json.loads(body)["results"]
    assert [r["status"] for r in results] == ["error"] * 5
    assert [r["code"] for r in results] == ["bad_request"] * 4 + ["block_size_mismatch"]
    # A body that never comes: 408 after --body-timeout, not a handler stuck forever.
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    writer.write(b"PUT /v1/meta/slow HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer " + ADMIN.encode()
                 + b"\r\nContent-Length: 100\r\n\r\nabc")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    assert line.split()[1] == b"408", line
    writer.close()
    # And the worker still serves the right bytes.
    async with WorkerClient(token=READ) as client:
        assert await client.get_block(env.url, env.ref) == env.data[BS:2 * BS]
    assert size == len(env.data)


async def test_block_size_and_meta_caps_hold_and_rss_stays_bounded(env: Env) -> None:
    base = rss(env.pid)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s:
        # Three GETs with a 1 GiB block size took a worker from 124 MiB to 1.8 GiB: now refused.
        for _ in range(3):
            async with s.get(env.url + block_path(env, block_size=str(1 << 30), index="0")) as r:
                assert r.status == 400 and (await r.json())["error"] == "block_size_mismatch"
        assert rss(env.pid) - base < 16 * MiB
        # One blob over 64 MiB: 413, announced or not.
        async with s.put(env.url + "/v1/meta/big", data=b"m" * (64 * MiB + 1)) as r:
            assert r.status == 413
        # Six 60 MiB PUTs took +360 MiB: now two fit (128 MiB in all), the rest get 507.
        answers = []
        for i in range(6):
            async with s.put(env.url + f"/v1/meta/blob{i}", data=os.urandom(60 * MiB)) as r:
                answers.append(r.status)
                if r.status == 507:
                    assert (await r.json())["error"] == "meta_full"
        assert answers == [200, 200, 507, 507, 507, 507]
        # Replacing a blob counts its new size only.
        async with s.put(env.url + "/v1/meta/blob0", data=b"small") as r:
            assert r.status == 200
        async with s.get(env.url + "/v1/stats") as r:
            assert sorted((await r.json())["meta"]) == ["blob0", "blob1"]
    grown = rss(env.pid)
    print(f"worker RSS idle {base / MiB:.0f} MiB, after the caps {grown / MiB:.0f} MiB")
    assert grown < RSS_BOUND, f"worker RSS {grown / MiB:.0f} MiB (idle {base / MiB:.0f} MiB)"


async def test_half_open_connections_are_closed_and_the_cap_holds(env: Env) -> None:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(500):
            reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
            if i % 2:  # half of them send half a request head (slowloris), the others nothing
                writer.write(b"GET /v1/stats HTTP/1.1\r\nHost: w\r\n")
            conns.append((reader, writer))
        t0 = time.monotonic()
        # While 500 sit idle, the worker still answers.
        async with WorkerClient(token=READ) as client:
            assert (await client.stats(env.url))["dataset"] == "default/serverless-data"

        async def closed(reader: asyncio.StreamReader) -> float:
            with contextlib.suppress(ConnectionResetError):
                await asyncio.wait_for(reader.read(), IDLE_TIMEOUT + 3)
            return time.monotonic() - t0

        waits = await asyncio.gather(*(closed(r) for r, _ in conns))
        print(f"500 half-open connections closed by the worker after {min(waits):.1f}-{max(waits):.1f}s")
        assert max(waits) <= IDLE_TIMEOUT + 3, f"slowest close after {max(waits):.1f}s"
        assert sum(1 for r, _ in conns if r.at_eof()) == 500
        # The connection cap: beyond MAX_CONNECTIONS, 503 and closed at once.
        extra: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(MAX_CONNECTIONS):
            extra.append(await asyncio.open_connection("127.0.0.1", env.port))
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        answer = await asyncio.wait_for(reader.read(), 5)  # sent unasked, then closed
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["error"] == "too_many_connections"
        for _, w in extra:
            w.close()
        conns += extra
    finally:
        for _, writer in conns:
            writer.close()
    await asyncio.sleep(0.3)
    status, _, _ = await raw(env.port, get("/v1/stats"))
    assert status == 200
    print(f"worker RSS after 1100 connections: {rss(env.pid) / MiB:.0f} MiB")
    assert rss(env.pid) < RSS_BOUND
