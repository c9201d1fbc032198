"""Sampling profiles of running Eddy processes with py-spy, summarised as top entries.

`PySpy(pid, out).start()` runs `py-spy record --format raw --nonblocking` against a process (in a
container too: py-spy reads it through /proc as root); `stop()` ends the recording with SIGINT (py-spy
then writes its file). `summarise(raw)` turns the collapsed stacks into the top functions by own
samples ("self": where the CPU was when sampled) and by inclusive samples ("total": the function or
anything it called). Idle threads are not sampled (py-spy's default), so the shares are of busy time.

py-spy is a development tool, not a dependency: the benchmarks run without it and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

RATE = 200  # samples per second


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def python_pid(pids: set[int]) -> int | None:
    """The Python interpreter among a container's processes (not its shim or a shell)."""
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            exe = Path(f"/proc/{pid}/exe").resolve().name
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if exe.startswith("python") and any(b"eddy" in part for part in cmd):
                return pid
    return None


@dataclass
class PySpy:
    pid: int
    out: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> PySpy:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        self.proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(self.pid), "--format", "raw", "--output", str(self.out),
            "--rate", str(RATE), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)  # attached before the measured step starts
        return self

    async def stop(self) -> Path:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), 30)
        except TimeoutError:
            self.proc.kill()
            _, err = await self.proc.communicate()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile for pid {self.pid}: {err.decode()[-500:]}")
        return self.out


_LINE = re.compile(r":\d+\)$")


def _frame(frame: str) -> str:
    """`read (sidecar/fs.py:120)` -> `read (sidecar/fs.py)`: one entry per function, not per line."""
    frame = _LINE.sub(")", frame.strip())
    return re.sub(r"\(/.*?/((?:site-packages|lib/python3\.\d+|main)/)", "(", frame)


def summarise(raw: str, top: int = 15) -> dict[str, object]:
    """Top functions by own and by inclusive samples, as shares of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    waiting = sum(n for name, n in own.items() if name.startswith(WAITING))
    for name in GENERIC:
        inclusive.pop(name, None)
    inclusive = Counter({k: v for k, v in inclusive.items() if not k.startswith(("process ", "<module>"))})

    def share(c: Counter[str]) -> list[list[object]]:
        return [[name, round(n / total, 3)] for name, n in c.most_common(top)] if total else []
    return {"samples": total, "rate_hz": RATE, "self": share(own), "total": share(inclusive),
            "idle_share": round(waiting / total, 3) if total else 0.0}


# in every stack of an asyncio program: left out of the inclusive ranking, which would say nothing
GENERIC = {"Runner.run (asyncio/runners.py)", "main (eddy_cli/main.py)", "run (asyncio/runners.py)",
           "BaseEventLoop.run_until_complete (asyncio/base_events.py)",
           "BaseEventLoop.run_forever (asyncio/base_events.py)",
           "BaseEventLoop._run_once (asyncio/base_events.py)", "Handle._run (asyncio/events.py)"}
# Idle, though py-spy sampled it as running: a loop in epoll_wait, and a thread-pool thread waiting on
# its queue (`_worker` as the innermost frame: work in progress would add `_WorkItem.run` below it).
WAITING = ("EpollSelector.select", "_PollLikeSelector.select", "_worker (concurrent/futures/thread.py)")


def as_text(title: str, summary: dict[str, object]) -> str:
    lines = [f"## {title}", f"samples: {summary['samples']} at {summary['rate_hz']} Hz (busy threads only); "
             f"idle (epoll_wait, pool threads waiting for work): {summary['idle_share']:.1%}",
             "", "self share | function"]
    lines += [f"{s:>10.1%} | {name}" for name, s in summary["self"]]  # type: ignore[attr-defined]
    lines += ["", "total share | function"]
    lines += [f"{s:>11.1%} | {name}" for name, s in summary["total"]]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n"


PROFILES = Path(__file__).parent / "results" / "profiles"
T = TypeVar("T")


async def profile_during(targets: Mapping[str, int], name: str, step: Awaitable[T], what: str = "",
                         out_dir: Path = PROFILES) -> tuple[T, dict[str, Any]]:
    """Run `step` with py-spy recording each of `targets` (label -> pid); writes
    `out_dir/<label>-<name>.txt` (top entries) and returns (the step's result, label -> summary)."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    spies = {k: await PySpy(pid, out_dir / f"{k}-{name}.raw").start() for k, pid in targets.items()}
    t0 = time.perf_counter()
    try:
        result = await step
    finally:
        seconds = time.perf_counter() - t0
        raws = {k: await s.stop() for k, s in spies.items()}
    out: dict[str, Any] = {"seconds": round(seconds, 2)}
    for k, raw in raws.items():
        title = f"{k} during {what or name} ({seconds:.1f} s)"
        out[k] = await asyncio.to_thread(_write_summary, raw, out_dir / f"{k}-{name}.txt", title)
    return result, out


def _write_summary(raw: Path, txt: Path, title: str) -> dict[str, object]:
    summary = summarise(raw.read_text())
    txt.write_text(as_text(title, summary))
    raw.unlink()
    return summary
