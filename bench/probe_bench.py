"""`python -m bench --only probe`: what one `eddy sidecar check-mount` costs (the sidecar's startup probe).

The kubelet runs the probe every second while a pod starts, inside the sidecar's CPU limit (500m as
injected), so its cost comes out of the mount's own budget. The probe runs against a real FUSE mount
(bench/memfs.py, 1 MiB) N times; each run's CPU-seconds (user + system) and peak RSS come from
`wait4()`'s rusage of that process. The value is the median CPU-seconds; the ceiling is the budget the
issue sets (0.1 CPU-s; 30 MB for RSS). `python_floor_*` is a bare `python -c pass` measured in the same
run: the part of the cost no import change can remove.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CPU_BUDGET_S = 0.1
RSS_BUDGET_MB = 30.0
EDDY = str(Path(sys.executable).parent / "eddy")


# The runs are started by a small launcher (`python -I -S`, ~9 MB) rather than by this process: a child's
# peak RSS (ru_maxrss) counts the memory of the process it was forked from, so forking from the bench
# (tens of MB) would inflate every figure.
LAUNCHER = """
import json, os, sys
argv, runs = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for _ in range(runs):
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=quiet)
    _, status, usage = os.wait4(pid, 0)
    out.append([usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)])
print(json.dumps(out))
"""


def measure(argv: list[str], runs: int) -> tuple[list[float], list[float], int]:
    """CPU-seconds and peak RSS (MB) of each run, and how many runs exited non-zero."""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(argv), str(runs)],
                          capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout)
    return [r[0] for r in rows], [r[1] for r in rows], sum(1 for r in rows if r[2] != 0)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def probe_costs(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="eddy-probe-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        memfs = subprocess.Popen([sys.executable, "-m", "bench.memfs", "--mountpoint", str(mnt),
                                  "--size-mib", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while not is_mounted(mnt):
                if memfs.poll() is not None or time.monotonic() > deadline:
                    err = memfs.stderr.read().decode() if memfs.stderr else ""
                    raise RuntimeError(f"bench.memfs did not mount {mnt}: {err[-500:]}")
                time.sleep(0.05)
            cpu, rss, failed = measure([EDDY, "sidecar", "check-mount", str(mnt), "--timeout", "5"], runs)
            floor_cpu, floor_rss, _ = measure([sys.executable, "-c", "pass"], runs)
        finally:
            memfs.terminate()
            try:
                memfs.wait(10)
            except subprocess.TimeoutExpired:
                memfs.kill()
                memfs.wait()
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    value = statistics.median(cpu)
    return {
        "metric": "CPU-seconds per `eddy sidecar check-mount` call on a FUSE mount (median)",
        "unit": "CPU-s",
        "value": round(value, 4),
        "ceiling": CPU_BUDGET_S,
        "runs": runs,
        "failed_runs": failed,
        "cpu_s_min_max": [round(min(cpu), 4), round(max(cpu), 4)],
        "rss_mb_median": round(statistics.median(rss), 1),
        "rss_mb_max": round(max(rss), 1),
        "rss_budget_mb": RSS_BUDGET_MB,
        "python_floor_cpu_s": round(statistics.median(floor_cpu), 4),
        "python_floor_rss_mb": round(statistics.median(floor_rss), 1),
        "within_budget": value < CPU_BUDGET_S and statistics.median(rss) < RSS_BUDGET_MB and not failed,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await asyncio.to_thread(probe_costs, 7 if getattr(args, "quick", False) else 31)
