"""Where the containers' cgroups live: the machine's hierarchies at /sys/fs/cgroup, or, when nothing is
mounted there, the same hierarchies mounted by the runner at PRIVATE_ROOT.

A node mounts its cgroups at /sys/fs/cgroup and runc uses them. A chroot whose /sys was bound without
its submounts (the fresh-Debian check's: `mount --bind /sys`) has an empty /sys/fs/cgroup, although
the kernel has cgroups. There the runner mounts what the kernel offers, as a node's init would: the
cgroup v1 hierarchies holding the controllers it uses (pids or freezer to track a container's processes,
cpu, memory), each with exactly the controllers the kernel put together in it (e.g. "cpu,cpuacct",
from /proc/cgroups), under a tmpfs; or the cgroup2 hierarchy when those controllers are not in any v1
hierarchy. They are the kernel's existing hierarchies, seen through a second mount: groups made here
are the same groups as under the machine's /sys/fs/cgroup, if it has one.

PRIVATE_ROOT is made a private mount, so the hierarchies mounted under it propagate nowhere. It stays
mounted after the runner stops (as a node's cgroupfs does) and is used again by the next runner in
the same mount namespace; `umount -R /run/eddy-cgroup` removes it. When mounting fails (no
CAP_SYS_ADMIN, a kernel without cgroups) `CgroupError` says why: containers never run without cgroups.
All calls block briefly; the runner calls them in a thread.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from sandbox.kubelet.shim import MNT_DETACH, MS_PRIVATE, MS_REC, mount, umount2

SYSTEM_ROOT = Path("/sys/fs/cgroup")
PRIVATE_ROOT = Path("/run/eddy-cgroup")
TRACKERS = ("pids", "freezer", "cpu")  # v1 controllers that can track a container's processes, best first
USED = ("pids", "freezer", "cpu", "memory")  # v1 controllers the runner uses, if the kernel has them
_mounting = threading.Lock()


class CgroupError(Exception):
    pass


def has_hierarchy(base: Path) -> bool:
    """Whether cgroups are mounted at `base`: the v2 hierarchy itself, or v1 ones in subfolders."""
    return is_unified(base) or any((base / h / "cgroup.procs").exists() for h in TRACKERS)


def is_unified(base: Path) -> bool:
    """True when `base` is the cgroup v2 hierarchy (on a hybrid machine it is a tmpfs of v1 ones)."""
    return (base / "cgroup.controllers").exists()


def hierarchy_root() -> Path:
    """The folder holding the hierarchies: SYSTEM_ROOT when it has them, else PRIVATE_ROOT, mounted
    on first use (see the module docstring)."""
    if has_hierarchy(SYSTEM_ROOT):
        return SYSTEM_ROOT
    with _mounting:  # containers start concurrently: one thread mounts, the others find it mounted
        if not has_hierarchy(PRIVATE_ROOT):
            mount_private(PRIVATE_ROOT)
    return PRIVATE_ROOT


def v1_hierarchies() -> list[list[str]]:
    """The kernel's cgroup v1 hierarchies holding controllers in USED, each as its controllers in the
    order of /proc/cgroups (a hierarchy must be mounted with exactly that set)."""
    groups: dict[str, list[str]] = {}
    with open("/proc/cgroups") as f:
        for line in f:
            if line.startswith("#"):
                continue
            name, hierarchy, _count, enabled = line.split()
            if hierarchy != "0" and enabled == "1":
                groups.setdefault(hierarchy, []).append(name)
    return [names for names in groups.values() if set(names) & set(USED)]


def mount_private(base: Path) -> None:
    """Mount the kernel's hierarchies at `base` (v1 if it has the controllers in USED there, else v2),
    as a private mount; on failure nothing is left mounted and `CgroupError` says what failed."""
    hierarchies = v1_hierarchies()
    base.mkdir(parents=True, exist_ok=True)
    kind = "cgroup v1 hierarchies " + " ".join(",".join(h) for h in hierarchies) if hierarchies else "cgroup2"
    prefix = f"no cgroups are mounted at {SYSTEM_ROOT}, and"
    mounted = False
    try:
        if hierarchies:
            mount("cgroup", str(base), "tmpfs", 0, "mode=755")
            mounted = True
            mount(None, str(base), None, MS_REC | MS_PRIVATE)
            for names in hierarchies:
                joined = ",".join(names)
                (base / joined).mkdir()
                mount("cgroup", str(base / joined), "cgroup", 0, joined)
                for name in names:
                    if name != joined:  # /sys/fs/cgroup's layout: cpu -> cpu,cpuacct
                        (base / name).symlink_to(joined)
        else:
            mount("cgroup2", str(base), "cgroup2", 0)
            mounted = True
            mount(None, str(base), None, MS_REC | MS_PRIVATE)
        if not has_hierarchy(base):
            raise CgroupError(f"{prefix} the kernel's {kind}, mounted at {base}, has no controller that "
                              f"can track processes ({', '.join(TRACKERS)})")
    except (OSError, CgroupError) as exc:
        if mounted:  # a lazy unmount takes the hierarchies under the tmpfs with it
            with contextlib.suppress(OSError):
                umount2(str(base), MNT_DETACH)
        if isinstance(exc, CgroupError):
            raise
        raise CgroupError(f"{prefix} mounting the kernel's {kind} at {base} failed: {exc}") from exc
