"""Child processes and FUSE mounts that must never outlive the demo (or a benchmark), even on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the usual small race: the caller binds it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """A process's resident set size in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def eddy_command() -> list[str]:
    """The `eddy` console command of this installation (falls back to running the module)."""
    exe = Path(sys.executable).with_name("eddy")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "eddy_cli.main"]


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def unmount(path: Path) -> None:
    """Unmount a FUSE mount if it is there; lazy as a last resort so nothing stays behind."""
    if not is_mounted(path):
        return
    for args in (
        ["fusermount3", "-u", str(path)],
        ["fusermount3", "-uz", str(path)],
        ["umount", "-l", str(path)],
    ):
        if shutil.which(args[0]) is None:
            continue
        subprocess.run(args, capture_output=True, check=False)
        if not is_mounted(path):
            return


class Processes:
    """Starts children in their own process groups, remembers mounts and temp dirs, tears all down."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.mounts: list[Path] = []
        self.dirs: list[Path] = []

    def start(
        self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        proc = subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        log.close()
        self.children.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.children = [(n, p) for n, p in self.children if p is not proc]

    def check_alive(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early with code {proc.returncode}")

    def close(self) -> None:
        for _, proc in reversed(list(self.children)):
            self.stop(proc)
        for mount in self.mounts:
            unmount(mount)
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def stop_child(proc: asyncio.subprocess.Process | None, timeout: float = 10.0) -> None:
    """SIGTERM an asyncio child, SIGKILL it if it is still there after `timeout`; reap it either way."""
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
