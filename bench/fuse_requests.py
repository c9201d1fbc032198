"""Which FUSE requests the kernel sends for `cp`, `dd bs=1M`, `sha256sum` and `cp -r` of a tree, per mode.

    python -m bench.fuse_requests [--size-mib 256]

For each mode (page cache, direct_io) and each reader, a fresh bench/memfs.py mount serves a file
(and the small-file tree); the reader reads it (page cache dropped first) and memfs reports the
requests it answered, by operation, and the read sizes. The count of requests per GiB is the
per-request Python cost's multiplier: the sidecar pays its per-request overhead once per request, so
fewer, larger requests cost less CPU. The tree is also copied twice (page cache dropped between, the
kernel's entries and attributes kept, as in a re-read): `per_file` of `cp -r tree, again` is what
the second pass costs per file. Prints one JSON document; a measurement, not part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.memfs import FILE_NAME, TREE_NAME
from bench.tree_read import drop_page_cache

READERS = {
    "cp": ["cp", "{src}", "{dst}"],
    "dd bs=1M": ["dd", "if={src}", "of=/dev/null", "bs=1M", "status=none"],
    "sha256sum": ["sha256sum", "{src}"],
    "cp -r tree": ["cp", "-r", "{tree}", "{dst}"],
}
TREE_FILES = 200


def _requests(counts: dict[str, dict[str, int]]) -> tuple[dict[int, int], dict[str, int]]:
    return {int(k): v for k, v in counts["read_sizes"].items()}, counts["requests"]


def measure(work: Path, size_mib: int, direct: bool, reader: list[str], passes: int = 1) -> dict[str, Any]:
    """One fresh memfs mount, `reader` run `passes` times (page cache dropped before each)."""
    mnt, sizes = work / "mnt", work / "counts.json"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.memfs", "--mountpoint", str(mnt), "--size-mib",
                             str(size_mib), "--tree", str(TREE_FILES), "--counts", str(sizes),
                             "--direct-io" if direct else "--no-direct-io"])
    try:
        deadline = time.monotonic() + 60
        while not (mnt / FILE_NAME).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("memfs did not mount")
            time.sleep(0.1)
        dst = work / "copy"
        for _ in range(passes):
            subprocess.run(["rm", "-rf", str(dst)], check=True)
            drop_page_cache()
            argv = [a.format(src=mnt / FILE_NAME, tree=mnt / TREE_NAME, dst=dst) for a in reader]
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait(30)
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, check=False)
    counts, ops = _requests(json.loads(sizes.read_text()))
    total = sum(k * v for k, v in counts.items())
    requests = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
    return {"requests": requests, "bytes": total, "mean_kib": round(total / max(1, requests) / 1024, 1),
            "requests_per_gib": round(requests / max(1, total) * (1 << 30)),
            "most_common_kib": [[round(k / 1024, 1), v] for k, v in top], "by_operation": ops}


def per_file(first: dict[str, int], both: dict[str, int]) -> dict[str, float]:
    """Requests per file of the tree's second pass (both passes' counts less the first pass's)."""
    return {op: round((n - first.get(op, 0)) / TREE_FILES, 2) for op, n in sorted(both.items())
            if n - first.get(op, 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuse_requests", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eddy-fuse-requests-") as tmp:
        for mode, direct in (("page_cache", False), ("direct_io", True)):
            out[mode] = {name: measure(Path(tmp), args.size_mib, direct, reader)
                         for name, reader in READERS.items()}
            once = out[mode]["cp -r tree"]
            twice = measure(Path(tmp), args.size_mib, direct, READERS["cp -r tree"], passes=2)
            out[mode]["cp -r tree"]["per_file"] = {op: round(n / TREE_FILES, 2)
                                                   for op, n in once["by_operation"].items()}
            out[mode]["cp -r tree, again"] = {
                "per_file": per_file(once["by_operation"], twice["by_operation"])}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
