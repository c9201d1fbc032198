"""The small-file shape of the sidecar benchmark: read a tree of small files whole, as `cp -r` does,
through the sidecar and through bench/memfs.py, with CPU-seconds per GiB of each process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from bench.cpu import CpuMeter, per_gib, pids_of

MiB = 1 << 20


def drop_page_cache() -> None:
    """So a pass reads through the filesystem, not the kernel's page cache (root only)."""
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("1\n")


def read_tree(root: Path, expect: dict[str, str]) -> tuple[float, int]:
    """Read every file of `root` (sorted names, whole files, 1 MiB reads) as `cp -r` would; (MB/s,
    bytes). Checked against `expect` (name -> SHA-256) after the clock stops."""
    got: dict[str, bytes] = {}
    t0 = time.perf_counter()
    for name in sorted(os.listdir(root)):
        with open(root / name, "rb", buffering=0) as f:
            parts = []
            while chunk := f.read(MiB):
                parts.append(chunk)
        got[name] = b"".join(parts)
    seconds = time.perf_counter() - t0
    if {n: hashlib.sha256(b).hexdigest() for n, b in got.items()} != expect:
        raise RuntimeError(f"{root}: the tree's bytes differ from the source")
    nbytes = sum(len(b) for b in got.values())
    return nbytes / seconds / 1e6, nbytes


def tree_rounds(tree: Path, ref_tree: Path, expect: dict[str, str], pid: int, ref_pid: int,
                worker_pids: tuple[int, ...], rounds: int) -> dict[str, float]:
    """The small-file tree through the sidecar and through memfs, alternating, `rounds` times: best MB/s
    of each and CPU-seconds per GiB over all rounds (sidecar, workers; memfs)."""
    best = {"MB_s": 0.0, "ceiling_MB_s": 0.0}
    meter_sums = {"sidecar": 0.0, "worker": 0.0, "memfs": 0.0}
    nbytes = 0
    for _ in range(rounds):
        drop_page_cache()
        ref = CpuMeter({"memfs": pids_of(ref_pid)}).start()
        mbps, _ = read_tree(ref_tree, expect)
        meter_sums["memfs"] += ref.stop()["memfs"]
        best["ceiling_MB_s"] = max(best["ceiling_MB_s"], mbps)
        drop_page_cache()
        meter = CpuMeter({"sidecar": pids_of(pid), "worker": pids_of(*worker_pids)}).start()
        mbps, got = read_tree(tree, expect)
        for name, seconds in meter.stop().items():
            meter_sums[name] += seconds
        best["MB_s"] = max(best["MB_s"], mbps)
        nbytes += got
    return {**{k: round(v, 1) for k, v in best.items()}, "bytes": nbytes // rounds,
            **{f"{k}_cpu_s_per_gib": per_gib(v, nbytes) for k, v in meter_sums.items()}}
