"""The sandbox's container runtime layer (sandbox/kubelet/process.py): real namespaces, mounts, cgroups.

Needs root, mount/UTS/IPC/network namespaces, overlayfs, cgroups and (for propagation) FUSE; where one
is missing the test fails saying which. Every test leaves no process, mount, cgroup or netns behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sandbox.kubelet import cgroupfs
from sandbox.kubelet.process import (
    BindMount,
    ContainerProcess,
    ContainerStartError,
    ProcessSpec,
    make_shared_root,
    release_shared_root,
)
from sandbox.kubelet.shim import STAGE, mount_points
from tests.support.fuse import fuse_support

PATH = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
PY = sys.executable
SLEEP = ["sleep", "300"]
REPO = Path(__file__).resolve().parents[1]

FUSE_FS = """
import asyncio, errno, signal, stat, sys
import pyfuse3, pyfuse3.asyncio
DATA = b"hello from the fuse container\\n"
class FS(pyfuse3.Operations):
    def attr(self, inode):
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.entry_timeout, a.attr_timeout = inode, 0, 0
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_size = stat.S_IFDIR | 0o755, 0
        else:
            a.st_mode, a.st_size = stat.S_IFREG | 0o444, len(DATA)
        return a
    async def getattr(self, inode, ctx=None):
        return self.attr(inode)
    async def lookup(self, parent, name, ctx=None):
        if name != b"hello.txt":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attr(2)
    async def opendir(self, inode, ctx):
        return inode
    async def readdir(self, fh, start, token):
        if start == 0:
            pyfuse3.readdir_reply(token, b"hello.txt", self.attr(2), 1)
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)
    async def read(self, fh, off, size):
        return DATA[off:off + size]
async def main():
    pyfuse3.asyncio.enable()
    pyfuse3.init(FS(), sys.argv[1], {"fsname=eddy-b1-test", "ro"})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    task = loop.create_task(pyfuse3.main())
    await stop.wait()
    pyfuse3.terminate()
    await task
    pyfuse3.close(unmount=True)
asyncio.run(main())
"""


def require_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.fail("the container runtime needs root (mount namespaces, overlayfs, cgroups)")
    for ns in ("mnt", "uts", "ipc", "net"):
        if not os.path.exists(f"/proc/self/ns/{ns}"):
            pytest.fail(f"this kernel has no {ns} namespaces (/proc/self/ns/{ns} is missing)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        pytest.fail("overlayfs is not available (no 'overlay' in /proc/filesystems)")


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def read(path: str | Path) -> str:
    with open(path) as f:
        return f.read()


def rewrite_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as f:
        f.write(text)
        f.truncate()


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _processes_mentioning(needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def _group_members(pgid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                    found.add(int(entry))
    return found


def host_mounts_mentioning(*needles: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if any(n in line for n in needles)]


class Box:
    """Starts containers under one tmp dir and tears everything down, also when a test fails."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.containers: list[ContainerProcess] = []
        self.shared_roots: list[Path] = []
        self.netns: list[str] = []

    def spec(self, argv: list[str], name: str = "c", **kw: object) -> ProcessSpec:
        return ProcessSpec(argv=argv, env=dict(PATH), log_path=self.tmp / f"{name}.log", **kw)  # type: ignore[arg-type]

    async def start(self, spec: ProcessSpec) -> ContainerProcess:
        c = await ContainerProcess.start(spec, self.tmp / "state" / uuid.uuid4().hex[:8])
        self.containers.append(c)
        return c

    def log(self, name: str = "c") -> str:
        return (self.tmp / f"{name}.log").read_text()

    async def teardown(self) -> None:
        """Stop and clean everything (each step even when an earlier one failed), then check."""
        errors: list[BaseException] = []
        for c in self.containers:
            try:
                await c.stop(0)
                await c.cleanup()
            except Exception as exc:
                errors.append(exc)
        for root in self.shared_roots:
            try:
                await asyncio.to_thread(release_shared_root, root)
            except Exception as exc:
                errors.append(exc)
        for name in self.netns:
            with contextlib.suppress(subprocess.CalledProcessError):
                await asyncio.to_thread(run, "ip", "netns", "del", name)
        if errors:
            raise errors[0]
        for c in self.containers:
            assert not any(p.exists() for p in c.cgroups.paths), "a cgroup was left behind"
            assert not c.state_dir.exists(), "state was left behind"
            assert not exists(f"/proc/{c.pid}"), f"process {c.pid} is still alive"
        assert host_mounts_mentioning(str(self.tmp), STAGE) == [], "mounts were left behind"


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    require_namespaces()
    b = Box(tmp_path)
    try:
        yield b
    finally:
        await b.teardown()


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_user_env_cwd_and_hostname(box: Box) -> None:
    script = ('id -u; id -g; id -G; pwd; echo "$GREETING"; hostname; touch /tmp/ok && echo tmp-writable; '
              "cat /etc/fuse.conf")
    spec = box.spec(["sh", "-c", script], uid=1000, gid=1000, groups=(1000, 2000), cwd="/work",
                    hostname="pod-a", image_files=(("/etc/fuse.conf", "user_allow_other\n"),))
    spec = ProcessSpec(**{**spec.__dict__, "env": {**PATH, "GREETING": "hello there"}})
    c = await box.start(spec)
    assert await c.wait() == 0
    assert box.log().split("\n")[:8] == ["1000", "1000", "1000 2000", "/work", "hello there", "pod-a",
                                         "tmp-writable", "user_allow_other"]
    assert "user_allow_other" not in read("/etc/fuse.conf").splitlines(), "the host's file must stay as it is"
    assert os.uname().nodename != "pod-a"
    # root, and a non-root user running the venv's interpreter (under /root/.pyenv, made searchable)
    root = await box.start(box.spec(["sh", "-c", "id -u; mkdir -p /newdir/x && echo made"], name="root"))
    assert await root.wait() == 0
    assert box.log("root").split() == ["0", "made"]
    assert not exists("/newdir"), "the container's writes must stay in its overlay"
    argv = [PY, "-c", "import os; print(os.getuid())"]
    py = await box.start(box.spec(argv, name="py", uid=1000, gid=1000))
    assert await py.wait() == 0, box.log("py")
    assert box.log("py").strip() == "1000"


async def test_read_only_mounts_and_root(box: Box) -> None:
    ro, rw = box.tmp / "ro", box.tmp / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("data")
    script = ("cat /ro/f; echo x > /ro/f || echo ro-refused; echo y > /rw/g && echo rw-ok; "
              "echo z > /etc/eddy-test || echo root-refused; echo t > /tmp/t && echo tmp-ok; "
              "echo s > /scratch/s && grep ' /scratch ' /proc/self/mountinfo")
    c = await box.start(box.spec(["sh", "-c", script], read_only_root=True, mounts=(
        BindMount(ro, "/ro", read_only=True), BindMount(rw, "/rw"),
        BindMount(Path("/nonexistent"), "/scratch", tmpfs=True, size_bytes=1 << 20))))
    assert await c.wait() == 0
    log = box.log()
    assert "Read-only file system" in log
    for word in ("data", "ro-refused", "rw-ok", "root-refused", "tmp-ok", "tmpfs rw,size=1024k"):
        assert word in log, log
    assert (ro / "f").read_text() == "data"
    assert (rw / "g").read_text() == "y\n"


MOUNT_PROBE = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
               "r = libc.mount(b'none', b'/mnt', b'tmpfs', 0, None); print(r, ctypes.get_errno())")


async def test_non_privileged_root_cannot_mount(box: Box) -> None:
    c = await box.start(box.spec([PY, "-c", MOUNT_PROBE], name="plain"))
    assert await c.wait() == 0
    assert box.log("plain").split() == ["-1", "1"], "expected EPERM (1) from mount(2)"
    grep = "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"
    c = await box.start(box.spec(["sh", "-c", grep], name="caps", cap_add=("NET_ADMIN",),
                                 cap_drop=("CAP_KILL",), no_new_privs=True))
    assert await c.wait() == 0
    fields = box.log("caps").split()
    assert fields[2:] == ["NoNewPrivs:", "1"]
    eff = int(fields[1], 16)
    assert eff & (1 << 12) and not eff & (1 << 5) and not eff & (1 << 21)  # NET_ADMIN, KILL, SYS_ADMIN
    c = await box.start(box.spec([PY, "-c", MOUNT_PROBE], name="privileged", privileged=True))
    assert await c.wait() == 0
    assert box.log("privileged").split() == ["0", "0"]
    assert "/mnt " not in "".join(host_mounts_mentioning(" /mnt "))


async def test_fuse_mount_propagation(box: Box) -> None:
    support = fuse_support()
    if not support:
        pytest.fail(f"FUSE is needed for mountPropagation: {support.reason}")
    root = box.tmp / "kubelet"
    make_shared_root(root)
    box.shared_roots.append(root)
    make_shared_root(root)  # idempotent
    volume = root / "pods" / "p1" / "volumes" / "shared"
    (volume / "fuse").mkdir(parents=True)
    # readers first, so the FUSE mount can only reach them by propagation
    slave = await box.start(box.spec(SLEEP, name="slave", mounts=(
        BindMount(volume, "/shared", propagation="HostToContainer"),)))
    private = await box.start(box.spec(SLEEP, name="private", mounts=(BindMount(volume, "/shared"),)))
    fuse = await box.start(box.spec([PY, "-c", FUSE_FS, "/shared/fuse"], name="fuse", privileged=True,
                                    mounts=(BindMount(volume, "/shared", propagation="Bidirectional"),)))
    hello = volume / "fuse" / "hello.txt"
    await wait_for(hello.exists, "the FUSE mount to reach the host (Bidirectional)")
    assert hello.read_text() == "hello from the fuse container\n"
    # the host received the FUSE mount and nothing of the containers' roots
    assert host_mounts_mentioning(STAGE) == []
    points = [line.split()[4] for line in host_mounts_mentioning(str(root))]
    assert points == [str(root), str(volume / "fuse")]
    seen = await slave.exec(["cat", "/shared/fuse/hello.txt"])
    assert (seen.returncode, seen.stdout) == (0, b"hello from the fuse container\n"), seen
    unseen = await private.exec(["ls", "-A", "/shared/fuse"])
    assert (unseen.returncode, unseen.stdout) == (0, b""), unseen
    assert await fuse.stop(5) == 0, box.log("fuse")
    await wait_for(lambda: not hello.exists(), "the FUSE unmount to propagate")


async def test_exec_in_container_view(box: Box) -> None:
    name = f"eddy-b1-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(run, "ip", "netns", "add", name)
    box.netns.append(name)
    hosts = box.tmp / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    script = "echo inside > /tmp/marker; exec sleep 300"
    c = await box.start(box.spec(["sh", "-c", script], uid=1000, gid=1000, hostname="exec-pod",
                                 netns=f"/run/netns/{name}", cwd="/tmp", hosts_file=hosts))
    await wait_for(lambda: c.returncode is None and box.log() == "" and _has_child_sleep(c.pid), "start")
    r = await c.exec(["sh", "-c", "id -u; pwd; hostname; cat /tmp/marker; ls /sys/class/net"])
    assert r.returncode == 0, r
    assert r.stdout.decode().split() == ["1000", "/tmp", "exec-pod", "inside", "lo"]
    assert not exists("/tmp/marker")
    assert read(f"/proc/{c.pid}/root/tmp/marker") == "inside\n"  # pivot_root: /proc/<pid>/root is its root
    rewrite_in_place(hosts, "10.244.0.9 web\n")  # as ClusterDns does: the bind pins the inode
    r = await c.exec(["cat", "/etc/hosts"])
    assert r.stdout == b"10.244.0.9 web\n", r
    r = await c.exec(["id", "-u"], uid=0)
    assert r.stdout == b"0\n"
    r = await c.exec(["cat"], stdin=b"piped bytes")
    assert r.stdout == b"piped bytes"
    r = await c.exec(["no-such-binary"])
    assert r.returncode == 127 and b"executable not found" in r.stderr, r
    r = await c.exec(["sh", "-c", "exit 3"])
    assert r.returncode == 3
    marker = f"30.{uuid.uuid4().int % 10**9}"
    with pytest.raises(TimeoutError):
        await c.exec(["sleep", marker], timeout=0.3)
    assert _processes_mentioning(marker) == [], "the timed-out exec was not killed"


def _has_child_sleep(pid: int) -> bool:
    return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")


async def test_stop_grace_then_sigkill(box: Box) -> None:
    out = box.tmp / "out"
    out.mkdir()
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "open('/out/ready', 'w').close(); time.sleep(300)")
    script = f"sleep 300 & exec {PY} -c \"{stubborn}\""
    c = await box.start(box.spec(["sh", "-c", script], mounts=(BindMount(out, "/out"),)))
    await wait_for((out / "ready").exists, "the container to ignore SIGTERM")
    await wait_for(lambda: len(_group_members(c.pid)) == 2, "the container's two processes")
    (child,) = _group_members(c.pid) - {c.pid}
    began = time.monotonic()
    assert await c.stop(0.5) == 128 + signal.SIGKILL
    assert time.monotonic() - began >= 0.5
    await wait_for(lambda: not exists(f"/proc/{child}"), "its child to be killed with it")
    polite = await box.start(box.spec(SLEEP, name="polite"))
    began = time.monotonic()
    assert await polite.stop(10) == 128 + signal.SIGTERM
    assert time.monotonic() - began < 5


async def check_cgroups(tmp: Path) -> Path:
    """cpu/memory limits land in the container's cgroups, and stop kills a daemon that left the group.
    Returns where the hierarchies were (cgroupfs.hierarchy_root)."""
    box = Box(tmp)
    try:
        return await _check_cgroups(box)
    finally:
        await box.teardown()


async def _check_cgroups(box: Box) -> Path:
    out = box.tmp / "out"
    out.mkdir()
    script = "setsid sleep 300 & echo $! > /out/daemon; exec sleep 300"
    c = await box.start(box.spec(["sh", "-c", script], cpu_limit_millis=500, memory_limit_bytes=64 << 20,
                                 mounts=(BindMount(out, "/out"),)))
    by_kind = {p.parent.parent.name: p for p in c.cgroups.paths}  # <root>/<hierarchy>/eddy-sandbox/<id>
    if c.cgroups.unified:
        (group,) = c.cgroups.paths
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        assert int((group / "memory.max").read_text()) == 64 << 20
    else:
        assert int((by_kind["cpu"] / "cpu.cfs_quota_us").read_text()) == 50000
        assert int((by_kind["cpu"] / "cpu.cfs_period_us").read_text()) == 100000
        assert int((by_kind["memory"] / "memory.limit_in_bytes").read_text()) == 64 << 20
    for group in c.cgroups.paths:
        assert c.pid in {int(p) for p in (group / "cgroup.procs").read_text().split()}
    await wait_for(lambda: exists(out / "daemon") and read(out / "daemon").endswith("\n"), "the daemon's pid")
    daemon = int(read(out / "daemon"))
    # it escapes the process group (once setsid(1) ran), not the cgroup
    await wait_for(lambda: os.getpgid(daemon) != c.pid, "the daemon to leave the process group")
    await c.stop(1)
    await wait_for(lambda: not exists(f"/proc/{daemon}"), "the daemon to be killed with the cgroup")
    await c.cleanup()
    await c.cleanup()  # idempotent
    assert not any(p.exists() for p in c.cgroups.paths)
    return c.cgroups.root


async def test_cgroup_limits_and_whole_group_kill(tmp_path: Path) -> None:
    require_namespaces()
    await check_cgroups(tmp_path)


# Run in a private mount namespace where no cgroups are mounted: none at /sys/fs/cgroup (hidden under an
# empty tmpfs, as in a chroot whose /sys was bound without its submounts) and none at the runner's own
# place (unmounted there if an earlier runner of this namespace left them), then `then`.
WITHOUT_CGROUPS = """
import asyncio, os, sys
from pathlib import Path
from sandbox.kubelet import cgroupfs
from sandbox.kubelet.shim import MNT_DETACH, mount, private_mount_namespace, umount2
private_mount_namespace()
if cgroupfs.has_hierarchy(cgroupfs.SYSTEM_ROOT):
    mount("tmpfs", str(cgroupfs.SYSTEM_ROOT), "tmpfs", 0, "mode=755")
while cgroupfs.has_hierarchy(cgroupfs.PRIVATE_ROOT):
    umount2(str(cgroupfs.PRIVATE_ROOT), MNT_DETACH)
print("hidden", os.listdir(cgroupfs.SYSTEM_ROOT), flush=True)
"""
CHECK_CGROUPS = """
from tests.test_sandbox_process import check_cgroups
print("root", asyncio.run(check_cgroups(Path(sys.argv[1]))))
"""
# as root without CAP_SYS_ADMIN, which mounting needs (the bounding set drops it at the exec)
UNMOUNTABLE = """
os.execvp("setpriv", ["setpriv", "--inh-caps", "-all", "--bounding-set", "-sys_admin", "--",
                      sys.executable, "-c", sys.argv[2], sys.argv[1]])
"""
START_ONE = """
import asyncio, sys
from pathlib import Path
from sandbox.kubelet.process import ContainerProcess, ContainerStartError, ProcessSpec
tmp = Path(sys.argv[1])
spec = ProcessSpec(argv=["true"], env={"PATH": "/usr/bin:/bin"}, log_path=tmp / "log")
try:
    asyncio.run(ContainerProcess.start(spec, tmp / "state"))
except ContainerStartError as exc:
    print("error", exc)
print("state left", (tmp / "state").exists())
"""


async def run_python(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        PY, "-c", *args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 0, out
    return out


async def test_cgroups_mounted_by_the_runner_where_none_are(tmp_path: Path) -> None:
    """As in the fresh-Debian check's chroot: no cgroups at /sys/fs/cgroup. The runner mounts the kernel's
    hierarchies at its own private place and the limits and the whole-group kill work as on a node."""
    require_namespaces()
    out = await run_python(WITHOUT_CGROUPS + CHECK_CGROUPS, str(tmp_path))
    assert out.splitlines() == ["hidden []", f"root {cgroupfs.PRIVATE_ROOT}"], out


async def test_no_cgroups_and_none_mountable_is_a_clear_error(tmp_path: Path) -> None:
    require_namespaces()
    out = await run_python(WITHOUT_CGROUPS + UNMOUNTABLE, str(tmp_path), START_ONE)
    hidden, error, state = out.splitlines()
    assert hidden == "hidden []", out
    assert error.startswith("error cannot set up the container's cgroups: no cgroups are mounted at "
                            f"{cgroupfs.SYSTEM_ROOT}, and mounting the kernel's "), out
    where = cgroupfs.PRIVATE_ROOT
    assert re.search(f"at {where} failed: \\[Errno 1\\] mount cgroup2? on {where}: Operation not permitted$",
                     error), out
    assert state == "state left False", out


async def test_start_failures_are_clear(box: Box) -> None:
    with pytest.raises(ContainerStartError, match=r"executable not found in PATH .*: no-such-command"):
        await box.start(box.spec(["no-such-command"]))
    with pytest.raises(ContainerStartError, match="does not exist"):
        await box.start(box.spec(SLEEP, mounts=(BindMount(box.tmp / "missing", "/m"),)))
    with pytest.raises(ContainerStartError, match="network namespace"):
        await box.start(box.spec(SLEEP, netns="/run/netns/eddy-b1-no-such-netns"))
    with pytest.raises(ContainerStartError, match="unknown capability 'NOT_A_CAP'"):
        await box.start(box.spec(SLEEP, cap_add=("NOT_A_CAP",)))
    with pytest.raises(ContainerStartError, match="mountPropagation"):
        await box.start(box.spec(SLEEP, mounts=(BindMount(box.tmp, "/x", propagation="Shared"),)))
    assert not (box.tmp / "state").exists() or not any((box.tmp / "state").iterdir())
    assert not [p for p, _ in mount_points() if p.startswith(str(box.tmp))]


async def test_privileged_non_root_fuse_through_fusermount3(box: Box) -> None:
    """Eddy's sidecar case: privileged, the image's user 65532 (known to the image's /etc/passwd), a FUSE
    mount made through the setuid fusermount3. Without allow_other only that uid may read it, as on a
    node: this is the fault the sandbox exists to show."""
    support = fuse_support()
    if not support:
        pytest.fail(f"FUSE is needed: {support.reason}")
    root = box.tmp / "kubelet"
    make_shared_root(root)
    box.shared_roots.append(root)
    volume = root / "pods" / "p2" / "volumes" / "data"
    (volume / "m").mkdir(parents=True)
    (volume / "m").chmod(0o777)  # an emptyDir is world-writable
    fuse = await box.start(box.spec(
        [PY, "-c", FUSE_FS, "/data/m"], name="fuse", privileged=True, uid=65532, gid=65532,
        users=(("eddy", 65532, 65532),), mounts=(BindMount(volume, "/data", propagation="Bidirectional"),)))
    await wait_for(lambda: str(volume / "m") in {p for p, _ in mount_points()}, "the FUSE mount")
    mine = await fuse.exec(["cat", "/data/m/hello.txt"])
    assert (mine.returncode, mine.stdout) == (0, b"hello from the fuse container\n"), mine
    as_root = await fuse.exec(["cat", "/data/m/hello.txt"], uid=0, gid=0)
    assert as_root.returncode == 1 and b"Permission denied" in as_root.stderr, as_root
    probe = f"/dev/eddy-b1-{uuid.uuid4().hex[:8]}"
    dev = await fuse.exec(["sh", "-c", f"stat -c %a /dev/fuse && touch {probe} && ls /dev/pts"], uid=0)
    assert dev.stdout.split() == [b"666", b"ptmx"], dev  # its own /dev, devices copied, a new devpts
    assert not exists(probe)
    passwd = await fuse.exec(["grep", "^eddy:", "/etc/passwd"])
    assert passwd.stdout == b"eddy:x:65532:65532::/nonexistent:/usr/sbin/nologin\n"
    assert await fuse.stop(5) == 0, box.log("fuse")


async def test_cancelled_start_leaves_nothing(box: Box) -> None:
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2):
        marker = f"300.{uuid.uuid4().int % 10**9}"
        state = box.tmp / "cancelled" / marker
        task = asyncio.ensure_future(ContainerProcess.start(box.spec(["sleep", marker]), state))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            box.containers.append(await task)  # it had started already: teardown stops it
        if task.cancelled():
            await asyncio.sleep(0.05)
            assert _processes_mentioning(marker) == [], f"a process survived a cancel after {delay}s"
            assert not (state / "container.json").exists() or _processes_mentioning(str(state)) == []


IN_CHROOT = """
import asyncio, os, sys
from pathlib import Path
from sandbox.kubelet.process import BindMount, ContainerProcess, ProcessSpec
from sandbox.kubelet.process import make_shared_root, release_shared_root
from sandbox.kubelet.shim import STAGE
def limits(cgroups):
    if cgroups.unified:
        (group,) = cgroups.paths
        return (group / "cpu.max").read_text().split()[0], (group / "memory.max").read_text().strip()
    kind = {path.parent.parent.name: path for path in cgroups.paths}
    return ((kind["cpu"] / "cpu.cfs_quota_us").read_text().strip(),
            (kind["memory"] / "memory.limit_in_bytes").read_text().strip())
async def main():
    root = Path("/kroot")
    make_shared_root(root)
    (root / "vol" / "t").mkdir(parents=True)
    try:
        spec = ProcessSpec(
            argv=["/bin/sh", "-c", "mount -t tmpfs -o size=1m t /v/t && echo > /v/t/x && exec sleep 30"],
            env={"PATH": "/usr/bin:/bin"}, log_path=Path("/log"), privileged=True,
            cpu_limit_millis=500, memory_limit_bytes=64 << 20,
            mounts=(BindMount(Path("/usr"), "/usr", read_only=True),
                    BindMount(root / "vol", "/v", propagation="Bidirectional")))
        c = await ContainerProcess.start(spec, Path("/state"))
        for _ in range(100):
            if (root / "vol" / "t" / "x").exists():
                break
            await asyncio.sleep(0.05)
        print("propagated", (root / "vol" / "t" / "x").exists())
        print("cgroups", c.cgroups.root, *limits(c.cgroups))
        print("stopped", await c.stop(2))
        await c.cleanup()
    finally:
        release_shared_root(root)
    points = [line.split()[4] for line in open("/proc/self/mountinfo")]
    print("left", [p for p in points if p.startswith("/kroot") or p == STAGE or p.startswith(STAGE + "/")])
asyncio.run(main())
"""
# `unshare -m --propagation private`, also where / is not a mount point (a chroot): see the shim
IN_PRIVATE_MOUNTS = "import os, sys; from sandbox.kubelet.shim import private_mount_namespace as p; p(); " \
    "os.execvp(sys.argv[1], sys.argv[1:])"


async def test_runs_inside_a_chroot(box: Box) -> None:
    """As in the fresh-Debian check: the runner itself in a chroot, whose / is not a mount point
    (pivot_root refuses that unless the shim re-roots first), and whose /sys is bound without its
    submounts (no cgroups at /sys/fs/cgroup: the runner mounts its own)."""
    chroot = box.tmp / "chroot"
    repo = REPO
    binds = ["/usr", "/etc", str(repo), sys.base_prefix, "/dev"]
    for name in ("proc", "sys", "run", "tmp", *(b.lstrip("/") for b in binds)):
        (chroot / name).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (chroot / link).symlink_to(f"usr/{link}")
    setup = " && ".join(
        [f"mount --bind {b} {chroot}{b}" for b in binds]
        + [f"mount -t proc proc {chroot}/proc", f"mount --bind /sys {chroot}/sys",
           f"cd {repo} && PYTHONPATH={repo} chroot {chroot} {sys.executable} -c '{IN_CHROOT}'"])
    proc = await asyncio.create_subprocess_exec(
        PY, "-c", IN_PRIVATE_MOUNTS, "sh", "-c", setup, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 0, out
    assert out.split("\n")[:4] == ["propagated True", f"cgroups {cgroupfs.PRIVATE_ROOT} 50000 {64 << 20}",
                                   "stopped 143", "left []"], out
