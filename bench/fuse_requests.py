"""Which FUSE read request sizes the kernel sends for `cp`, `dd bs=1M` and `sha256sum`, per mode.

    python -m bench.fuse_requests [--size-mib 256]

For each mode (page cache, direct_io) and each reader, a fresh bench/memfs.py mount serves a file
(and the small-file tree); the reader reads it once (page cache dropped first) and memfs reports the
request sizes it answered. The count of requests per GiB is the per-request Python cost's multiplier:
the sidecar pays its per-request overhead once per request, so fewer, larger requests cost less CPU.
Prints one JSON document; a measurement, not part of `make bench`.
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


def measure(work: Path, size_mib: int, direct: bool, reader: list[str]) -> dict[str, Any]:
    mnt, sizes = work / "mnt", work / "sizes.json"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.memfs", "--mountpoint", str(mnt), "--size-mib",
                             str(size_mib), "--tree", "200", "--read-sizes", str(sizes),
                             "--direct-io" if direct else "--no-direct-io"])
    try:
        deadline = time.monotonic() + 60
        while not (mnt / FILE_NAME).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("memfs did not mount")
            time.sleep(0.1)
        dst = work / "copy"
        subprocess.run(["rm", "-rf", str(dst)], check=True)
        drop_page_cache()
        argv = [a.format(src=mnt / FILE_NAME, tree=mnt / TREE_NAME, dst=dst) for a in reader]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait(30)
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, check=False)
    counts = {int(k): v for k, v in json.loads(sizes.read_text()).items()}
    total = sum(k * v for k, v in counts.items())
    requests = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
    return {"requests": requests, "bytes": total, "mean_kib": round(total / max(1, requests) / 1024, 1),
            "requests_per_gib": round(requests / max(1, total) * (1 << 30)),
            "most_common_kib": [[round(k / 1024, 1), v] for k, v in top]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuse_requests", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eddy-fuse-requests-") as tmp:
        for mode, direct in (("page_cache", False), ("direct_io", True)):
            out[mode] = {name: measure(Path(tmp), args.size_mib, direct, reader)
                         for name, reader in READERS.items()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
