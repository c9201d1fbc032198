"""Whether real FUSE mounts are possible here: fixture `fuse_available`, helper `require_fuse()`.

Checks, in order: /dev/fuse exists and is readable+writable, `fusermount3` is on PATH, pyfuse3
imports, we may mount (root, or fusermount3 being setuid), and finally a real probe: a child process
mounts an empty pyfuse3 file system on a temp dir, sees it in /proc/self/mounts and unmounts (about
0.2 s, once per session). A test that needs FUSE calls `require_fuse()`, which skips with the exact
reason only where FUSE is impossible.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class FuseSupport:
    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


@functools.cache
def fuse_support() -> FuseSupport:
    if not os.path.exists("/dev/fuse"):
        return FuseSupport(False, "/dev/fuse does not exist (no FUSE in this kernel/container)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return FuseSupport(False, "/dev/fuse is not readable and writable by this user")
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        return FuseSupport(False, "fusermount3 not found (install the fuse3 package)")
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        return FuseSupport(False, f"pyfuse3 cannot be imported: {exc}")
    setuid = bool(os.stat(fusermount).st_mode & stat.S_ISUID)
    if os.geteuid() != 0 and not setuid:
        return FuseSupport(False, "not root and fusermount3 is not setuid: mounting is not permitted")
    return _probe_mount(fusermount)


_PROBE = """
import sys, pyfuse3, pyfuse3.asyncio
pyfuse3.asyncio.enable()
path = sys.argv[1]
pyfuse3.init(pyfuse3.Operations(), path, set(["fsname=eddy-probe", "ro"]))
try:
    with open("/proc/self/mounts") as f:
        mounted = any(line.split()[1] == path for line in f)
finally:
    pyfuse3.close(unmount=True)
sys.exit(0 if mounted else 3)
"""


def _probe_mount(fusermount: str) -> FuseSupport:
    mountpoint = tempfile.mkdtemp(prefix="eddy-fuse-probe-")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, mountpoint], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return FuseSupport(False, "a test FUSE mount did not finish within 20 s")
    finally:
        subprocess.run([fusermount, "-u", "-z", mountpoint], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            os.rmdir(mountpoint)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return FuseSupport(False, f"a test FUSE mount failed: {detail}")
    return FuseSupport(True, "FUSE available (a test mount succeeded)")


def require_fuse() -> None:
    """Skip the calling test, printing why, when FUSE mounts are impossible on this machine."""
    support = fuse_support()
    if not support.available:
        pytest.skip(f"FUSE unavailable: {support.reason}")


@pytest.fixture(scope="session")
def fuse_available() -> FuseSupport:
    """Truthy when FUSE mounts are possible; `.reason` says why not."""
    return fuse_support()
