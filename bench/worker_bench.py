"""Worker benchmark: warm block GET throughput on loopback vs. a plain aiohttp server (the ceiling).

One run: a SeaweedFS holds one object; a real `eddy worker` process (MEM tier on /dev/shm) warms its
8 MiB blocks; then the bench process (aiohttp client) GETs warm blocks with 1 and 4 streams. The
ceiling is a separate process running a plain aiohttp server that streams the same bytes from memory
in 1 MiB writes, read by the same client code. Both serve modes of the worker are measured
(`memory`: read + CRC check + stream; `sendfile`: CRC check + sendfile) and the faster is the value.
The worker's peak RSS while serving is sampled (tmpfs blocks do not count toward it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.cpu import cpu_seconds, per_gib
from bench.profiles import profile_during, py_spy
from eddy.blocks import BlockRef, blocks_of
from eddy.wire import BLOCK_PATH, ref_to_params
from eddy.workerclient import WorkerClient
from eddy_cli.procs import eddy_command, free_port, rss_mib
from sandbox.s3server import start_seaweedfs

MiB = 1 << 20
BLOCK = 8 * MiB
DEFAULT_MODE = "sendfile/verify=changed"
SMALL_FILES = 200


async def _wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {seconds}s")


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _throughput(
    session: aiohttp.ClientSession, urls: list[tuple[str, dict[str, str]]], streams: int, total: int,
    cpu: _Cpu | None = None, block: int = BLOCK,
) -> float:
    """Bytes/s reading `total` bytes with `streams` concurrent request loops over `urls` (blocks of
    `block` bytes); the server's and this client's CPU-seconds go into `cpu` when given."""
    per_stream = max(1, total // block // streams)

    async def loop(offset: int) -> int:
        got = 0
        for i in range(per_stream):
            url, params = urls[(offset + i) % len(urls)]
            async with session.get(url, params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {url}: HTTP {resp.status}")
                got += len(body)
        return got

    before = cpu.snapshot() if cpu else (0.0, 0.0)
    t0 = time.perf_counter()
    done = await asyncio.gather(*(loop(k * 7) for k in range(streams)))
    seconds = time.perf_counter() - t0
    if cpu:
        cpu.add(before, sum(done))
    return sum(done) / seconds


class _Cpu:
    """CPU-seconds of one server process and of this (client) process, summed over measurements."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server = self.client = 0.0
        self.bytes = 0

    def snapshot(self) -> tuple[float, float]:
        return cpu_seconds(self.pid), cpu_seconds(os.getpid())

    def add(self, before: tuple[float, float], nbytes: int) -> None:
        server, client = self.snapshot()
        self.server += server - before[0]
        self.client += client - before[1]
        self.bytes += nbytes

    def per_gib(self) -> dict[str, float]:
        return {"server": per_gib(self.server, self.bytes), "client": per_gib(self.client, self.bytes)}


async def _client_throughput(client: WorkerClient, url: str, refs: list[BlockRef], total: int) -> float:
    t0 = time.perf_counter()
    got = 0
    for i in range(max(1, total // BLOCK)):
        got += len(await client.get_block(url, refs[i % len(refs)]))
    return got / (time.perf_counter() - t0)


class _RssSampler:
    """Peak RSS of some processes, sampled every 50 ms while the measurements run."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mib(pid))
            await asyncio.sleep(0.05)

    def __enter__(self) -> _RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def _start_worker(
    name: str, manifest: Path, secret_dir: Path, tier: Path, quota: int, mode: str, verify: str,
    refs: list[BlockRef],
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn([
        *eddy_command(), "--log-level", "WARNING", "worker", "-f", str(manifest),
        "--port", str(port), "--secret-dir", str(secret_dir), "--level-path", f"MEM={tier / name}",
        "--level-quota", f"MEM={quota}", "--serve-mode", mode, "--verify", verify,
    ])
    await _wait_http(url + "/readyz", proc)
    async with WorkerClient(timeout=120) as client:
        results = await client.warm(url, refs)
    if not all(r.ok for r in results):
        raise RuntimeError(f"warming failed: {[r.error for r in results if not r.ok][:3]}")
    return proc, url


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    blocks = 8 if quick else 24
    total = (512 if quick else 3072) * MiB  # per target and stream count, over all rounds
    rounds = 4 if quick else 6
    work = Path(tempfile.mkdtemp(prefix="eddy-bench-worker-"))
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else work
    tier = shm / f"eddy-bench-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    s3 = start_seaweedfs(work / "s3")
    try:
        bucket = "bench"
        import botocore.session

        boto = botocore.session.get_session().create_client(
            "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key, region_name="us-east-1",
        )
        boto.create_bucket(Bucket=bucket)
        payload = os.urandom(blocks * BLOCK)
        etag = str(boto.put_object(Bucket=bucket, Key="data/blob.bin", Body=payload)["ETag"]).strip('"')
        del payload
        # the small-file shape: objects of 4 KiB..256 KiB, one block each
        rng = random.Random(5)
        small_sizes = [rng.choice([4096, 65536, 262144]) + rng.randrange(4096) for _ in range(SMALL_FILES)]
        small_etags = [str(boto.put_object(Bucket=bucket, Key=f"data/small/f{i:04}.bin",
                                           Body=rng.randbytes(n))["ETag"]).strip('"')
                       for i, n in enumerate(small_sizes)]
        secret_dir = s3.write_secret_dir(work / "secrets", "access-key", "oss")
        dataset = {
            "apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {"mounts": [{
                "mountPoint": f"oss://{bucket}/data", "name": "demo", "path": "/",
                "options": {"fs.oss.endpoint": s3.endpoint},
                "encryptOptions": [
                    {"name": k, "valueFrom": {"secretKeyRef": {"name": "access-key", "key": k}}}
                    for k in ("fs.oss.accessKeyId", "fs.oss.accessKeySecret")
                ],
            }]},
        }
        manifest = work / "dataset.yaml"
        manifest.write_text(yaml.safe_dump(dataset))
        refs = list(blocks_of("demo", "blob.bin", etag, blocks * BLOCK, BLOCK))
        small_refs = [r for i, (n, e) in enumerate(zip(small_sizes, small_etags, strict=True))
                      for r in blocks_of("demo", f"small/f{i:04}.bin", e, n, BLOCK)]

        # The ceiling: a plain aiohttp server streaming the same bytes from memory in 1 MiB writes.
        cport = free_port()
        ceiling_proc = _spawn(
            [sys.executable, "-m", "bench.worker_bench", "--ceiling-server", str(cport), str(BLOCK)]
        )
        procs.append(ceiling_proc)
        await _wait_http(f"http://127.0.0.1:{cport}/healthz", ceiling_proc)
        targets: dict[str, list[tuple[str, dict[str, str]]]] = {
            "ceiling": [(f"http://127.0.0.1:{cport}/block", {"i": str(r.index)}) for r in refs]
        }
        pids = {"ceiling": ceiling_proc.pid}
        idle: dict[str, float] = {}
        quota = blocks * BLOCK + 64 * MiB
        for mode, verify in (("sendfile", "always"), ("sendfile", "changed"), ("memory", "always")):
            name = f"{mode}/verify={verify}"
            proc, url = await _start_worker(
                name.replace("/", "-"), manifest, Path(secret_dir), tier, quota, mode, verify, refs
            )
            procs.append(proc)
            targets[name] = [(url + BLOCK_PATH, ref_to_params(r)) for r in refs]
            pids[name] = proc.pid
            idle[name] = rss_mib(proc.pid)

        # Interleaved rounds, so a noisy neighbour on this shared machine hits every target alike.
        samples: dict[tuple[str, int], list[float]] = {(t, n): [] for t in targets for n in (1, 4)}
        cpus = {t: _Cpu(pids[t]) for t in targets}
        connector = aiohttp.TCPConnector(limit=16)
        session = aiohttp.ClientSession(connector=connector, read_bufsize=MiB, auto_decompress=False)
        with _RssSampler(pids) as rss:
            async with session as s:
                for urls in targets.values():
                    await _throughput(s, urls, 1, 2 * BLOCK)  # warm-up: connections, page cache
                for rnd in range(rounds):
                    order = list(targets)
                    order = order[rnd % len(order):] + order[:rnd % len(order)]
                    for streams in (1, 4):
                        for t in order:
                            samples[(t, streams)].append(
                                await _throughput(s, targets[t], streams, total // rounds, cpus[t])
                            )
                # small files: one stream, each GET one small block (per-request cost dominates)
                default_url = targets[DEFAULT_MODE][0][0].removesuffix(BLOCK_PATH)
                async with WorkerClient(timeout=120) as warm_client:
                    await warm_client.warm(default_url, small_refs)
                small_targets = {
                    "ceiling": [(f"http://127.0.0.1:{cport}/small", {"size": str(n)}) for n in small_sizes],
                    DEFAULT_MODE: [(default_url + BLOCK_PATH, ref_to_params(r)) for r in small_refs],
                }
                small_cpu = {t: _Cpu(pids[t]) for t in small_targets}
                small_samples: dict[str, list[float]] = {t: [] for t in small_targets}
                small_total, mean = sum(small_sizes), sum(small_sizes) // len(small_sizes)
                for _ in range(rounds):
                    for t, urls in small_targets.items():
                        got = await _throughput(s, urls, 1, small_total, small_cpu[t], mean)
                        small_samples[t].append(got)
            async with WorkerClient(timeout=120) as client:
                client_bps = await _client_throughput(client, default_url, refs, total // 2)
            profile: dict[str, Any] = {}
            if py_spy() is not None:  # one more (unmeasured) pass under py-spy: the default-mode worker
                async with aiohttp.ClientSession(read_bufsize=MiB, auto_decompress=False) as s:
                    step = _throughput(s, targets[DEFAULT_MODE], 1, total // rounds)
                    _, profile = await profile_during({"worker": pids[DEFAULT_MODE]}, "serve", step,
                                                      "warm 8 MiB block GETs, 1 stream")

        med = {key: _median(vals) for key, vals in samples.items()}
        gbps = 1e9
        ceil1, ceil4 = med[("ceiling", 1)], med[("ceiling", 4)]
        value1, value4 = med[(DEFAULT_MODE, 1)], med[(DEFAULT_MODE, 4)]
        return {
            "metric": "warm block GET throughput, 8 MiB blocks, 1 stream (loopback)",
            "unit": "GB/s",
            "value": round(value1 / gbps, 3),
            "ceiling": round(ceil1 / gbps, 3),
            "ratio": round(value1 / ceil1, 3),
            "cores": os.cpu_count() or 1,
            "four_streams": round(value4 / gbps, 3),
            "four_streams_ceiling": round(ceil4 / gbps, 3),
            "four_streams_ratio": round(value4 / ceil4, 3),
            "serve_mode": DEFAULT_MODE,
            "modes": {
                name: {
                    "one_stream": round(med[(name, 1)] / gbps, 3),
                    "one_stream_ratio": round(med[(name, 1)] / ceil1, 3),
                    "four_streams": round(med[(name, 4)] / gbps, 3),
                    "four_streams_ratio": round(med[(name, 4)] / ceil4, 3),
                    "peak_rss_mib": round(max(rss.peak[name], idle[name]), 1),
                    "idle_rss_mib": round(idle[name], 1),
                }
                for name in targets if name != "ceiling"
            },
            "worker_peak_rss_mib": round(max(rss.peak[DEFAULT_MODE], idle[DEFAULT_MODE]), 1),
            "ceiling_server_peak_rss_mib": round(rss.peak["ceiling"], 1),
            "workerclient_one_stream": round(client_bps / gbps, 3),
            "block_bytes": BLOCK,
            "bytes_per_measure": total,
            "rounds": rounds,
            "note": "medians of interleaved rounds; RSS excludes the MEM tier (tmpfs files, not mapped)",
            # CPU-seconds per GiB served: worker (server) and the bench's aiohttp client, 8 MiB blocks
            # (1 and 4 streams together) and small files (4-260 KiB objects, 1 stream)
            "cpu_s_per_gib": {"worker": {"large": cpus[DEFAULT_MODE].per_gib()["server"],
                                         "small": small_cpu[DEFAULT_MODE].per_gib()["server"]},
                              "client": {"large": cpus[DEFAULT_MODE].per_gib()["client"],
                                         "small": small_cpu[DEFAULT_MODE].per_gib()["client"]}},
            "ceiling_cpu_s_per_gib": {"aiohttp": {"large": cpus["ceiling"].per_gib()["server"],
                                                  "small": small_cpu["ceiling"].per_gib()["server"]},
                                      "client": {"large": cpus["ceiling"].per_gib()["client"],
                                                 "small": small_cpu["ceiling"].per_gib()["client"]}},
            "cpu_s_per_gib_by_mode": {t: c.per_gib()["server"] for t, c in cpus.items() if t != "ceiling"},
            "profile": profile,
            "small_files": {"count": SMALL_FILES, "bytes": sum(small_sizes),
                            "GB_s": round(_median(small_samples[DEFAULT_MODE]) / gbps, 3),
                            "ceiling_GB_s": round(_median(small_samples["ceiling"]) / gbps, 3),
                            "ratio": round(_median(small_samples[DEFAULT_MODE])
                                           / _median(small_samples["ceiling"]), 3)},
        }
    finally:
        for proc in procs:
            _stop(proc)
        s3.stop()
        shutil.rmtree(tier, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _ceiling_server(port: int, size: int) -> None:
    """A plain aiohttp server streaming `size` bytes from memory in 1 MiB writes."""
    from aiohttp import web

    data = os.urandom(size)

    async def block(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        resp.content_length = len(data)
        await resp.prepare(request)
        view = memoryview(data)
        for off in range(0, len(data), MiB):
            await resp.write(view[off:off + MiB])
        await resp.write_eof()
        return resp

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=data[: int(request.query["size"])], content_type="application/octet-stream")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/block", block)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/small", small)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--ceiling-server":
        _ceiling_server(int(sys.argv[2]), int(sys.argv[3]))
