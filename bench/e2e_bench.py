"""e2e: the demo's copy of the data set through the sidecar mount, warm (workers) vs cold (object store).

value = warm copy throughput; ceiling = `cp -r` of the same tree from local tmpfs (the most a copy can
do on this machine, measured in the same run); `cold` and `speedup` (cold time / warm time) beside it,
with the seed's 13x for comparison. The cold path goes through the OSS-like link (50 MB/s, 15 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from eddy.quantity import parse_quantity
from eddy_cli.demo import find_seed_dir, fuse_usable
from eddy_cli.demo_data import plan_files, write_file
from eddy_cli.demo_steps import DemoRun


def _local_copy_seconds(total: int, root: Path) -> float:
    src, dst = root / "src", root / "dst"
    for path, size in plan_files(total).items():
        write_file(path, size, src / path)
    t0 = time.monotonic()
    shutil.copytree(src, dst)
    return time.monotonic() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    total = parse_quantity("256Mi" if getattr(args, "quick", False) else "1Gi")
    use_fuse, why = fuse_usable()
    work = Path(tempfile.mkdtemp(prefix="eddy-bench-e2e-"))
    demo = DemoRun(work=work, seed_dir=find_seed_dir(None), total=total, workers=1,
                   bandwidth=50e6, latency_s=0.015, use_fuse=use_fuse, why_no_fuse=why)
    try:
        await demo.execute()
    finally:
        await demo.close()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="eddy-bench-cp-", dir="/dev/shm"))
        local_s = await asyncio.to_thread(_local_copy_seconds, total, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    mb = total / 1e6
    return {
        "metric": "warm copy throughput through the sidecar mount",
        "unit": "MB/s",
        "value": round(mb / demo.warm_s, 1),
        "ceiling": round(mb / local_s, 1),
        "cold": round(mb / demo.cold_s, 1),
        "warm_s": round(demo.warm_s, 3),
        "cold_s": round(demo.cold_s, 3),
        "speedup": round(demo.cold_s / demo.warm_s, 1),
        "seed_speedup": 13,
        "bytes": total,
        "fuse": use_fuse,
        "link": "50 MB/s, 15 ms per request",
    }
