"""When a CPU limit bound a step: CFS throttling of a container's cpu cgroup, and its run-queue wait.

A container under a CPU limit runs `quota` microseconds per CFS `period` (100 ms, as the kubelet sets
it); once its threads have used the quota they are throttled (taken off the CPU) until the period
ends. The cgroup's `cpu.stat` counts the periods in which the group ran (`nr_periods`), those in which
it was throttled (`nr_throttled`) and the time it spent throttled (v1 `throttled_time` in ns, v2
`throttled_usec`). Read before and after a step, they tell whether the limit bound it:

- `throttled` close to `periods` and `quota_use` (CPU-seconds spent / (wall seconds x limit)) near 1:
  the limit bound the step; only less CPU per byte makes it faster;
- `throttled` 0 and `quota_use` well below 1: the limit did not bind; the container waited for
  something else: its peers (a FUSE server waits for its reader), or a core (`run_wait_s`, from
  `/proc/<pid>/task/<tid>/schedstat`: time runnable but not running, throttled time included, summed
  over the threads; subtract `throttled_s` for the wait for a core on a busy machine).

`minor_faults` (from /proc/<pid>/stat) shows first-touch costs: a process's first large copy faults in
its buffers and heap (tens of thousands of faults), later ones reuse them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import stat_fields


def cpu_cgroup_dir(paths: Iterable[Path]) -> Path | None:
    """The directory holding `cpu.stat` among a container's cgroup directories (the v1 `cpu` hierarchy's
    group, or the v2 group), None when the container has no cpu limit there."""
    for path in paths:
        limited = (path / "cpu.max").exists() or (path / "cpu.cfs_quota_us").exists()
        if limited and (path / "cpu.stat").exists():
            return path
    return None


def cpu_limit_cores(group: Path) -> float | None:
    """The group's quota / period in cores (None: unlimited)."""
    try:
        if (group / "cpu.max").exists():
            quota, period = (group / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((group / "cpu.cfs_quota_us").read_text())
        period_us = int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us < 0 else quota_us / period_us


def cpu_stat(group: Path) -> dict[str, float]:
    """periods, throttled (counts) and throttled_s (seconds) of a cpu cgroup, v1 or v2."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (group / "cpu.stat").read_text().splitlines():
            key, _, number = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(number)
    throttled_s = values["throttled_usec"] / 1e6 if "throttled_usec" in values else values.get(
        "throttled_time", 0) / 1e9
    return {"periods": values.get("nr_periods", 0), "throttled": values.get("nr_throttled", 0),
            "throttled_s": throttled_s}


def run_wait_seconds(pid: int) -> float:
    """Seconds the threads of `pid` spent runnable but not running (schedstat's second field)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def minor_faults(pid: int) -> int:
    try:
        return int(stat_fields(Path(f"/proc/{pid}/stat").read_text())[7])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class ThrottleMeter:
    """Throttling, run-queue wait and page faults of one container between `start()` and `stop()`.

    `group` is its cpu cgroup directory (None: only the per-process figures); `pids` gives its
    processes now (called at both snapshots)."""

    group: Path | None
    pids: Callable[[], Iterable[int]]
    _before: dict[str, Any] = field(default_factory=dict)

    def _snapshot(self) -> dict[str, Any]:
        pids = set(self.pids())
        return {"stat": cpu_stat(self.group) if self.group is not None else {},
                "wait": {p: run_wait_seconds(p) for p in pids}, "faults": {p: minor_faults(p) for p in pids}}

    def start(self) -> ThrottleMeter:
        self._before = self._snapshot()
        return self

    def stop(self, wall_s: float, cpu_s: float) -> dict[str, Any]:
        """The step's figures; `cpu_s` is what the container spent in it (for `quota_use`)."""
        after, before = self._snapshot(), self._before
        out: dict[str, Any] = {key: round(value - before["stat"].get(key, 0), 3)
                               for key, value in after["stat"].items()}
        out["run_wait_s"] = round(sum(max(0.0, w - before["wait"].get(p, 0.0))
                                      for p, w in after["wait"].items()), 3)
        out["minor_faults"] = sum(max(0, f - before["faults"].get(p, 0)) for p, f in after["faults"].items())
        limit = cpu_limit_cores(self.group) if self.group is not None else None
        out["limit_cores"] = limit
        out["quota_use"] = round(cpu_s / (wall_s * limit), 3) if limit and wall_s > 0 else None
        # throttled in at least half the periods it ran: the limit, not the machine, set the pace
        out["limit_binds"] = bool(out.get("periods")) and out.get("throttled", 0) * 2 >= out["periods"]
        return out
