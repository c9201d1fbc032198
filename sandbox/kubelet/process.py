"""One container as a process in its own namespaces, from a fully resolved spec (the runc layer).

`ContainerProcess.start` runs `shim.py` (see there) which builds the container and execs its command;
`start` returns once that exec happened, or raises `ContainerStartError` with the failed step.

What a container gets here, and what it does not:
- Its own mount, UTS and IPC namespaces, the pod's network namespace (`netns`) or the host's. No PID
  namespace: containers share the host's PID namespace (a container's processes are visible from the
  host and from other containers' /proc). To keep a container's lifetime like a PID namespace's, every
  process it started (daemons and exec'd processes too) is killed when its main process exits.
  IPC namespace and /dev/shm are per container here (in Kubernetes a pod's containers share them).
- A root that is an overlayfs over the host's `/` (its ext4 only, not the host's other mounts) with
  the upper layer in a tmpfs: writes are private to the container and vanish with it. Because the
  lower layer is the host itself, "images" are this machine's files. `/root` is made 0755 in the
  overlay so non-root users can run the venv's interpreter (which lives under /root/.pyenv).
- /proc (the host's, with /proc/sys, /proc/irq, /proc/bus and /proc/sysrq-trigger read-only unless
  privileged), /sys (a read-only sysfs; the host's /sys when privileged), /dev (a tmpfs with null,
  zero, full, random, urandom, tty, a new devpts and /dev/shm; with a copy of every host device node
  when privileged, as Docker does, so nothing is ever written into the host's /dev), /tmp
  (a fresh tmpfs), then the volumes with their mountPropagation, and `hosts_file` at /etc/hosts.
  Since /etc/hosts is a bind mount of that file, it must be rewritten in place (not renamed over) for
  changes to show inside the container. Privileged containers' /dev/fuse has mode 0666, as a node's
  udev rule makes it (this VM's bare devtmpfs has 0600). `users` adds the image's
  users to the container's /etc/passwd and /etc/group, `image_files` writes the image's own files
  into the container's root (the host's files stay as they are).
- mountPropagation: a volume's source under the rshared kubelet root (`make_shared_root`) joins the
  host's peer group when bound; Bidirectional keeps it shared, HostToContainer makes it a slave, None
  private. A source not under a shared mount propagates nothing either way (the host's / is private).
  The root is built on a tmpfs mounted, inside the container's namespace only, over the empty host
  directory /run/eddy-sandbox (kept, shared by all containers), whose mount is made private there, so
  nothing of a container's root ever propagates to the host or to the kubelet root.
- Capabilities: all when privileged, else Docker's default set adjusted by cap_add/cap_drop (names
  with or without "CAP_", or "ALL"), as the bounding set; a non-root user ends with none effective,
  as with runc when no ambient capabilities are set.
- cgroups: see cgroups.py. Each container's processes also form their own process group.
- The rootfs and every mount of a container exist only in its mount namespace, so they vanish when its
  last process exits; `cleanup` has nothing to unmount on the host, it removes cgroups and state files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal as signals
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.kubelet.cgroups import CgroupError, Cgroups
from sandbox.kubelet.shim import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    MNT_DETACH,
    MS_BIND,
    MS_REC,
    MS_SHARED,
    PROPAGATION,
    STAGE,
    mount,
    mount_points,
    umount2,
)

SHIM = str(Path(__file__).with_name("shim.py"))
SETUP_TIMEOUT = 30.0  # seconds for the shim to build a container (normally ~0.1 s)


class ContainerError(Exception):
    pass


class ContainerStartError(ContainerError):
    pass


@dataclass(frozen=True)
class BindMount:
    source: Path  # host path, file or directory
    target: str  # absolute path inside the container
    read_only: bool = False
    propagation: str = "None"  # "None" | "HostToContainer" | "Bidirectional" (k8s mountPropagation)
    tmpfs: bool = False  # a fresh tmpfs at target instead of binding source (size from size_bytes)
    size_bytes: int | None = None


@dataclass(frozen=True)
class ProcessSpec:
    argv: list[str]
    env: dict[str, str]
    log_path: Path  # stdout and stderr appended here
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    no_new_privs: bool = False
    read_only_root: bool = False
    mounts: tuple[BindMount, ...] = ()
    netns: str | None = None  # path for setns(CLONE_NEWNET); None = host network
    hostname: str = ""  # UTS namespace hostname ("" = keep host's)
    hosts_file: Path | None = None  # bind-mounted at /etc/hosts when set
    cpu_limit_millis: int | None = None  # cgroup cpu quota (cfs), e.g. 500 for 500m
    memory_limit_bytes: int | None = None
    # Users the image defines (name, uid, gid), e.g. Eddy's `useradd --uid 65532 eddy`: added to the
    # container's /etc/passwd and /etc/group (programs such as fusermount3 need a name for their uid).
    users: tuple[tuple[str, int, int], ...] = ()
    # Files the image adds (absolute path, text), e.g. an /etc/fuse.conf: written into the container's
    # root (its overlay) before the command starts; the host's files stay as they are.
    image_files: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


def capability_set(spec: ProcessSpec) -> list[int] | None:
    """The bounding set as capability numbers; None (keep everything) when privileged."""
    if spec.privileged:
        return None

    def names(values: tuple[str, ...]) -> set[str]:
        out = set()
        for value in values:
            name = value.upper().removeprefix("CAP_")
            if name == "ALL":
                out.update(CAPABILITIES)
            elif name in CAPABILITIES:
                out.add(name)
            else:
                raise ContainerStartError(f"unknown capability {value!r}")
        return out

    keep = (DEFAULT_CAPABILITIES | names(spec.cap_add)) - names(spec.cap_drop)
    return sorted(CAPABILITIES.index(name) for name in keep)


def _validate(spec: ProcessSpec) -> None:
    if not spec.argv:
        raise ContainerStartError("empty argv")
    if not spec.cwd.startswith("/"):
        raise ContainerStartError(f"working directory must be absolute: {spec.cwd!r}")
    for m in spec.mounts:
        if not m.target.startswith("/") or os.path.normpath(m.target) == "/":
            raise ContainerStartError(f"mount target must be an absolute path below /: {m.target!r}")
        if m.propagation not in PROPAGATION:
            raise ContainerStartError(f"unknown mountPropagation {m.propagation!r} for {m.target}")
    for path, _ in spec.image_files:
        if not path.startswith("/") or path.endswith("/"):
            raise ContainerStartError(f"image file path must be an absolute file path: {path!r}")


def _plan(spec: ProcessSpec, cgroups: Cgroups) -> dict[str, Any]:
    return {
        "argv": list(spec.argv), "env": dict(spec.env), "cwd": spec.cwd, "uid": spec.uid, "gid": spec.gid,
        "groups": list(spec.groups), "privileged": spec.privileged, "keep_caps": capability_set(spec),
        "no_new_privs": spec.no_new_privs, "read_only_root": spec.read_only_root,
        "netns": spec.netns, "hostname": spec.hostname,
        "hosts_file": str(spec.hosts_file.resolve()) if spec.hosts_file else None,
        "mounts": [
            {"source": str(m.source.resolve()), "target": m.target, "read_only": m.read_only,
             "propagation": m.propagation, "tmpfs": m.tmpfs, "size_bytes": m.size_bytes}
            for m in spec.mounts
        ],
        "cgroup_procs": cgroups.procs_files,
        "users": [list(user) for user in spec.users],
        "files": [[path, text] for path, text in spec.image_files],
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data))


def _read_all(fd: int) -> str:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def _spawn_shim(mode: str, plan_path: Path, **kwargs: Any) -> tuple[asyncio.subprocess.Process, str]:
    """Run the shim; returns the process and its setup failure ("" once the command was exec'd).
    The shim is killed if this is cancelled or setup takes longer than SETUP_TIMEOUT (e.g. a hung mount)."""
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", SHIM, mode, str(plan_path), str(write_fd),
            pass_fds=(write_fd,), start_new_session=True, cwd="/", **kwargs,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    # The read ends at the exec (close-on-exec) or when the shim dies: killing it ends the thread.
    reader = asyncio.ensure_future(asyncio.to_thread(_read_all, read_fd))
    try:
        return proc, await asyncio.wait_for(asyncio.shield(reader), SETUP_TIMEOUT)
    except TimeoutError:
        _killpg(proc.pid)
        await proc.wait()
        await reader
        return proc, f"setup did not finish within {SETUP_TIMEOUT:.0f}s"
    except BaseException:
        _killpg(proc.pid)
        raise


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signals.SIGKILL)


class ContainerProcess:
    """A running (or exited) container; see the module docstring for what it is made of."""

    def __init__(self, spec: ProcessSpec, state_dir: Path, ident: str, cgroups: Cgroups,
                 proc: asyncio.subprocess.Process) -> None:
        self.spec = spec
        self.state_dir = state_dir
        self.ident = ident
        self.cgroups = cgroups
        self._proc = proc
        self._returncode: int | None = None
        self._exited = asyncio.ensure_future(self._reap())
        self._cleaned = False

    @property
    def pid(self) -> int:
        """Host pid of the container's main process."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @classmethod
    async def start(cls, spec: ProcessSpec, state_dir: Path) -> ContainerProcess:
        _validate(spec)
        ident = uuid.uuid4().hex[:12]
        await asyncio.to_thread(_prepare_dirs, state_dir, spec.log_path)
        try:
            cgroups = await asyncio.to_thread(
                Cgroups.plan, ident, cpu_millis=spec.cpu_limit_millis, memory_bytes=spec.memory_limit_bytes
            )
        except CgroupError as exc:
            await asyncio.to_thread(_remove_state, state_dir)
            raise ContainerStartError(f"cannot set up the container's cgroups: {exc}") from exc
        making = asyncio.ensure_future(asyncio.to_thread(cgroups.create))
        try:
            try:
                await asyncio.shield(making)
            except (CgroupError, OSError) as exc:
                raise ContainerStartError(f"cannot set up the container's cgroups: {exc}") from exc
            plan_path = state_dir / "container.json"
            # sources resolved on the host (a bind follows the host's symlinks), in a thread
            await asyncio.to_thread(lambda: _write_json(plan_path, _plan(spec, cgroups)))
            log = await asyncio.to_thread(open, spec.log_path, "ab")
            try:
                proc, failure = await _spawn_shim(
                    "start", plan_path, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
                )
            finally:
                log.close()
            if failure:
                await proc.wait()
                raise ContainerStartError(f"container {spec.argv[0]!r} failed to start: {failure}")
        except BaseException:
            # also when cancelled: let the cgroups' creation finish, then remove them (killing the shim)
            with contextlib.suppress(BaseException):
                await making
            with contextlib.suppress(CgroupError):
                await asyncio.to_thread(cgroups.remove)
            await asyncio.to_thread(_remove_state, state_dir)
            raise
        return cls(spec, state_dir, ident, cgroups, proc)

    async def _reap(self) -> int:
        code = _exit_code(await self._proc.wait())
        # Like the end of a PID namespace: nothing the container started outlives its main process.
        self._kill_all()
        await asyncio.to_thread(self.cgroups.kill)
        self._returncode = code
        return code

    def _kill_all(self) -> None:
        _killpg(self._proc.pid)

    async def wait(self) -> int:
        """The exit code; 128+signal when killed by a signal."""
        return await asyncio.shield(self._exited)

    def signal(self, sig: int) -> None:
        """Send `sig` to the main process (as `docker kill --signal` does)."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    async def stop(self, grace: float) -> int:
        """SIGTERM, up to `grace` seconds, then SIGKILL to the whole process group and cgroup."""
        if self._returncode is None:
            self.signal(signals.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), max(grace, 0.0))
            except TimeoutError:
                self._kill_all()
                await asyncio.to_thread(self.cgroups.kill)
        return await self.wait()

    async def exec(self, argv: list[str], *, env: dict[str, str] | None = None, uid: int | None = None,
                   gid: int | None = None, cwd: str | None = None, stdin: bytes | None = None,
                   timeout: float | None = None) -> ExecResult:
        """Run `argv` in the container's mount, network, UTS and IPC namespaces and root, in its cgroups,
        with its capabilities, as its user unless `uid`/`gid` say otherwise (what `kubectl exec` does).
        A command that cannot be run gives returncode 127 (not found) or 126 and the reason in stderr;
        `TimeoutError` after `timeout` seconds (the command is killed)."""
        if self._returncode is not None or self._proc.returncode is not None:
            raise ContainerError(f"container {self.ident} is not running")
        if not argv:
            raise ContainerError("empty argv")
        spec = self.spec
        user = spec.uid if uid is None else uid
        plan = {
            "pid": self.pid, "argv": list(argv), "env": dict(spec.env if env is None else env),
            "cwd": cwd or spec.cwd, "uid": user, "gid": spec.gid if gid is None else gid,
            "groups": list(spec.groups) if user == spec.uid else [],
            "keep_caps": capability_set(spec), "no_new_privs": spec.no_new_privs,
            "cgroup_procs": self.cgroups.procs_files,
        }
        plan_path = self.state_dir / f"exec-{uuid.uuid4().hex[:12]}.json"
        await asyncio.to_thread(_write_json, plan_path, plan)
        pipe = asyncio.subprocess.PIPE
        try:
            proc, failure = await _spawn_shim(
                "exec", plan_path, stdin=pipe if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=pipe, stderr=pipe,
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
            except BaseException:
                _killpg(proc.pid)
                await proc.wait()
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(plan_path.unlink)
        if failure:
            err += failure.encode() + b"\n"
        return ExecResult(_exit_code(proc.returncode or 0), out, err)

    async def cleanup(self) -> None:
        """After exit (stops the container first if needed): remove cgroups and state; idempotent."""
        if self._cleaned:
            return
        if self._returncode is None:
            await self.stop(0)
        try:
            await asyncio.to_thread(self.cgroups.remove)
        except CgroupError as exc:  # a process that SIGKILL does not end; cleanup may be retried
            raise ContainerError(str(exc)) from exc
        await asyncio.to_thread(_remove_state, self.state_dir)
        self._cleaned = True


def _prepare_dirs(state_dir: Path, log_path: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    os.makedirs(STAGE, mode=0o700, exist_ok=True)


def _remove_state(state_dir: Path) -> None:
    """Remove the files this module wrote, and state_dir when nothing else is left in it."""
    for path in [state_dir / "container.json", *state_dir.glob("exec-*.json")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        state_dir.rmdir()


def _is_mount_point(path: str) -> bool:
    return any(point == path for point, _ in mount_points())


def make_shared_root(root: Path) -> None:
    """Bind `root` onto itself and make it rshared (idempotent), so that volume directories under it
    join one peer group with the containers' binds of them: what mountPropagation needs."""
    root.mkdir(parents=True, exist_ok=True)
    path = str(root.resolve())
    if not _is_mount_point(path):
        mount(path, path, None, MS_BIND | MS_REC)
    mount(None, path, None, MS_REC | MS_SHARED)


def release_shared_root(root: Path) -> None:
    """Lazily unmount everything at or under `root` (FUSE mounts propagated back from containers,
    tmpfs volumes, the root's own bind), deepest first, until nothing is left."""
    path = str(root.resolve())
    for _ in range(100):
        points = [p for p, _ in mount_points() if p == path or p.startswith(path + "/")]
        if not points:
            return
        deepest = max(points, key=lambda p: p.count("/"))
        try:
            umount2(deepest, MNT_DETACH)
        except OSError as exc:
            raise ContainerError(f"cannot unmount {deepest}: {exc}") from exc
    raise ContainerError(f"mounts under {path} keep coming back")
