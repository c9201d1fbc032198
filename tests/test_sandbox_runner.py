"""The sandbox's kubelet (`sandbox.kubelet.PodRunner`) against a real API server, with real processes,
namespaces and mounts: mount propagation through FUSE, users, native and classic sidecars, the
kubelet's `..data` swap, and deletion that leaves nothing behind.

Needs root, mount namespaces and FUSE: where they are missing the tests fail saying so (no skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from eddy.kube import CONFIGMAPS, NODES, PODS, SERVICES, Kube
from sandbox.apiserver import KubeApiServer
from sandbox.dns import ClusterDns
from sandbox.kubelet import atomic
from sandbox.kubelet.atomic import FileProjection
from sandbox.kubelet.envs import container_argv, expand
from sandbox.kubelet.images import REPO, ImageCatalog, parse_dockerfile
from sandbox.kubelet.mounts import mount_tmpfs, mounts_under, unmount_all
from sandbox.kubelet.process import make_shared_root
from sandbox.kubelet.runner import PodRunner
from sandbox.network import NetworkError, PodNetwork
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
            pids = [c.proc.pid for w in runner.workers.values() for c in [*w.main, *w.init]
                    if c.proc is not None and c.proc.returncode is None]
            await runner.stop()
            assert mounts_under(root) == [], "PodRunner.stop() left mounts behind"
            assert not [pid for pid in pids if _alive(pid)], "PodRunner.stop() left processes behind"
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
    podinfo = [{"name": "podinfo", "mountPath": "/podinfo"}, {"name": "shared", "mountPath": "/shared"}]
    # The sidecar comes first; its postStart hook holds the next container back until it is ready.
    sidecar = sh("sidecar", "sleep 0.5; touch /shared/ready; until grep -q 'sandbox/stop=\"true\"' "
                 "/podinfo/annotations; do sleep 0.2; done; echo told to stop", volumeMounts=podinfo,
                 lifecycle={"postStart": {"exec": {"command": [
                     "sh", "-c", "until test -f /shared/ready; do sleep 0.1; done"]}}})
    main = sh("main", "test -f /shared/ready && echo working && sleep 0.5",
              volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
    spec = pod("classic", [sidecar, main], restartPolicy="Never", volumes=[
        {"name": "podinfo", "downwardAPI": {"items": [
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
        {"name": "shared", "emptyDir": {}}])
    await bed.kube.create(PODS, spec, NS)
    p = await eventually(bed, "classic", lambda p: "terminated" in cstatus(p, "main").get("state", {}))
    assert phase(p) == "Running" and running(p, "sidecar")
    files = bed.root / "pods" / p["metadata"]["uid"] / "volumes" / "podinfo"
    assert os.readlink(files / "annotations") == "..data/annotations"
    await bed.kube.patch(PODS, "classic", {"metadata": {"annotations": {"sandbox/stop": "true"}}}, NS)
    done = await eventually(bed, "classic", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", done["status"]
    assert bed.runner.logs(NS, "classic", "sidecar") == "told to stop\n"
    assert bed.runner.logs(NS, "classic", "main") == "working\n"  # started after the sidecar's postStart
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
async def test_pod_deleted_mid_run_leaves_no_process_and_no_mount(bed: Bed, tmp_path: Path) -> None:
    stubborn = sh("stubborn", "trap '' TERM; while :; do sleep 0.1; done")
    polite = stand_in("polite", volumeMounts=[{"name": "mem", "mountPath": "/mem"},
                                              {"name": "out", "mountPath": "/out"}],
                      lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "echo bye > /out/prestop"]}}})
    out = tmp_path / "out"
    spec = pod("doomed", [stubborn, polite], volumes=[
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "out", "hostPath": {"path": str(out), "type": "DirectoryOrCreate"}}])
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
    assert (out / "prestop").read_text() == "bye\n"  # the preStop hook ran before SIGTERM


# ---------------------------------------------------------------------------------------------- env
async def test_env_from_fields_secrets_configmaps_and_expansion(bed: Bed) -> None:
    await bed.kube.create(CONFIGMAPS, {"metadata": {"name": "cfg"}, "data": {"level": "debug", "a": "1"}}, NS)
    await bed.api.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                          "stringData": {"token": "s3cr3t"}}, NS)
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "NOPE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "GREETING", "value": "$(POD)-$(LEVEL)-$$(POD)-$(UNKNOWN)"},
    ]
    c = {"name": "c", "image": BUSYBOX, "command": ["/bin/sh", "-c"],
         "args": ['printenv GREETING MY_DB_SERVICE_HOST MY_DB_SERVICE_PORT_SQL; '
                  'echo "$(LEVEL)|$APP|$IP|$NODE|$TOKEN|${NOPE-unset}|$MEM|$CFG_a|'
                  '$KUBERNETES_SERVICE_HOST"'],
         "env": env, "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "cfg"}}],
         "resources": {"limits": {"memory": "64Mi"}}}
    await bed.kube.create(SERVICES, {"metadata": {"name": "my-db"}, "spec": {
        "clusterIP": "10.96.0.50", "ports": [{"name": "sql", "port": 5432}]}}, NS)
    for _ in range(250):  # until kubelet's informer knows it, as on a node
        if bed.runner.caches.services.get(NS, "my-db") is not None:
            break
        await asyncio.sleep(0.02)
    spec = pod("env", [c], restartPolicy="Never")
    spec["metadata"]["labels"] = {"app": "demo"}
    await bed.kube.create(PODS, spec, NS)
    done = await eventually(bed, "env", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", done["status"]
    assert bed.runner.logs(NS, "env", "c") == \
        "env-debug-$(POD)-$(UNKNOWN)\n10.96.0.50\n5432\ndebug|demo|127.0.0.1|sandbox|s3cr3t|unset|64|1|127.0.0.1\n"
    assert done["spec"]["nodeName"] == "sandbox"
    # A missing ConfigMap key is CreateContainerConfigError, and the container starts once it exists.
    await bed.kube.create(PODS, pod("late", [sh("c", "echo $X; sleep 30", env=[
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "x"}}}])]), NS)
    await eventually(bed, "late", lambda p: cstatus(p, "c").get("state", {}).get("waiting", {}).get(
        "reason") == "CreateContainerConfigError")
    await bed.kube.create(CONFIGMAPS, {"metadata": {"name": "later"}, "data": {"x": "here"}}, NS)
    await eventually(bed, "late", lambda p: running(p, "c"))
    # A failed container of a Never pod fails the pod; FallbackToLogsOnError puts its log in the status.
    await bed.kube.create(PODS, pod("crash", [sh("c", "echo boom; exit 3",
                                                 terminationMessagePolicy="FallbackToLogsOnError")],
                                    restartPolicy="Never"), NS)
    crashed = await eventually(bed, "crash", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(crashed) == "Failed"
    terminated = cstatus(crashed, "c")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (3, "Error", "boom")
    assert terminated["containerID"] == cstatus(crashed, "c")["containerID"] != ""


# ---------------------------------------------------------------------------------------------- probes
async def test_liveness_failure_restarts_and_a_failing_post_start_hook_kills(bed: Bed) -> None:
    live = stand_in("live", livenessProbe={"exec": {"command": ["sh", "-c", "test ! -f /tmp/sick"]},
                                           "periodSeconds": 1, "failureThreshold": 1})
    hooked = stand_in("hooked", lifecycle={"postStart": {"exec": {"command": ["false"]}}})
    await bed.kube.create(PODS, pod("probed", [live, hooked]), NS)
    await eventually(bed, "probed", lambda p: running(p, "live"))
    assert (await exec_text(bed, "probed", "live", "touch", "/tmp/sick"))[0] == 0
    p = await eventually(bed, "probed", lambda p: cstatus(p, "live").get("restartCount", 0) >= 1
                         and running(p, "live") and cstatus(p, "hooked").get("restartCount", 0) >= 1)
    assert cstatus(p, "live")["lastState"]["terminated"]["exitCode"] == 0  # the stand-in exits on TERM
    assert cstatus(p, "hooked")["lastState"]["terminated"]["reason"] == "FailedPostStartHook"
    assert phase(p) == "Running"


# ---------------------------------------------------------------------------------------------- claims
async def test_claim_waits_until_bound_to_a_host_path_volume(bed: Bed, tmp_path: Path) -> None:
    data = tmp_path / "pv"
    data.mkdir()
    (data / "file").write_text("on the volume\n")
    await bed.api.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                          "spec": {"accessModes": ["ReadWriteOnce"],
                                   "resources": {"requests": {"storage": "1Gi"}}}}, NS)
    spec = pod("claimer", [sh("c", "cat /data/file; sleep 30",
                              volumeMounts=[{"name": "d", "mountPath": "/data", "readOnly": True}])],
               volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}])
    await bed.kube.create(PODS, spec, NS)
    p = await eventually(bed, "claimer", lambda p: any(
        c["type"] == "PodScheduled" and c["status"] == "False" for c in p["status"].get("conditions", [])))
    cond = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
    assert 'claim "data"' in cond["message"] and phase(p) == "Pending"
    bed.api.put({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"},
                 "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": str(data)},
                          "claimRef": {"namespace": NS, "name": "data"}},
                 "status": {"phase": "Bound"}})
    claim = bed.api.get_object("persistentvolumeclaims", NS, "data")
    assert claim is not None
    claim["spec"]["volumeName"] = "pv-data"
    claim["status"] = {"phase": "Bound"}
    bed.api.put(claim)
    await eventually(bed, "claimer", lambda p: running(p, "c"))
    assert await exec_text(bed, "claimer", "c", "cat", "/data/file") == (0, "on the volume\n")
    code, out = await exec_text(bed, "claimer", "c", "touch", "/data/new")
    assert code != 0 and "Read-only" in out


# ---------------------------------------------------------------------------------------------- real network
async def test_with_the_real_pod_network_and_cluster_dns(tmp_path: Path) -> None:
    """Pod IPs from the bridge, an httpGet readiness probe across it, pod-to-pod and Service traffic by
    name through the hosts file ClusterDns keeps, and the netns gone with the pod."""
    require_root()
    rnd = random.Random()
    network = None
    for _ in range(5):  # unique bridge and CIDRs: other test runs may hold theirs
        second, third = rnd.randrange(128, 192), rnd.randrange(0, 254, 2)
        candidate = PodNetwork(bridge=f"rt{rnd.randrange(16**6):06x}", pod_cidr=f"10.{second}.{third}.0/24",
                               service_cidr=f"10.{second}.{third + 1}.0/24")
        try:
            await candidate.start()
        except NetworkError as exc:
            await candidate.stop()
            if "overlaps" not in str(exc):
                raise  # not a taken CIDR: a missing capability, say which
            continue
        network = candidate
        break
    assert network is not None, "no free pod/service CIDR found for the test bridge"
    api = KubeApiServer(service_cidr=str(network.service_net))
    try:
        await api.start()
        kube = await Kube.connect(url=api.url)
    except BaseException:
        await network.stop()
        await api.stop()
        raise
    dns = ClusterDns(kube, api_server_ip=network.gateway, service_ip=network.service_ip)
    runner = PodRunner(kube, network, dns, root=tmp_path / "kubelet")
    services = asyncio.create_task(network.watch_services(kube))
    try:
        await dns.start()
        await runner.start()
        bed = Bed(api, kube, runner, HostNetwork(), HostsFileDns(), tmp_path / "kubelet")
        await kube.create(SERVICES, {"metadata": {"name": "web"}, "spec": {
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}]}}, NS)
        server = pod("server", [{"name": "http", "image": BUSYBOX, "workingDir": "/srv",
                                 "command": [sys.executable, "-m", "http.server", "8080"],
                                 "ports": [{"name": "http", "containerPort": 8080}],
                                 "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                                    "periodSeconds": 1},
                                 "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}])
        server["metadata"]["labels"] = {"app": "web"}
        await kube.create(PODS, server, NS)
        await kube.create(PODS, pod("client", [stand_in("c")]), NS)
        ready = await eventually(bed, "server", lambda p: any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])))
        ip = ready["status"]["podIP"]
        assert ipaddress.ip_address(ip) in network.pod_net
        assert ready["status"]["hostIP"] == network.gateway
        await eventually(bed, "client", lambda p: running(p, "c"))
        fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)"
        assert await exec_text(bed, "client", "c", sys.executable, "-c", fetch, f"http://{ip}:8080/") == \
            (0, "200\n")
        code, hosts = await exec_text(bed, "client", "c", "cat", "/etc/hosts")
        assert code == 0 and "\tclient" in hosts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (got := await exec_text(bed, "client", "c", sys.executable, "-c", fetch, "http://web/"))[0]:
            assert loop.time() < deadline, f"Service web not reachable by name: {got}"
            await asyncio.sleep(0.3)
        netns = runner.workers[ready["metadata"]["uid"]].netns
        assert netns and os.path.basename(netns) in os.listdir("/run/netns")
        await kube.delete(PODS, "server", NS)
        await _gone(bed, "server", ready["metadata"]["uid"])
        assert os.path.basename(netns) not in os.listdir("/run/netns")
    finally:
        services.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await services
        await runner.stop()
        await dns.stop()
        await network.stop()
        await kube.close()
        await api.stop()
    assert mounts_under(tmp_path / "kubelet") == []


# ---------------------------------------------------------------------------------------------- volumes
async def test_projected_secret_subpath_and_host_path_volumes(bed: Bed, tmp_path: Path) -> None:
    await bed.kube.create(CONFIGMAPS, {"metadata": {"name": "app"}, "data": {"app.conf": "port=1\n",
                                                                            "other": "o"}}, NS)
    await bed.api.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
                          "stringData": {"key": "k1", "unused": "u"}}, NS)
    host = tmp_path / "host" / "made"
    mounts = [{"name": "proj", "mountPath": "/proj"}, {"name": "keys", "mountPath": "/keys"},
              {"name": "app", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
              {"name": "host", "mountPath": "/host"}]
    volumes = [
        {"name": "proj", "projected": {"defaultMode": 0o440, "sources": [
            {"secret": {"name": "keys", "items": [{"key": "key", "path": "creds/key", "mode": 0o400}]}},
            {"configMap": {"name": "app", "items": [{"key": "other", "path": "other.txt"}]}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
            {"configMap": {"name": "absent", "optional": True}}]}},
        {"name": "keys", "secret": {"secretName": "keys", "defaultMode": 0o400}},
        {"name": "app", "configMap": {"name": "app"}},
        {"name": "host", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
    ]
    spec = pod("vols", [stand_in("c", volumeMounts=mounts)], volumes=volumes,
               securityContext={"fsGroup": 5000})
    spec["metadata"]["labels"] = {"tier": "web"}
    await bed.kube.create(PODS, spec, NS)
    await eventually(bed, "vols", lambda p: running(p, "c"))

    async def run(*argv: str) -> str:
        code, out = await exec_text(bed, "vols", "c", *argv)
        assert code == 0, out
        return out

    assert await run("cat", "/proj/creds/key", "/proj/other.txt", "/proj/labels") == 'k1otier="web"\n'
    assert (await run("cat", "/proj/token")).strip()
    assert await run("stat", "-L", "-c", "%a %g", "/proj/creds/key", "/proj/other.txt", "/keys/key") == \
        "440 5000\n440 5000\n440 5000\n"  # modes as asked, plus group read for the fsGroup
    assert sorted((await run("ls", "/keys")).split()) == ["key", "unused"]
    assert await run("cat", "/etc/app.conf") == "port=1\n"
    await run("sh", "-c", "echo from-pod > /host/out")
    assert (host / "out").read_text() == "from-pod\n"
    # A hostPath whose type check fails keeps the pod Pending with the reason on its containers.
    await bed.kube.create(PODS, pod("badhost", [stand_in("c", volumeMounts=[
        {"name": "h", "mountPath": "/h"}])], volumes=[
        {"name": "h", "hostPath": {"path": str(tmp_path / "nothing"), "type": "File"}}]), NS)
    bad = await eventually(bed, "badhost", lambda p: "type check failed" in cstatus(p, "c").get(
        "state", {}).get("waiting", {}).get("message", ""))
    assert phase(bad) == "Pending"


# ---------------------------------------------------------------------------------------------- units
def test_eddy_image_comes_from_the_dockerfile_and_the_kustomization(tmp_path: Path) -> None:
    catalog = ImageCatalog()
    text = (REPO / "Dockerfile").read_text()
    cfg = catalog.resolve("ghcr.io/eddy/eddy:0.1.0")
    assert cfg.entrypoint == ("eddy",) and '["eddy"]' in text
    assert cfg.user == "65532" and "USER 65532" in text
    assert cfg.env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert catalog.resolve("ghcr.io/eddy/eddy@sha256:" + "0" * 64).user == "65532"
    assert catalog.resolve("docker.io/library/busybox:1.36").user == ""
    kustomization = tmp_path / "kustomization.yaml"
    kustomization.write_text("images:\n  - name: ghcr.io/eddy/eddy\n    newName: registry.local:5000/eddy\n")
    mapped = ImageCatalog(kustomization=kustomization)
    assert mapped.is_eddy("registry.local:5000/eddy:dev") and not mapped.is_eddy("registry.local:5000/x")
    parsed = parse_dockerfile("FROM a AS b\nUSER 1\nENTRYPOINT [\"x\"]\nFROM c\nENV A=1 B=\"two words\"\n"
                              "WORKDIR /w\nCMD run --fast\n")
    assert parsed.user == "" and parsed.entrypoint == () and parsed.workdir == "/w"
    assert parsed.cmd == ("/bin/sh", "-c", "run --fast") and parsed.env == {"A": "1", "B": "two words"}


def test_command_args_and_expansion_follow_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$$(A)-$(C)-$", env) == "1-two-$(A)-$(C)-$"
    assert container_argv({"args": ["$(A)"]}, ("ep",), ("cmd",), env) == ["ep", "1"]
    assert container_argv({"command": ["c"]}, ("ep",), ("cmd",), env) == ["c"]
    assert container_argv({}, ("ep",), ("cmd",), env) == ["ep", "cmd"]


def test_atomic_writer_swaps_data_and_prunes(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    assert atomic.write(target, {"a": FileProjection(b"1"), "d/b": FileProjection(b"2", 0o600)})
    first = os.readlink(target / "..data")
    assert sorted(os.listdir(target)) == sorted(["..data", first, "a", "d"])
    assert not atomic.write(target, {"a": FileProjection(b"1"), "d/b": FileProjection(b"2", 0o600)})
    assert atomic.write(target, {"a": FileProjection(b"3")})
    second = os.readlink(target / "..data")
    assert second != first and sorted(os.listdir(target)) == sorted(["..data", second, "a"])
    assert (target / "a").read_bytes() == b"3" and os.readlink(target / "a") == "..data/a"
    with pytest.raises(ValueError):
        atomic.write(target, {"../escape": FileProjection(b"")})


# ---------------------------------------------------------------------------------------------- node
async def test_node_is_registered_and_every_pod_is_bound_to_it(bed: Bed) -> None:
    node = await bed.kube.get(NODES, "sandbox")
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "sandbox"
    assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == ["True"]
    # One node: a selector it does not match is ignored (docs/sandbox.md, Scheduling).
    await bed.kube.create(PODS, pod("anywhere", [stand_in("c")], nodeSelector={"disk": "ssd"}), NS)
    p = await eventually(bed, "anywhere", lambda p: running(p, "c"))
    assert p["spec"]["nodeName"] == "sandbox"
    assert [c["status"] for c in p["status"]["conditions"] if c["type"] == "PodScheduled"] == ["True"]


async def test_native_sidecar_is_restarted_even_in_a_never_pod(bed: Bed) -> None:
    flaky = sh("flaky", "if [ ! -f /work/once ]; then touch /work/once; exit 1; fi; exec sleep 3600",
               restartPolicy="Always", volumeMounts=[{"name": "work", "mountPath": "/work"}])
    main = sh("main", "until [ -f /work/once ]; do sleep 0.1; done; sleep 2.5",
              volumeMounts=[{"name": "work", "mountPath": "/work"}])
    await bed.kube.create(PODS, pod("flaky", [main], initContainers=[flaky], restartPolicy="Never",
                                    volumes=[{"name": "work", "emptyDir": {}}]), NS)
    p = await eventually(bed, "flaky", lambda p: cstatus(p, "flaky").get("restartCount", 0) == 1
                         and running(p, "flaky", "main"))
    assert cstatus(p, "flaky")["lastState"]["terminated"]["exitCode"] == 1
    done = await eventually(bed, "flaky", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", done["status"]


async def test_a_new_runner_clears_what_a_crashed_one_left(tmp_path: Path) -> None:
    require_root()
    root = tmp_path / "kubelet"
    stale = root / "pods" / "0000-stale" / "volumes" / "mem"
    stale.mkdir(parents=True)
    make_shared_root(root)  # what the crashed runner had done, then a pod's tmpfs
    await mount_tmpfs(stale, 1 << 20)
    (stale / "left").write_text("x")
    api = await KubeApiServer().start()
    kube = await Kube.connect(url=api.url)
    runner = PodRunner(kube, HostNetwork(), HostsFileDns(), root=root)
    try:
        await runner.start()
        assert mounts_under(root / "pods") == [] and os.listdir(root / "pods") == []
    finally:
        await runner.stop()
        await unmount_all(root)
        await kube.close()
        await api.stop()
    assert mounts_under(root) == []
