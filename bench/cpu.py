"""CPU-seconds per GiB: what each process of a data path spends on the bytes it delivers.

`cpu_seconds(pid)` reads user + system time from `/proc/<pid>/stat` (every thread of the process; with
`children=True` also the waited-for children, for a shell that ran `cp`). A `CpuMeter` takes a snapshot
of named groups of processes before and after a measured step; `per_gib` turns the difference into
CPU-seconds per GiB delivered. Processes that appear between the two snapshots count from zero; a
process that exits in between is lost (measure long-lived servers, or a shell's children).

CPU-seconds per byte move far less than wall-clock throughput on a shared machine: a neighbour's load
stretches the wall clock, not the cycles the path itself burns (cache misses aside).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1 << 30
TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(text: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after the command name (which may hold spaces)."""
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU-seconds of a process (0.0 when it is gone)."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError):
        return 0.0
    # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def children_cpu_from_stat(text: str) -> float:
    """cutime + cstime of a /proc/<pid>/stat line: what a shell's waited-for children (cp) spent."""
    fields = stat_fields(text)
    return (int(fields[13]) + int(fields[14])) / TICKS


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it (from /proc/*/stat parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(stat_fields((entry / "stat").read_text())[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


PidSource = Callable[[], Iterable[int]]


@dataclass
class CpuMeter:
    """CPU-seconds of named process groups between `start()` and `stop()`.

    Each group is a callable giving its pids now (called at both snapshots, so a container whose
    processes change is followed); a group's figure is the sum over its processes."""

    groups: Mapping[str, PidSource]
    with_children: frozenset[str] = frozenset()  # groups whose waited-for children count too
    _before: dict[str, dict[int, float]] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_seconds(pid, children=name in self.with_children) for pid in source()}
                for name, source in self.groups.items()}

    def start(self) -> CpuMeter:
        self._before = self._snapshot()
        return self

    def stop(self) -> dict[str, float]:
        after = self._snapshot()
        self.spent = {
            name: max(0.0, sum(s - self._before.get(name, {}).get(pid, 0.0) for pid, s in procs.items()))
            for name, procs in after.items()
        }
        return self.spent


def per_gib(seconds: float, nbytes: int) -> float:
    """CPU-seconds per GiB delivered, rounded for the results file."""
    return round(seconds / (nbytes / GiB), 3) if nbytes else 0.0


def pids_of(*pids: int) -> PidSource:
    return lambda: [p for p in pids if Path(f"/proc/{p}").exists()]


def tree_of(pid: int) -> PidSource:
    """A process and its descendants (for a command that forks its server, like `eddy` launchers)."""
    return lambda: descendants(pid)
