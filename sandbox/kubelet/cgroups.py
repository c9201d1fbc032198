"""A container's cgroups: one group that tracks every process of the container (so stop and cleanup
kill all of them, daemons and exec'd processes included), plus the cpu and memory limits.

cgroup v1 (this machine): `pids/eddy-sandbox/<id>` always, `cpu/eddy-sandbox/<id>` with a CFS quota when
a cpu limit is set, `memory/eddy-sandbox/<id>` when a memory limit is set. cgroup v2 (unified
hierarchy mounted at /sys/fs/cgroup): one group `eddy-sandbox/<id>` with cpu.max and memory.max.
Without any cgroup filesystem (a chroot whose /sys was bound without its submounts, such as the
fresh-Debian check's) a container runs without cgroups: no limits, tracked by its process group only.
All calls block briefly (small writes to cgroupfs); the runner calls them in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sandbox.kubelet")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "eddy-sandbox"
CFS_PERIOD_US = 100_000
STALE_AFTER = 300.0  # seconds; an empty group this old belongs to no starting or live container


class CgroupError(Exception):
    pass


def unified() -> bool:
    """True when the machine runs cgroup v2 only (no v1 controller hierarchies)."""
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def available() -> bool:
    """Whether containers get cgroups here (see the module docstring)."""
    return unified() or any((CGROUP_ROOT / h / "cgroup.procs").exists() for h in ("pids", "freezer", "cpu"))


@dataclass(frozen=True)
class Cgroups:
    """The cgroup directories of one container (`paths[0]` is the tracking group) and its limits."""

    paths: tuple[Path, ...]
    cpu_quota_us: int | None = None
    memory_bytes: int | None = None

    @classmethod
    def plan(cls, ident: str, *, cpu_millis: int | None, memory_bytes: int | None) -> Cgroups:
        """Where the groups go (nothing is created yet)."""
        quota = None if cpu_millis is None else max(1000, cpu_millis * CFS_PERIOD_US // 1000)
        if unified():
            return cls((CGROUP_ROOT / PARENT / ident,), quota, memory_bytes)
        tracker = next((h for h in ("pids", "freezer", "cpu") if (CGROUP_ROOT / h / "cgroup.procs").exists()),
                       None)
        if tracker is None:
            if quota is not None or memory_bytes is not None:
                log.warning("no cgroup filesystem under %s: cpu/memory limits are not enforced", CGROUP_ROOT)
            return cls((), quota, memory_bytes)
        paths = [CGROUP_ROOT / tracker / PARENT / ident]
        if quota is not None:
            paths.append(CGROUP_ROOT / "cpu" / PARENT / ident)
        if memory_bytes is not None:
            paths.append(CGROUP_ROOT / "memory" / PARENT / ident)
        return cls(tuple(dict.fromkeys(paths)), quota, memory_bytes)

    def create(self) -> None:
        """Make the groups and write the limits (the caller removes them if this fails)."""
        sweep_stale()
        quota, memory = self.cpu_quota_us, self.memory_bytes
        if unified():
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


def sweep_stale(min_age: float = STALE_AFTER) -> None:
    """Remove empty container groups older than `min_age` seconds: what a runner that crashed left
    (its processes died with it, see PR_SET_PDEATHSIG in shim.py, but cgroup directories stay)."""
    now = time.time()
    for parent in [CGROUP_ROOT / PARENT, *CGROUP_ROOT.glob(f"*/{PARENT}")]:
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
