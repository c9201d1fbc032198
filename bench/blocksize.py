"""Ranged-GET throughput per block size against the local SeaweedFS: `python -m bench.blocksize`.

Reads one object (256 MiB; `--quick`: 64 MiB) block by block through `eddy.objectstore.ObjectStore`
for block sizes 1/4/8/16 MiB, with 1 and 4 requests in flight (a lone reader; a reader with
read-ahead), and reports MB/s, the median request time and the client's CPU per GiB. The ceiling is one
un-ranged GET of the whole object in the same run. A second pass goes through the OSS-like link of
local mode (`sandbox.link`: per-request latency, shared bandwidth), where per-request cost matters
the way it does against a real bucket. The numbers and the choice are written up in docs/objectstore.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eddy.api import parse_dataset
from eddy.objectstore import ObjectStore
from eddy.secrets import SecretSource
from sandbox.link import Link
from sandbox.s3server import LocalS3, start_seaweedfs

MiB = 1024 * 1024
BLOCK_SIZES = (1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB)
BUCKET, KEY = "blocksize", "bench/object.bin"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _store(local: LocalS3, endpoint: str) -> ObjectStore:
    doc = {
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "bench"},
        "spec": {"mounts": [{
            "mountPoint": f"oss://{BUCKET}", "name": "bench", "options": {"fs.oss.endpoint": endpoint},
            "encryptOptions": [
                {"name": key, "valueFrom": {"secretKeyRef": {"name": "access-key", "key": key}}}
                for key in ("fs.oss.accessKeyId", "fs.oss.accessKeySecret")
            ],
        }]},
    }
    secrets = SecretSource.from_mapping({"access-key": {
        "fs.oss.accessKeyId": local.access_key, "fs.oss.accessKeySecret": local.secret_key,
    }})
    mount = parse_dataset(doc).mounts[0]
    return ObjectStore.for_mount(mount, secrets, max_connections=16, request_timeout=60)


def _upload(local: LocalS3, size: int) -> None:
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=local.endpoint, aws_access_key_id=local.access_key,
        aws_secret_access_key=local.secret_key, region_name=local.region,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
    )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(size))
    client.close()


async def read_blocks(
    store: ObjectStore, size: int, block: int, inflight: int, chunks: bool = False
) -> dict[str, float]:
    """Read `[0, size)` in `block`-sized ranged GETs with `inflight` requests at a time.

    `chunks`: `get_range_chunks`, the body as received and never joined (the worker's fetch path),
    instead of `get_range` joining it into one `bytes` per block (the sidecar's).
    """
    limit = asyncio.Semaphore(inflight)
    times: list[float] = []

    async def one(start: int) -> int:
        async with limit:
            t0 = time.perf_counter()
            end = min(size, start + block)
            if chunks:
                n = sum(len(c) for c in await store.get_range_chunks(KEY, start, end))
            else:
                n = len(await store.get_range(KEY, start, end))
            times.append(time.perf_counter() - t0)
            return n

    cpu0, t0 = _cpu(), time.perf_counter()
    total = sum(await asyncio.gather(*(one(s) for s in range(0, size, block))))
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    assert total == size
    return {
        "MBps": size / elapsed / 1e6,
        "p50_ms": statistics.median(times) * 1000,
        "cpu_s_per_GiB": cpu / (size / 1024**3),
        "requests": len(times),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    size = (64 if args.quick else 256) * MiB
    link_size = (16 if args.quick else 48) * MiB
    with tempfile.TemporaryDirectory(prefix="eddy-bench-blocksize-") as tmp:
        local = await asyncio.to_thread(start_seaweedfs, Path(tmp))
        try:
            await asyncio.to_thread(_upload, local, size)
            rows: list[dict[str, Any]] = []
            async with _store(local, local.endpoint) as store:
                await read_blocks(store, 16 * MiB, 4 * MiB, 4)  # warm connections and server caches
                whole = await read_blocks(store, size, size, 1)
                for block in BLOCK_SIZES:
                    for inflight in (1, 4):
                        rows.append({"path": "loopback", "block_MiB": block // MiB, "inflight": inflight,
                                     **await read_blocks(store, size, block, inflight)})
                for block in BLOCK_SIZES:
                    rows.append({"path": "loopback, chunks", "block_MiB": block // MiB, "inflight": 4,
                                 **await read_blocks(store, size, block, 4, chunks=True)})
            host, port = local.host, local.port
            async with Link(host, port) as link:
                async with _store(local, link.endpoint) as store:
                    label = f"link {link.bandwidth / 1e6:.0f}MB/s+{link.latency_s * 1000:.0f}ms"
                    for block in BLOCK_SIZES:
                        for inflight in (1, 4):
                            rows.append({"path": label, "block_MiB": block // MiB, "inflight": inflight,
                                         **await read_blocks(store, link_size, block, inflight)})
                await asyncio.sleep(0.5)  # let the link's connections drain before it stops
        finally:
            await asyncio.to_thread(local.stop)
    best = max(r["MBps"] for r in rows if r["path"] == "loopback")
    return {
        "metric": "ranged GET throughput, best block size (loopback SeaweedFS)",
        "unit": "MB/s",
        "value": round(best, 1),
        "ceiling": round(whole["MBps"], 1),
        "ratio": round(best / whole["MBps"], 3),
        "cores": os.cpu_count() or 1,
        "object_MiB": size // MiB,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"object {result['object_MiB']} MiB; ceiling (one un-ranged GET): {result['ceiling']:.0f} MB/s; "
          f"{result['cores']} cores")
    header = ("path", "block", "inflight", "MB/s", "p50 ms", "CPU s/GiB", "reqs")
    print("{:<22} {:>6} {:>8} {:>8} {:>8} {:>10} {:>6}".format(*header))
    for r in result["rows"]:
        print(f"{r['path']:<22} {r['block_MiB']:>4}Mi {r['inflight']:>8} {r['MBps']:>8.0f} "
              f"{r['p50_ms']:>8.1f} {r['cpu_s_per_GiB']:>10.2f} {r['requests']:>6}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.blocksize", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB object instead of 256 MiB")
    args = parser.parse_args(argv)
    print_table(asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
