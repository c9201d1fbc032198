"""The sandbox's kubelet (`sandbox.kubelet.PodRunner`) against a real API server, with real processes,
namespaces and mounts: mount propagation through FUSE, users, native and classic sidecars, the
kubelet's `..data` swap, and deletion that leaves nothing behind.

Needs root, mount namespaces and FUSE: where they are missing the tests fail saying so (no skips).
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from eddy.kube import CONFIGMAPS, PODS, Kube
from sandbox.apiserver import KubeApiServer
from sandbox.kubelet.mounts import mounts_under
from sandbox.kubelet.runner import PodRunner
from tests.support.fuse import fuse_support

Obj = dict[str, Any]
NS = "default"
BUSYBOX = "busybox:1.36"  # not an image here: the spec's command runs with this machine's binaries


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the pod runner tests need root (mount namespaces, bind mounts, setuid)")


@dataclass(frozen=True)
class HostAddress:
    ip: str
    netns: str


class HostNetwork:
    """Stand-in PodNetwork: every pod shares the host's network namespace at 127.0.0.1."""

    gateway = "127.0.0.1"

    def __init__(self) -> None:
        self.attached: set[str] = set()

    async def attach(self, pod_uid: str) -> HostAddress:
        self.attached.add(pod_uid)
        return HostAddress("127.0.0.1", "")

    async def detach(self, pod_uid: str) -> None:
        self.attached.discard(pod_uid)


class HostsFileDns:
    """Stand-in ClusterDns: a plain hosts file per pod."""

    def __init__(self) -> None:
        self.registered: set[str] = set()

    def register(self, pod: Obj, ip: str, hosts_path: Path) -> None:
        name = pod["metadata"]["name"]
        hosts_path.write_text(f"127.0.0.1\tlocalhost\n{ip}\t{name}\n")
        self.registered.add(pod["metadata"]["uid"])

    def unregister(self, pod_uid: str) -> None:
        self.registered.discard(pod_uid)


@dataclass
class Bed:
    api: KubeApiServer
    kube: Kube
    runner: PodRunner
    network: HostNetwork
    dns: HostsFileDns
    root: Path


@pytest_asyncio.fixture
async def bed(tmp_path: Path) -> AsyncIterator[Bed]:
    require_root()
    api = await KubeApiServer().start()
    kube = await Kube.connect(url=api.url)
    network, dns = HostNetwork(), HostsFileDns()
    root = tmp_path / "kubelet"
    runner = PodRunner(kube, network, dns, root=root, api_server_host="127.0.0.1",
                       api_server_port=int(api.url.rsplit(":", 1)[1]))
    await runner.start()
    try:
        yield Bed(api, kube, runner, network, dns, root)
    finally:
        try:
            await runner.stop()
            assert mounts_under(root) == [], "PodRunner.stop() left mounts behind"
            assert not network.attached and not dns.registered
        finally:
            await kube.close()
            await api.stop()


def pod(name: str, containers: list[Obj], **spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": containers, "terminationGracePeriodSeconds": 2, **spec}}


def sh(name: str, script: str, **extra: Any) -> Obj:
    return {"name": name, "image": BUSYBOX, "command": ["/bin/sh", "-c", script], **extra}


def stand_in(name: str, **extra: Any) -> Obj:
    """A container of some image with no command: it stays up until stopped."""
    return {"name": name, "image": BUSYBOX, **extra}


async def eventually(bed: Bed, name: str, check: Callable[[Obj], bool], timeout: float = 20.0) -> Obj:
    """Poll the pod until `check(pod)` holds; fails with the pod's last status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Obj = {}
    while loop.time() < deadline:
        got = await bed.kube.get_or_none(PODS, name, NS)
        if got is not None:
            last = got
            if check(got):
                return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"pod {name} did not get there in {timeout}s; status: {last.get('status')}")


def cstatus(p: Obj, name: str) -> Obj:
    status = p.get("status") or {}
    for c in [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]:
        if c["name"] == name:
            return dict(c)
    return {}


def running(p: Obj, *names: str) -> bool:
    return all("running" in cstatus(p, n).get("state", {}) for n in names)


def phase(p: Obj) -> str:
    return str((p.get("status") or {}).get("phase", ""))


async def exec_text(bed: Bed, name: str, container: str, *argv: str) -> tuple[int, str]:
    result = await bed.runner.exec(NS, name, container, list(argv), timeout=10)
    return result.returncode, (result.stdout + result.stderr).decode()


# ---------------------------------------------------------------------------------------------- FUSE
FUSE_FS = textwrap.dedent('''
    """A one-file FUSE file system: /hello holds "hello from fuse"."""
    import errno, os, stat, sys, signal
    import pyfuse3, trio

    DATA = b"hello from fuse\\n"

    class Fs(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            attr = pyfuse3.EntryAttributes()
            if inode == pyfuse3.ROOT_INODE:
                attr.st_mode, attr.st_size = stat.S_IFDIR | 0o755, 0
            elif inode == 2:
                attr.st_mode, attr.st_size = stat.S_IFREG | 0o444, len(DATA)
            else:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attr.st_ino = inode
            return attr
        async def lookup(self, parent, name, ctx=None):
            if parent != pyfuse3.ROOT_INODE or name != b"hello":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(2)
        async def opendir(self, inode, ctx):
            return inode
        async def readdir(self, fh, off, token):
            if off == 0:
                pyfuse3.readdir_reply(token, b"hello", await self.getattr(2), 1)
        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode)
        async def read(self, fh, off, size):
            return DATA[off:off + size]

    target = sys.argv[1]
    os.makedirs(target, exist_ok=True)
    pyfuse3.init(Fs(), target, {"fsname=runnertest", "allow_other", "ro"})
    signal.signal(signal.SIGTERM, lambda *a: pyfuse3.terminate())
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
''')


async def test_fuse_mount_reaches_host_to_container_but_not_none(bed: Bed) -> None:
    support = fuse_support()
    assert support.available, f"FUSE is needed for this test: {support.reason}"
    await bed.api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fusefs"},
                          "data": {"fusefs.py": FUSE_FS}}, NS)
    shared = {"name": "shared", "mountPath": "/shared"}
    probe = {"exec": {"command": ["cat", "/shared/fuse/hello"]}, "periodSeconds": 1, "failureThreshold": 30}
    spec = pod("fuse", [
        {"name": "fuse", "image": BUSYBOX, "command": [sys.executable, "/scripts/fusefs.py", "/shared/fuse"],
         "securityContext": {"privileged": True}, "startupProbe": probe,
         "volumeMounts": [{**shared, "mountPropagation": "Bidirectional"},
                          {"name": "scripts", "mountPath": "/scripts"}]},
        stand_in("h2c", volumeMounts=[{**shared, "mountPropagation": "HostToContainer"}]),
        stand_in("none", volumeMounts=[{**shared, "mountPropagation": "None"}]),
    ], volumes=[{"name": "shared", "emptyDir": {}}, {"name": "scripts", "configMap": {"name": "fusefs"}}])
    await bed.kube.create(PODS, spec, NS)
    p = await eventually(bed, "fuse", lambda p: cstatus(p, "fuse").get("started") is True
                         and running(p, "h2c", "none"))
    uid = p["metadata"]["uid"]
    host_dir = bed.root / "pods" / uid / "volumes" / "shared" / "fuse"
    assert str(host_dir) in mounts_under(bed.root), "the Bidirectional mount did not reach the host"
    assert await exec_text(bed, "fuse", "h2c", "cat", "/shared/fuse/hello") == (0, "hello from fuse\n")
    code, out = await exec_text(bed, "fuse", "none", "cat", "/shared/fuse/hello")
    assert code != 0 and "No such file" in out
    assert await exec_text(bed, "fuse", "none", "ls", "-A", "/shared/fuse") == (0, "")
    # Bidirectional needs a privileged container, as the API/kubelet say.
    await bed.kube.create(PODS, pod("unprivileged", [stand_in(
        "c", volumeMounts=[{**shared, "mountPropagation": "Bidirectional"}])],
        volumes=[{"name": "shared", "emptyDir": {}}]), NS)
    bad = await eventually(bed, "unprivileged", lambda p: cstatus(p, "c").get("state", {}).get(
        "waiting", {}).get("reason") == "CreateContainerConfigError")
    assert "privileged" in cstatus(bad, "c")["state"]["waiting"]["message"]
    await bed.kube.delete(PODS, "fuse", NS)
    await _gone(bed, "fuse", uid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _gone(bed: Bed, name: str, uid: str, timeout: float = 15.0) -> None:
    """The pod object is gone and the node holds nothing of it: no worker, mount or directory."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await bed.kube.get_or_none(PODS, name, NS) is None and uid not in bed.runner.workers:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"pod {name} still there after {timeout}s")
    assert mounts_under(bed.root / "pods" / uid) == []
    assert not (bed.root / "pods" / uid).exists()
    assert uid not in bed.network.attached and uid not in bed.dns.registered


# ---------------------------------------------------------------------------------------------- users
async def test_run_as_user_and_the_images_default_user(bed: Bed) -> None:
    eddy = "ghcr.io/eddy/eddy:0.1.0"
    spec = pod("users", [
        # Eddy's image, no command: ENTRYPOINT ["eddy"] from the Dockerfile, args replace CMD, USER 65532.
        {"name": "eddy", "image": eddy, "args": ["--help"]},
        {"name": "eddy-id", "image": eddy, "command": ["sh", "-c", "id -u; id -G"]},
        sh("explicit", "id -u; id -g; id -G", securityContext={"runAsUser": 1234, "runAsGroup": 2345}),
        sh("other-image", "id -u"),
    ], restartPolicy="Never", securityContext={"supplementalGroups": [4001], "fsGroup": 4002})
    await bed.kube.create(PODS, spec, NS)
    done = await eventually(bed, "users", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", done["status"]
    assert "usage" in bed.runner.logs(NS, "users", "eddy").lower()
    assert bed.runner.logs(NS, "users", "eddy-id").split() == ["65532", "0", "4001", "4002"]
    assert bed.runner.logs(NS, "users", "explicit").split() == ["1234", "2345", "2345", "4001", "4002"]
    assert bed.runner.logs(NS, "users", "other-image").split() == ["0"]
    # runAsNonRoot with a root user: kubelet refuses to create the container.
    await bed.kube.create(PODS, pod("nonroot", [sh("c", "true", securityContext={"runAsNonRoot": True})]),
                          NS)
    bad = await eventually(bed, "nonroot", lambda p: cstatus(p, "c").get("state", {}).get(
        "waiting", {}).get("reason") == "CreateContainerConfigError")
    assert "runAsNonRoot" in cstatus(bad, "c")["state"]["waiting"]["message"]


# ---------------------------------------------------------------------------------------------- sidecars
async def test_native_sidecar_gates_the_next_init_container_and_the_job_completes(bed: Bed) -> None:
    sidecar = sh("sidecar", "sleep 1; touch /work/ready; exec sleep 3600",
                 restartPolicy="Always", volumeMounts=[{"name": "work", "mountPath": "/work"}],
                 startupProbe={"exec": {"command": ["test", "-f", "/work/ready"]}, "periodSeconds": 1,
                               "failureThreshold": 20})
    after = sh("after", "test -f /work/ready", volumeMounts=[{"name": "work", "mountPath": "/work"}])
    main = sh("main", "sleep 0.5; echo job done")
    await bed.kube.create(PODS, pod("job", [main], initContainers=[sidecar, after], restartPolicy="Never",
                                    volumes=[{"name": "work", "emptyDir": {}}]), NS)
    done = await eventually(bed, "job", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", done["status"]
    assert cstatus(done, "after")["state"]["terminated"]["exitCode"] == 0  # it ran after the probe passed
    assert cstatus(done, "main")["state"]["terminated"]["exitCode"] == 0
    assert "terminated" in cstatus(done, "sidecar")["state"]  # stopped once the main container ended
    assert bed.runner.logs(NS, "job", "main") == "job done\n"
    conditions = {c["type"]: c for c in done["status"]["conditions"]}
    assert conditions["Initialized"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "PodCompleted"


async def test_classic_sidecar_exits_when_told_through_a_downward_api_annotation(bed: Bed) -> None:
    podinfo = [{"name": "podinfo", "mountPath": "/podinfo"}]
    sidecar = sh("sidecar", "until grep -q 'sandbox/stop=\"true\"' /podinfo/annotations; do sleep 0.2; "
                 "done; echo told to stop", volumeMounts=podinfo)
    main = sh("main", "echo working; sleep 0.5")
    spec = pod("classic", [sidecar, main], restartPolicy="Never", volumes=[
        {"name": "podinfo", "downwardAPI": {"items": [
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}])
    await bed.kube.create(PODS, spec, NS)
    p = await eventually(bed, "classic", lambda p: "terminated" in cstatus(p, "main").get("state", {}))
    assert phase(p) == "Running" and running(p, "sidecar")
    files = bed.root / "pods" / p["metadata"]["uid"] / "volumes" / "podinfo"
    assert os.readlink(files / "annotations") == "..data/annotations"
    await bed.kube.patch(PODS, "classic", {"metadata": {"annotations": {"sandbox/stop": "true"}}}, NS)
    done = await eventually(bed, "classic", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", done["status"]
    assert bed.runner.logs(NS, "classic", "sidecar") == "told to stop\n"
    assert not files.exists()  # a finished pod's volumes are cleaned up


# ---------------------------------------------------------------------------------------------- configMap
async def test_configmap_change_reaches_the_mounted_file_through_the_data_swap(bed: Bed) -> None:
    await bed.kube.create(CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"mode": "v1"}}, NS)
    spec = pod("reader", [stand_in("c", volumeMounts=[{"name": "cfg", "mountPath": "/config"}])],
               volumes=[{"name": "cfg", "configMap": {"name": "settings"}}])
    await bed.kube.create(PODS, spec, NS)
    p = await eventually(bed, "reader", lambda p: running(p, "c") and phase(p) == "Running")
    vol = bed.root / "pods" / p["metadata"]["uid"] / "volumes" / "cfg"
    first = os.readlink(vol / "..data")
    assert first.startswith("..20") and os.readlink(vol / "mode") == "..data/mode"
    assert await exec_text(bed, "reader", "c", "cat", "/config/mode") == (0, "v1")
    await bed.kube.patch(CONFIGMAPS, "settings", {"data": {"mode": "v2", "extra": "x"}}, NS)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (await exec_text(bed, "reader", "c", "cat", "/config/mode")) != (0, "v2"):
        assert loop.time() < deadline, "the ConfigMap change did not reach the container"
        await asyncio.sleep(0.2)
    second = os.readlink(vol / "..data")
    assert second != first and not (vol / first).exists()  # a new payload dir, the old one removed
    assert await exec_text(bed, "reader", "c", "cat", "/config/extra") == (0, "x")
    assert await exec_text(bed, "reader", "c", "readlink", "/config/..data") == (0, second + "\n")


# ---------------------------------------------------------------------------------------------- deletion
async def test_pod_deleted_mid_run_leaves_no_process_and_no_mount(bed: Bed) -> None:
    stubborn = sh("stubborn", "trap '' TERM; while :; do sleep 0.1; done")
    polite = stand_in("polite", volumeMounts=[{"name": "mem", "mountPath": "/mem"}])
    spec = pod("doomed", [stubborn, polite], volumes=[{"name": "mem", "emptyDir": {"medium": "Memory",
                                                                                   "sizeLimit": "16Mi"}}])
    await bed.kube.create(PODS, spec, NS)
    p = await eventually(bed, "doomed", lambda p: running(p, "stubborn", "polite"))
    uid = p["metadata"]["uid"]
    worker = bed.runner.workers[uid]
    pids = [c.proc.pid for c in worker.main if c.proc is not None]
    assert len(pids) == 2
    mem = bed.root / "pods" / uid / "volumes" / "mem"
    assert str(mem) in mounts_under(bed.root)  # medium: Memory is a tmpfs
    assert await exec_text(bed, "doomed", "polite", "sh", "-c", "df -k /mem | tail -1") != (0, "")
    await bed.kube.delete(PODS, "doomed", NS)
    await _gone(bed, "doomed", uid)
    for pid in pids:
        assert not _alive(pid), f"container process {pid} survived its pod"
