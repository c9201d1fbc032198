"""Looking at, tuning, waiting for and removing FUSE mounts (from /proc/self/mountinfo, never by
touching a mount that may hang)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    device: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str
    shared: bool = False  # in a peer group ("shared:N"): mounts on it propagate to its peers and slaves


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(mountinfo: str = "/proc/self/mountinfo") -> list[MountInfo]:
    mounts = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            shared = any(f.startswith("shared:") for f in fields[6:])
            mounts.append(MountInfo(fields[2], _unescape(fields[4]), tail[0], _unescape(tail[1]), shared))
    return mounts


def find_mount(path: str | Path) -> MountInfo | None:
    """The mount whose mount point is exactly `path` (the last one, if stacked)."""
    target = os.path.abspath(path)
    found = None
    for info in mount_table():
        if info.mountpoint == target:
            found = info
    return found


def is_fuse_mount(path: str | Path) -> bool:
    info = find_mount(path)
    return info is not None and (info.fstype == "fuse" or info.fstype.startswith("fuse."))


def set_kernel_readahead(path: str | Path, kib: int) -> bool:
    """Raise the kernel's read-ahead for a FUSE mount (its bdi), so buffered readers get big requests.

    Call it only once the mount has answered a request: the kernel lowers the value again when it
    processes the filesystem's INIT reply."""
    info = find_mount(path)
    if info is None or kib <= 0:
        return False
    knob = Path("/sys/class/bdi") / info.device / "read_ahead_kb"
    try:
        knob.write_text(f"{kib}\n")
    except OSError as exc:
        log.info("cannot set %s (%s); kernel read-ahead stays at its default", knob, exc.strerror)
        return False
    return True


def unmount(path: str | Path, *, lazy_fallback: bool = True) -> bool:
    """Unmount a FUSE mount if present: `fusermount3 -u`, then lazily as a last resort."""
    attempts = [["fusermount3", "-u"], ["fusermount", "-u"]]
    if lazy_fallback:
        attempts += [["fusermount3", "-uz"], ["umount", "-l"]]
    for cmd in attempts:
        if not find_mount(path):
            return True
        if shutil.which(cmd[0]) is None:
            continue
        subprocess.run([*cmd, str(path)], capture_output=True, check=False, timeout=30)
    return find_mount(path) is None


def clean_stale_mount(path: str | Path) -> bool:
    """If `path` still carries a FUSE mount (a crashed sidecar leaves one that answers ENOTCONN),
    remove it so the new mount can take its place. Returns True if one was removed."""
    if not is_fuse_mount(path):
        return False
    log.warning("%s still carries a FUSE mount (left by a crash?); unmounting it", path)
    if not unmount(path):
        raise RuntimeError(f"cannot remove the stale mount at {path}")
    return True


def prepare_mountpoint(path: str | Path) -> str:
    """Make `path` ready for a new mount; says what was found: "fresh", "stack" or "cleaned".

    A dead FUSE mount in a peer group (the pod's shared emptyDir after a sidecar crash: the kubelet's
    copy and the app container's HostToContainer copy are its peer and slave) is left in place and
    the new mount goes *on top* of it: a mount on a shared mount propagates to every peer and slave,
    so the app's /data gets the new mount without restarting. Unmounting it instead would only remove
    this container's copy (its parent, the container's root, propagates nothing) and the new mount
    would stay private to the sidecar. Mounting on top needs the dead root's attributes to be cached
    (the sidecar gives the root a long attr_timeout, see fs.py), as does the container runtime's bind
    of the volume on restart. Any other leftover FUSE mount is unmounted (`clean_stale_mount`)."""
    info = find_mount(path)
    if info is None or not (info.fstype == "fuse" or info.fstype.startswith("fuse.")):
        Path(path).mkdir(parents=True, exist_ok=True)
        return "fresh"
    dead = probe(path, 2.0) is not None
    if dead and info.shared:
        try:
            os.stat(path)
        except OSError as exc:
            log.info("the dead mount at %s cannot be stacked on (%s)", path, exc.strerror)
        else:
            log.warning("%s carries a dead FUSE mount shared with other containers (a crashed sidecar); "
                        "mounting over it so they get the new mount", path)
            return "stack"
    clean_stale_mount(path)
    Path(path).mkdir(parents=True, exist_ok=True)
    return "cleaned"


def unmount_all_fuse(path: str | Path, limit: int = 16) -> bool:
    """Unmount FUSE mounts stacked at `path` (ours, then dead ones below it) until none is left."""
    for _ in range(limit):
        if not is_fuse_mount(path):
            return True
        if not unmount(path):
            return False
    return not is_fuse_mount(path)


def probe(path: str | Path, timeout: float) -> str | None:
    """List the mount's root in a daemon thread (a hung mount must not hang us); None means it answers."""
    result: list[str | None] = []

    def run() -> None:
        try:
            os.listdir(path)
            result.append(None)
        except OSError as exc:
            result.append(f"{path}: {exc.strerror}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"{path}: no answer within {timeout:.1f}s"


def wait_for_mount(path: str | Path, timeout: float, interval: float = 0.1) -> str | None:
    """Wait until `path` is a FUSE mount that answers; None on success, else why not."""
    deadline = time.monotonic() + timeout
    why = f"{path} is not a FUSE mount"
    while True:
        left = deadline - time.monotonic()
        if is_fuse_mount(path):
            why = probe(path, max(0.5, min(5.0, left))) or ""
            if not why:
                return None
        else:
            why = f"{path} is not a FUSE mount"
        if time.monotonic() >= deadline:
            return why
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
