"""A container's cgroups: one group that tracks every process of the container (so stop and cleanup
kill all of them, daemons and exec'd processes included), plus the cpu and memory limits.

The hierarchies are the machine's at /sys/fs/cgroup, or the runner's own mount of them where nothing
is mounted there (a chroot whose /sys was bound without its submounts): see cgroupfs.py. Under that
root (`<root>` below): cgroup v1 (this machine): `pids/eddy-sandbox/<id>` always, `cpu/eddy-sandbox/<id>`
with a CFS quota when a cpu limit is set, `memory/eddy-sandbox/<id>` when a memory limit is set.
cgroup v2 (the unified hierarchy at `<root>`): one group `eddy-sandbox/<id>` with cpu.max and memory.max.
All calls block briefly (small writes to cgroupfs); the runner calls them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.kubelet.cgroupfs import TRACKERS, CgroupError, hierarchy_root, is_unified

__all__ = ["CFS_PERIOD_US", "PARENT", "CgroupError", "Cgroups", "sweep_stale"]
PARENT = "eddy-sandbox"
CFS_PERIOD_US = 100_000
STALE_AFTER = 300.0  # seconds; an empty group this old belongs to no starting or live container


@dataclass(frozen=True)
class Cgroups:
    """The cgroup directories of one container (`paths[0]` is the tracking group) and its limits."""

    root: Path  # where the hierarchies are mounted (cgroupfs.hierarchy_root)
    paths: tuple[Path, ...]
    cpu_quota_us: int | None = None
    memory_bytes: int | None = None
    unified: bool = False  # cgroup v2: `paths` is the one group, with both limits

    @classmethod
    def plan(cls, ident: str, *, cpu_millis: int | None, memory_bytes: int | None) -> Cgroups:
        """Where the groups go (nothing is created yet; the hierarchies are mounted if they must be).
        Raises `CgroupError` when no cgroups can be had here."""
        quota = None if cpu_millis is None else max(1000, cpu_millis * CFS_PERIOD_US // 1000)
        root = hierarchy_root()
        if is_unified(root):
            return cls(root, (root / PARENT / ident,), quota, memory_bytes, unified=True)
        tracker = next(h for h in TRACKERS if (root / h / "cgroup.procs").exists())  # hierarchy_root checked
        paths = [root / tracker / PARENT / ident]
        if quota is not None:
            paths.append(root / "cpu" / PARENT / ident)
        if memory_bytes is not None:
            paths.append(root / "memory" / PARENT / ident)
        return cls(root, tuple(dict.fromkeys(paths)), quota, memory_bytes)

    def create(self) -> None:
        """Make the groups and write the limits (the caller removes them if this fails)."""
        sweep_stale(self.root)
        quota, memory = self.cpu_quota_us, self.memory_bytes
        if self.unified:
            (path,) = self.paths
            _mkdir(path, enable=("cpu", "memory"))
            if quota is not None:
                (path / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            if memory is not None:
                (path / "memory.max").write_text(str(memory))
            return
        for path in self.paths:
            _mkdir(path, enable=())
            hierarchy = path.parent.parent.name
            if hierarchy == "cpu" and quota is not None:
                (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            if hierarchy == "memory" and memory is not None:
                (path / "memory.limit_in_bytes").write_text(str(memory))

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.paths]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return found

    def kill(self) -> set[int]:
        """SIGKILL every process in the groups; returns those signalled."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the groups (and the shared parent when it is empty)."""
        deadline = time.monotonic() + timeout
        for path in self.paths:
            while path.exists():
                self.kill()
                try:
                    path.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY until the killed processes are gone
                    if time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove cgroup {path}: {exc}") from exc
                    time.sleep(0.02)
            with contextlib.suppress(OSError):  # other containers may still use it
                path.parent.rmdir()


def sweep_stale(root: Path, min_age: float = STALE_AFTER) -> None:
    """Remove empty container groups older than `min_age` seconds under the hierarchies at `root`: what
    a runner that crashed left (its processes died with it, see PR_SET_PDEATHSIG in shim.py, but cgroup
    directories stay)."""
    now = time.time()
    for parent in [root / PARENT, *root.glob(f"*/{PARENT}")]:
        with contextlib.suppress(OSError):
            for group in parent.iterdir():
                if group.is_dir() and now - group.stat().st_mtime > min_age:
                    with contextlib.suppress(OSError):  # EBUSY when it has processes
                        group.rmdir()


def _mkdir(path: Path, enable: tuple[str, ...]) -> None:
    for _ in range(3):  # the parent may vanish when another container removes it at that moment
        try:
            path.parent.mkdir(exist_ok=True)
            if enable:
                _enable_controllers(path.parent, enable)
            path.mkdir()
            return
        except FileNotFoundError:
            continue
    raise CgroupError(f"cannot create cgroup {path}")


def _enable_controllers(parent: Path, controllers: tuple[str, ...]) -> None:
    """cgroup v2: controllers must be enabled in every ancestor's subtree_control."""
    for directory in (parent.parent, parent):
        available = (directory / "cgroup.controllers").read_text().split()
        wanted = " ".join(f"+{c}" for c in controllers if c in available)
        if wanted:
            (directory / "cgroup.subtree_control").write_text(wanted)
