"""One container of a pod: start, postStart, probes, exit, restart with backoff, stop with preStop.

`Container.supervise()` is the loop kubelet's pod workers run for a container: build the process spec
(a config error keeps the container `waiting` with CreateContainerConfigError and is retried), start
it, run its postStart hook (a failing hook kills it), run its startup / liveness / readiness probes,
wait for its exit and decide by its restart rule whether to start it again after a CrashLoopBackOff
delay. `stop()` runs preStop, then SIGTERM and SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sandbox.kubelet.envs import ConfigError
from sandbox.kubelet.probes import Prober, run_action
from sandbox.kubelet.process import ContainerProcess, ContainerStartError, ProcessSpec

log = logging.getLogger("sandbox.kubelet")
Obj = dict[str, Any]
BACKOFF_INITIAL = 1.0  # kubelet: 10 s doubling to 300 s; shorter here, same shape
BACKOFF_MAX = 20.0
CONFIG_RETRY = 1.0
POST_START_TIMEOUT = 120.0  # an exec hook has no timeout of its own; a hung one must not block forever


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodContext(Protocol):
    """What a container needs from its pod."""

    pod: Obj
    pod_ip: str
    state_dir: Path

    def build_spec(self, container: Obj) -> ProcessSpec: ...

    def changed(self) -> None: ...

    async def event(self, reason: str, message: str, type: str = "Normal") -> None: ...


@dataclass
class Terminated:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    message: str = ""
    container_id: str = ""

    def as_status(self) -> Obj:
        out: Obj = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
                    "finishedAt": self.finished_at, "containerID": self.container_id}
        if self.message:
            out["message"] = self.message
        return out


class Container:
    """`role`: init | sidecar (restartable init container) | main."""

    def __init__(self, ctx: PodContext, spec: Obj, role: str, restart: Callable[[int], bool]) -> None:
        self.ctx = ctx
        self.spec = spec
        self.name = str(spec.get("name", ""))
        self.role = role
        self.restart_rule = restart  # exit code -> start again?
        self.proc: ContainerProcess | None = None
        self.restart_count = 0
        self.waiting: tuple[str, str] | None = ("ContainerCreating", "")
        self.running_since = ""
        self.terminated: Terminated | None = None
        self.last: Terminated | None = None
        self.ready = False
        self.started = False
        self.started_event = asyncio.Event()  # startupProbe passed (or running, without one)
        # The first start attempt is over: running with its postStart hook done, or failed. kubelet
        # starts a pod's containers one by one, each after the previous one's postStart returned.
        self.launched = asyncio.Event()
        self.done = asyncio.Event()  # terminated for good (no restart follows)
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self._probers: list[tuple[Prober, asyncio.Task[None]]] = []
        self._kill_reason = ""
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ status
    def status(self) -> Obj:
        state: Obj
        previous = self.terminated  # lastState: the termination before the current state
        if self.proc is not None and self.proc.returncode is None and self.running_since:
            state = {"running": {"startedAt": self.running_since}}
        elif self.waiting is not None:
            reason, message = self.waiting
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated.as_status()}
            previous = self.last
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        out: Obj = {
            "name": self.name, "state": state, "ready": self.ready, "restartCount": self.restart_count,
            "image": str(self.spec.get("image", "")), "imageID": "",
            "started": self.started,
        }
        if self.proc is not None:
            out["containerID"] = self.container_id()
        out["lastState"] = {"terminated": previous.as_status()} if previous is not None else {}
        return out

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.supervise(), name=f"container-{self.name}")
        return self.task

    async def supervise(self) -> None:
        backoff = BACKOFF_INITIAL
        try:
            while not self.stopping:
                try:
                    code = await self.run_once()
                except Exception as exc:  # a bug or an unexpected OS error: report it, retry later
                    log.exception("container %s failed to run", self.name)
                    self.waiting = ("RunContainerError", f"{type(exc).__name__}: {exc}")
                    self.ctx.changed()
                    code = None
                if code is None:  # could not be created: retried on the next sync
                    await self._sleep(CONFIG_RETRY)
                    continue
                if self.stopping or not self.restart_rule(code):
                    break
                self.waiting = ("CrashLoopBackOff", f"back-off {backoff:g}s restarting failed container="
                                f"{self.name} pod={self.ctx.pod['metadata'].get('name')}")
                self.ctx.changed()
                await self.ctx.event("BackOff", f"Back-off restarting failed container {self.name}",
                                     "Warning")
                await self._sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                if not self.stopping:
                    self.restart_count += 1
        finally:
            self.done.set()
            self.ctx.changed()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when the container is being stopped."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def run_once(self) -> int | None:
        """Start, hooks, probes, wait for the exit; the exit code, or None if it could not be created."""
        try:
            return await self._attempt()
        finally:
            self.launched.set()

    async def _attempt(self) -> int | None:
        try:
            spec = self.ctx.build_spec(self.spec)
        except (ConfigError, ValueError) as exc:
            self.waiting = ("CreateContainerConfigError", str(exc))
            self.ctx.changed()
            await self.ctx.event("Failed", f"Error: {exc}", "Warning")
            return None
        started_at = now()
        try:
            state = self.ctx.state_dir / "containers" / self.name
            state.mkdir(parents=True, exist_ok=True)
            self.proc = await ContainerProcess.start(spec, state)
        except (ContainerStartError, FileNotFoundError, OSError) as exc:
            self.proc = None
            self._finish(Terminated(128, "StartError", started_at, now(), str(exc)))
            await self.ctx.event("Failed", f"Error: {exc}", "Warning")
            return 128
        self.running_since, self.waiting, self._kill_reason = started_at, None, ""
        self.ctx.changed()
        if self.stopping:  # stopped while it was being started
            await self.proc.stop(self._grace())
        await self.ctx.event("Started", f"Started container {self.name}")
        proc = self.proc
        try:
            hook = ((self.spec.get("lifecycle") or {}).get("postStart")) or None
            if hook:
                ok, message = await run_action(hook, container=self.spec, pod_ip=self.ctx.pod_ip,
                                               execer=self._execer(proc), timeout=POST_START_TIMEOUT)
                if not ok and proc.returncode is None:
                    await self.ctx.event("FailedPostStartHook", message[:300], "Warning")
                    self._kill_reason = "FailedPostStartHook"
                    await proc.stop(self._grace())
            self.launched.set()
            self._start_probes(proc)
            code = await proc.wait()
        finally:
            await self._stop_probes()
        reason = self._kill_reason or ("Completed" if code == 0 else "Error")
        message = ""
        if code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = await asyncio.to_thread(_log_tail, spec.log_path)
        self._finish(Terminated(code, reason, started_at, now(), message, self.container_id()))
        with contextlib.suppress(Exception):
            await proc.cleanup()
        return code

    def _finish(self, term: Terminated) -> None:
        if self.terminated is not None:
            self.last = self.terminated
        self.terminated = term
        self.running_since = ""
        # As kubelet reports them: a completed init container is ready, anything else that ended is
        # neither ready nor started.
        self.ready = self.role == "init" and term.exit_code == 0
        self.started = False
        self.ctx.changed()

    def container_id(self) -> str:
        """An ID per run, in the `<runtime>://<id>` form of containerStatuses."""
        return f"sandbox://{self.ctx.pod['metadata'].get('uid', '')}/{self.name}/{self.restart_count}"

    def _grace(self) -> float:
        return float((self.ctx.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    def _execer(self, proc: ContainerProcess) -> Callable[[list[str], float], Awaitable[tuple[int, bytes]]]:
        async def execer(argv: list[str], timeout: float) -> tuple[int, bytes]:
            result = await asyncio.wait_for(proc.exec(argv, timeout=timeout), timeout + 1)
            return result.returncode, result.stdout + result.stderr
        return execer

    def _start_probes(self, proc: ContainerProcess) -> None:
        startup = self.spec.get("startupProbe")
        readiness = self.spec.get("readinessProbe")
        liveness = self.spec.get("livenessProbe")
        execer = self._execer(proc)
        started = asyncio.Event()

        async def on_startup(ok: bool, message: str) -> None:
            if ok:
                self.started = True
                started.set()
                self.started_event.set()
                if not readiness:
                    self.ready = True
                self.ctx.changed()
            else:
                await self._probe_kill(proc, "Startup", message)

        async def on_readiness(ok: bool, message: str) -> None:
            if ok != self.ready:
                self.ready = ok
                self.ctx.changed()
            if not ok:
                await self.ctx.event("Unhealthy", f"Readiness probe failed: {message}"[:300], "Warning")

        async def on_liveness(ok: bool, message: str) -> None:
            if not ok:
                await self._probe_kill(proc, "Liveness", message)

        async def after_startup(prober: Prober) -> None:
            await started.wait()
            await prober.run()

        def add(kind: str, probe: Obj, cb: Callable[[bool, str], Awaitable[None]]) -> None:
            prober = Prober(kind, probe, container=self.spec, pod_ip=self.ctx.pod_ip, execer=execer,
                            on_result=cb)
            run = prober.run() if kind == "startup" else after_startup(prober)
            self._probers.append((prober, asyncio.create_task(run)))

        if startup:
            self.started = False
            add("startup", startup, on_startup)
        else:
            self.started = True
            started.set()
            self.started_event.set()
            self.ready = not readiness
        if readiness:
            self.ready = False
            add("readiness", readiness, on_readiness)
        if liveness:
            add("liveness", liveness, on_liveness)
        self.ctx.changed()

    async def _stop_probes(self) -> None:
        """Let each probe finish the attempt in flight (bounded by its timeout), then end it."""
        probers, self._probers = self._probers, []
        for prober, task in probers:
            prober.stop()
            if not prober.busy:
                task.cancel()
        tasks = [task for _, task in probers]
        if tasks:
            longest = max(int(p.probe.get("timeoutSeconds", 1)) for p, _ in probers)
            _, pending = await asyncio.wait(tasks, timeout=longest + 2)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _probe_kill(self, proc: ContainerProcess, kind: str, message: str) -> None:
        if proc.returncode is not None or self.stopping:
            return
        await self.ctx.event("Unhealthy", f"{kind} probe failed: {message}"[:300], "Warning")
        await self.ctx.event("Killing", f"Container {self.name} failed {kind.lower()} probe, will be "
                             "restarted")
        asyncio.get_running_loop().create_task(proc.stop(self._grace()))

    async def stop(self, grace: float) -> None:
        """preStop, SIGTERM, SIGKILL after `grace` seconds; no restart afterwards."""
        self.stopping = True
        self._wake.set()
        proc = self.proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if proc is not None and proc.returncode is None:
            await self.ctx.event("Killing", f"Stopping container {self.name}")
            hook = (self.spec.get("lifecycle") or {}).get("preStop")
            if hook:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run_action(hook, container=self.spec, pod_ip=self.ctx.pod_ip,
                                                      execer=self._execer(proc), timeout=grace), grace)
            if proc.returncode is None:
                await proc.stop(max(0.0, deadline - loop.time()))
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.task)

    def kill(self) -> None:
        """SIGKILL at once (the runner's last resort)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.signal(signal.SIGKILL)


def _log_tail(path: Path, max_bytes: int = 2048, max_lines: int = 80) -> str:
    """kubelet's FallbackToLogsOnError message: the end of the log, at most 80 lines / 2 KiB."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            tail = f.read()
    except OSError:
        return ""
    return "\n".join(tail.decode("utf-8", "replace").splitlines()[-max_lines:])
