"""Host-side mounts of the runner: tmpfs for `emptyDir.medium: Memory`, and unmounting whatever ended up
under a pod's directory (tmpfs, FUSE mounts propagated back from a Bidirectional container)."""

from __future__ import annotations

import asyncio
from pathlib import Path


class MountError(Exception):
    pass


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode("utf-8", "replace").strip()


async def mount_tmpfs(path: Path, size_bytes: int | None, mode: int = 0o777) -> None:
    options = f"mode={mode:o}" + (f",size={size_bytes}" if size_bytes else "")
    code, err = await _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path))
    if code:
        raise MountError(f"mount tmpfs on {path}: {err}")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest (and latest) first."""
    base = str(path).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    found.reverse()  # later mounts stack on earlier ones
    found.sort(key=lambda p: p.count("/"), reverse=True)
    return found


async def unmount_all(path: Path) -> list[str]:
    """Lazily unmount everything at or below `path`; returns what could not be unmounted."""
    left: list[str] = []
    for _ in range(3):
        points = mounts_under(path)
        if not points:
            return []
        left = []
        for point in points:
            code, _err = await _run("umount", "-l", point)
            if code:
                left.append(point)
    return mounts_under(path) or left
