"""A container's first process: builds its namespaces and root, then execs the container's command.

    python -I -S shim.py start|exec PLAN.json ERRFD

`process.py` runs this file by path with `-I -S`, so it imports the standard library only: no site
packages and no `sandbox.kubelet/__init__` (whatever the runner puts there). It does what runc does for
one container, through ctypes on libc, because Python 3.11 has no `os.unshare`/`os.setns`:

- `start`: join the pod's network namespace, unshare mount+UTS+IPC, set the hostname, build a root
  (overlayfs over the host's `/`, upper dir in a tmpfs, /proc, /sys, /dev, /tmp), pivot_root into it,
  bind the volumes with their mountPropagation, drop capabilities, switch user, exec.
- `exec`: join a running container's cgroups and namespaces (`/proc/<pid>/ns/*`), chroot to
  `/proc/<pid>/root`, then the same user/capability steps and exec (what `kubectl exec` does).

ERRFD is the write end of a pipe, close-on-exec here: it closes silently when the exec succeeds, and
carries a one-line reason when any step fails (the caller turns it into ContainerStartError).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import signal
import socket
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 18, 1 << 19, 1 << 20
MNT_DETACH = 2
PROPAGATION = {"None": MS_PRIVATE, "HostToContainer": MS_SLAVE, "Bidirectional": MS_SHARED}

PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

# Linux capability numbers, in order (include/uapi/linux/capability.h).
CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
]
# What Docker/containerd give a non-privileged container.
DEFAULT_CAPABILITIES = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
    "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})

# Each container's root is built on a tmpfs mounted over this (host) directory inside the container's
# own mount namespace. It lies outside the kubelet root on purpose: the mount holding it is made private
# in the container's namespace, which must not happen to the rshared kubelet root (volume sources).
STAGE = "/run/eddy-sandbox"
OLD_ROOT = "/.eddy-oldroot"
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# what every container's /dev gets of its own, never copied from the host's
_DEV_OWN = frozenset({"pts", "shm", "mqueue", "hugepages", "ptmx", "fd", "stdin", "stdout", "stderr"})
_PROC_READONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_step = "starting"


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {source} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg, arg3, 0, 0), f"prctl({option})")


def _setns(fd: int, nstype: int, what: str) -> None:
    _check(_libc.setns(fd, nstype), f"setns {what}")


def _pivot_root(new_root: str, put_old: str) -> None:
    number = _SYS_PIVOT_ROOT[platform.machine()]
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), f"pivot_root {new_root}")


def mount_points() -> list[tuple[str, str]]:
    """(mount point, optional fields such as "shared:3") for each mount in this namespace, in order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, " ".join(fields[6:])))
    return out


def _containing_mount(path: str) -> tuple[str, str]:
    best = ("/", "")
    for point, optional in mount_points():
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, optional)
    return best


def _touch(path: str, directory: bool) -> None:
    if directory:
        os.makedirs(path, exist_ok=True)
    elif not os.path.lexists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            pass


def _bind(source: str, target: str, *, read_only: bool, recursive: bool = True) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _copy_host_devices(dev: str) -> None:
    """Privileged: every device node of the host's /dev, made anew in the container's /dev (as Docker
    does), so the container never writes into the host's /dev. /dev/fuse gets mode 0666, as a node's
    udev rule makes it (a bare devtmpfs, as on this VM, has 0600)."""
    for top, dirs, files in os.walk("/dev"):
        rel = os.path.relpath(top, "/dev")
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in _DEV_OWN]
            files = [f for f in files if f not in _DEV_OWN]
        for name in (*dirs, *files):
            source, target = os.path.join(top, name), os.path.normpath(os.path.join(dev, rel, name))
            st = os.lstat(source)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(target, stat.S_IMODE(st.st_mode))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                os.mknod(target, st.st_mode, st.st_rdev)
                os.chown(target, st.st_uid, st.st_gid)
                os.chmod(target, 0o666 if target == dev + "/fuse" else stat.S_IMODE(st.st_mode))


def _mount_dev(root: str, privileged: bool) -> None:
    dev = root + "/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    if privileged:
        _copy_host_devices(dev)
    else:
        for name in _DEVICES:
            if os.path.exists(f"/dev/{name}"):
                _touch(f"{dev}/{name}", directory=False)
                _bind(f"/dev/{name}", f"{dev}/{name}", read_only=False, recursive=False)
    os.makedirs(dev + "/pts")
    mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", dev + "/ptmx")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(dev + "/shm")
    mount("shm", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k")


def _ensure_root_is_mount() -> None:
    """In a chroot (e.g. the fresh-Debian check) "/" is a plain directory, which pivot_root refuses and
    whose propagation cannot be set: re-root this process onto a recursive bind of it (in its own mount
    namespace), which is a mount point, as runc binds a rootfs onto itself. The bind's submounts keep
    their peer groups; the bind itself is made on the chroot's own mount, which must not be shared (it
    is private where the fresh-Debian check runs), or the host would receive a copy of it."""
    if any(point == "/" for point, _ in mount_points()):
        return
    os.makedirs(STAGE, mode=0o700, exist_ok=True)
    mount("/", STAGE, None, MS_BIND | MS_REC)
    os.chdir(STAGE)
    os.chroot(".")
    os.chdir("/")


def private_mount_namespace() -> None:
    """Move this (single-threaded) process into a new mount namespace whose mounts are all private:
    `unshare -m --propagation private`, which fails with EINVAL in a chroot ("/" is no mount point), but
    re-rooted first there as the shim does. Tests use it to mount things that must stay their own."""
    cwd = os.getcwd()
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    _ensure_root_is_mount()
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.chdir(cwd)


def _build_root(plan: dict[str, Any]) -> str:
    """The container's root at STAGE/root, with its system mounts; returns its path."""
    global _step
    _step = "making the container's mounts private"
    _ensure_root_is_mount()
    for point in {"/", _containing_mount(STAGE)[0]}:
        mount(None, point, None, MS_PRIVATE)
    _step = "mounting the root's tmpfs and overlay"
    mount("tmpfs", STAGE, "tmpfs", 0, "mode=700")
    for name in ("upper", "work", "root"):
        os.mkdir(f"{STAGE}/{name}")
    root = f"{STAGE}/root"
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={STAGE}/upper,workdir={STAGE}/work")
    # The venv's interpreter may live under /root/.pyenv: /root must be searchable for non-root users
    # (a root file system without /root, such as a test's minimal chroot, has nothing to open up).
    if os.path.isdir(root + "/root"):
        os.chmod(root + "/root", 0o755)
    privileged = bool(plan["privileged"])
    _step = "mounting /proc"
    _bind("/proc", root + "/proc", read_only=False)
    if not privileged:
        for path in _PROC_READONLY:
            if os.path.exists(path):
                _bind(root + path, root + path, read_only=True, recursive=False)
    _step = "mounting /sys"
    if privileged:
        _bind("/sys", root + "/sys", read_only=False)
    else:
        mount("sysfs", root + "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _step = "mounting /dev"
    _mount_dev(root, privileged)
    _step = "mounting /tmp"
    os.makedirs(root + "/tmp", exist_ok=True)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    # Copies of host mounts that are shared (e.g. /dev on systemd hosts) must only receive, never send.
    mount(None, root, None, MS_REC | MS_SLAVE)
    return root


def _mount_volumes(plan: dict[str, Any]) -> None:
    """Bind each volume from the old root (sources under the rshared kubelet root keep their peer group,
    so Bidirectional -> rshared sends mounts back to the host, HostToContainer -> rslave only receives,
    None -> rprivate neither). Runs after pivot_root, so targets resolve symlinks inside the new root."""
    global _step
    mounts = list(plan["mounts"])
    if plan["hosts_file"]:
        mounts.append({"source": plan["hosts_file"], "target": "/etc/hosts", "read_only": False,
                       "propagation": "None", "tmpfs": False, "size_bytes": None})
    for m in sorted(mounts, key=lambda m: len(os.path.normpath(m["target"]).split("/"))):
        target = m["target"]
        if m["tmpfs"]:
            _step = f"mounting a tmpfs at {target}"
            _touch(target, directory=True)
            size = f",size={m['size_bytes']}" if m["size_bytes"] else ""
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" + size)
            if m["read_only"]:
                mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        else:
            _step = f"mounting {m['source']} at {target}"
            source = OLD_ROOT + m["source"]
            if not os.path.exists(source):
                raise FileNotFoundError(f"mount source {m['source']} does not exist")
            _touch(target, directory=os.path.isdir(source))
            _bind(source, target, read_only=bool(m["read_only"]))
        mount(None, target, None, MS_REC | PROPAGATION[m["propagation"]])


def _add_users(users: list[list[Any]]) -> None:
    """The image's own users (its `useradd`), added to the container's /etc/passwd and /etc/group."""
    global _step
    for name, uid, gid in users:
        _step = f"adding user {name} ({uid}:{gid}) to /etc/passwd"
        for path, key, line in (("/etc/passwd", uid, f"{name}:x:{uid}:{gid}::/nonexistent:/usr/sbin/nologin"),
                                ("/etc/group", gid, f"{name}:x:{gid}:")):
            with open(path, "a+") as f:
                f.seek(0)
                if not any(row.split(":")[2:3] == [str(key)] for row in f):
                    f.write(line + "\n")


def _setup_container(plan: dict[str, Any]) -> None:
    global _step
    if plan["netns"]:
        _step = f"joining network namespace {plan['netns']}"
        fd = os.open(plan["netns"], os.O_RDONLY | os.O_CLOEXEC)
        _setns(fd, CLONE_NEWNET, plan["netns"])
        os.close(fd)
    _step = "unsharing mount, UTS and IPC namespaces"
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    if plan["hostname"]:
        _step = f"setting hostname {plan['hostname']!r}"
        socket.sethostname(plan["hostname"])
    root = _build_root(plan)
    _step = "pivot_root into the container's root"
    os.mkdir(root + OLD_ROOT)
    _pivot_root(root, root + OLD_ROOT)
    os.chdir("/")
    _mount_volumes(plan)
    _step = "detaching the host's root"
    # rslave first, so unmounting the old tree cannot propagate unmounts to the host (as runc does).
    mount(None, OLD_ROOT, None, MS_REC | MS_SLAVE)
    umount2(OLD_ROOT, MNT_DETACH)
    os.rmdir(OLD_ROOT)
    _add_users(plan.get("users", []))
    for path, text in plan.get("files", []):
        _step = f"writing image file {path}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    _step = f"creating working directory {plan['cwd']}"
    os.makedirs(plan["cwd"], exist_ok=True)
    if plan["read_only_root"]:
        _step = "remounting the root read-only"
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _enter_container(plan: dict[str, Any]) -> None:
    """Join the namespaces and root of the running container `plan["pid"]` (setns + chroot)."""
    global _step
    pid = plan["pid"]
    _step = f"opening the namespaces of container process {pid}"
    root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds = [(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag, name)
           for name, flag in (("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("net", CLONE_NEWNET),
                              ("mnt", CLONE_NEWNS))]
    for fd, flag, name in fds:
        _setns(fd, flag, name)
        os.close(fd)
    os.fchdir(root_fd)
    os.chroot(".")
    os.close(root_fd)


def _restrict_capabilities(keep: set[int]) -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    with open("/proc/self/status") as f:
        inheritable = next(int(line.split()[1], 16) for line in f if line.startswith("CapInh:"))
    if inheritable & ~sum(1 << c for c in keep):
        raise PermissionError("the runner's inheritable capabilities are not empty")


def _become_and_exec(plan: dict[str, Any], parent: int) -> None:
    global _step
    _step = "setting capabilities"
    if plan["keep_caps"] is not None:
        _restrict_capabilities(set(plan["keep_caps"]))
    if plan["no_new_privs"]:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _step = f"switching to uid {plan['uid']} gid {plan['gid']}"
    os.setgroups(plan["groups"])
    os.setgid(plan["gid"])
    os.setuid(plan["uid"])
    _step = f"changing to working directory {plan['cwd']}"
    os.chdir(plan["cwd"])
    # Dies with the runner (set after setuid, which clears it); exec of a setuid binary clears it too.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        raise ChildProcessError("the runner exited during start")
    argv, env = plan["argv"], plan["env"]
    _step = f"exec {argv[0]}"
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        where = "" if "/" in argv[0] else f" in PATH {env.get('PATH', os.defpath)}"
        raise FileNotFoundError(f"executable not found{where}: {argv[0]}") from None


def main(args: list[str]) -> int:
    mode, plan_path, err_fd = args[0], args[1], int(args[2])
    os.set_inheritable(err_fd, False)
    parent = os.getppid()
    try:
        with open(plan_path) as f:
            plan = json.load(f)
        for path in plan["cgroup_procs"]:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        if mode == "start":
            _setup_container(plan)
        else:
            _enter_container(plan)
        _become_and_exec(plan, parent)
        return 0  # not reached: exec replaced this process
    except BaseException as exc:  # every failure must reach the runner as one line
        detail = str(exc)
        if isinstance(exc, OSError) and exc.strerror:
            detail = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        os.write(err_fd, f"{_step}: {detail or type(exc).__name__}".encode())
        return 127 if isinstance(exc, FileNotFoundError) and _step.startswith("exec ") else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
