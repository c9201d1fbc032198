"""The seed's scenario through the cluster path, on the sandbox (issue: the seed through the cluster path).

Eddy is installed from `manifests/` with kubectl; the seed's Secret, Dataset and DataLoad are applied;
the controller, preloader and webhook run as pods from their Deployments, the workers from the
controller's StatefulSet, and each app pod from the webhook's injection. Every test reads the whole
data set from inside an app container and compares every file's sha256 with what was uploaded. The
module runs twice: a v1.30 API server (native sidecars) and a v1.28 one (classic sidecars). Last, the
sidecar of a running pod is killed, and the app must open /data again without restarting.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from eddy import kube
from eddy_cli.demo_data import DataSet, upload
from sandbox.cluster import Sandbox
from sandbox.kubelet import PodNotFound
from sandbox.link import Link
from sandbox.s3server import start_seaweedfs
from sandbox.scenario import (
    ObjectStoreAccess,
    Scenario,
    app_container,
    injected_sidecars,
    renamed_app,
)
from tests.support.seed import SEED

pytestmark = pytest.mark.asyncio(loop_scope="module")
JOBS = kube.Resource("batch", "v1", "jobs", "Job", has_status=True)
SIZE = 12 << 20  # one 7 MiB file and small ones: every block path, in seconds
# The bound stated for "the app's next open succeeds" after the sidecar dies: the sandbox kubelet's first
# restart back-off (1 s) + the sidecar's start + mounting over the dead mount, on 2 shared cores.
# Measured 3-7 s; a real kubelet's first back-off is 10 s.
RECOVERY_BOUND_S = 30.0


def need_cluster_capabilities() -> None:
    """Fail (never skip) with what is missing: CI runs as root with FUSE, netns and kubectl."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    for tool in ("ip", "kubectl", "fusermount3"):
        if shutil.which(tool) is None:
            missing.append(tool)
    assert not missing, f"the sandbox needs {', '.join(missing)} (make test installs the packages)"


@dataclass
class Seeded:
    cluster: Sandbox
    run: Scenario
    data: DataSet
    native: bool


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["v1.30.0", "v1.28.9"],
                        ids=["native", "classic"])
async def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Seeded]:
    need_cluster_capabilities()
    work = tmp_path_factory.mktemp("e2e")
    s3 = await asyncio.to_thread(start_seaweedfs, work / "s3")
    cluster = Sandbox(work / "cluster", git_version=request.param)
    link: Link | None = None
    try:
        data = await upload(s3.endpoint, s3.access_key, s3.secret_key, "e2e", "serverless/", SIZE)
        await cluster.start()
        host, port = s3.endpoint.removeprefix("http://").rsplit(":", 1)
        link = await Link(host, int(port), bandwidth=0, latency_s=0, host=cluster.gateway).start()
        access = ObjectStoreAccess(link.endpoint, "e2e", "serverless/", s3.access_key, s3.secret_key)
        run = Scenario(cluster)
        await run.install_eddy()
        load = await run.seed_dataset(SEED, access)
        assert load["phases"][-1] == "Complete"
        yield Seeded(cluster, run, data, native=request.param == "v1.30.0")
    finally:
        await cluster.stop()
        if link is not None:
            await link.stop()
        await asyncio.to_thread(s3.stop)
    assert not leftover_mounts(work), "the sandbox left mounts behind"


def leftover_mounts(work: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if str(work) in line.split()[4]]


async def read_all(seeded: Seeded, pod: dict[str, Any], container: str, dest: str) -> None:
    """`cp -r /data/. dest` as the container's user, then every file's checksum against the upload."""
    await seeded.run.exec(pod, container, ["mkdir", "-p", dest])
    await seeded.run.exec(pod, container, ["cp", "-r", "/data/.", f"{dest}/"])
    seen = await seeded.run.checksums(pod, container, dest)
    assert seen == seeded.data.sha256, "the app container read other bytes than were uploaded"


def check_mode(seeded: Seeded, pod: dict[str, Any]) -> None:
    (sidecar,) = injected_sidecars(pod)
    assert sidecar["securityContext"]["runAsUser"] == 0
    if seeded.native:
        assert sidecar["restartPolicy"] == "Always" and sidecar in pod["spec"]["initContainers"]
    else:
        assert pod["spec"]["containers"][0]["name"] == sidecar["name"]


def seed_app(name: str) -> dict[str, Any]:
    return yaml.safe_load((SEED / name).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("manifest", ["deployment-eci.yaml", "deployment-acs.yaml"])
async def test_seed_deployment_reads_every_byte(seeded: Seeded, manifest: str) -> None:
    name = f"serving-{manifest.split('-')[1].split('.')[0]}"
    await seeded.run.apply_docs([renamed_app(seed_app(manifest), name)])
    pod = await seeded.run.wait_pod(f"app={name}")
    assert pod["metadata"]["labels"]["done.sidecar.fluid.io/inject"] == "true"
    check_mode(seeded, pod)
    await read_all(seeded, pod, app_container(pod), "/tmp/copy")
    await seeded.run.kubectl("delete", "deployment", name, "--wait=false")


@pytest.mark.parametrize("uid", [0, 1000])
async def test_app_container_user_reads_the_mount(seeded: Seeded, uid: int) -> None:
    name = f"reader-uid{uid}"
    app = renamed_app(seed_app("deployment-eci.yaml"), name)
    container = app["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"runAsUser": uid, "runAsGroup": uid}
    await seeded.run.apply_docs([app])
    pod = await seeded.run.wait_pod(f"app={name}")
    container = app_container(pod)
    assert (await seeded.run.exec(pod, container, ["id", "-u"])).strip() == str(uid)
    await read_all(seeded, pod, container, "/tmp/copy")
    await seeded.run.kubectl("delete", "deployment", name, "--wait=false")


async def test_init_container_reads_the_dataset(seeded: Seeded) -> None:
    """Native mode: the sidecar goes before the init container that needs the mount, which reads every
    byte. Classic mode cannot serve an init container (the sidecar starts with the app containers): the
    admission says so in a warning, and the init container finds an empty directory."""
    name = f"init-reader-{'native' if seeded.native else 'classic'}"
    app = renamed_app(seed_app("deployment-eci.yaml"), name)
    template = app["spec"]["template"]["spec"]
    template["volumes"].append({"name": "scratch", "emptyDir": {}})
    template["initContainers"] = [{
        "name": "warm-copy", "image": "busybox",
        "command": ["sh", "-c", "mkdir -p /scratch/copy && cp -r /data/. /scratch/copy/"],
        "volumeMounts": [{"name": "data", "mountPath": "/data"},
                         {"name": "scratch", "mountPath": "/scratch"}],
    }]
    template["containers"][0]["volumeMounts"].append({"name": "scratch", "mountPath": "/scratch"})
    await seeded.run.apply_docs([app])
    pod = await seeded.run.wait_pod(f"app={name}")
    seen = await seeded.run.checksums(pod, app_container(pod), "/scratch/copy")
    if seeded.native:
        names = [c["name"] for c in pod["spec"]["initContainers"]]
        assert names.index("warm-copy") > names.index(injected_sidecars(pod)[0]["name"])
        assert seen == seeded.data.sha256
    else:
        assert seeded.cluster.webhooks is not None
        assert any("warm-copy" in w and "empty directory" in w for w in seeded.cluster.webhooks.warnings)
        assert seen == {}
    await seeded.run.kubectl("delete", "deployment", name, "--wait=false")


async def test_unprivileged_sidecar_says_why_it_cannot_mount(seeded: Seeded) -> None:
    """Fluid's `unprivileged.sidecar.fluid.io/inject: "true"`: no privileged, no SYS_ADMIN, no /dev/fuse.
    Only a platform with its own FUSE support can mount then; the sandbox (a plain node) has none, so
    the sidecar must fail loudly and the app must never see a half-made /data."""
    name = f"unprivileged-{'native' if seeded.native else 'classic'}"
    app = renamed_app(seed_app("deployment-eci.yaml"), name)
    app["spec"]["template"]["metadata"]["labels"]["unprivileged.sidecar.fluid.io/inject"] = "true"
    await seeded.run.apply_docs([app])
    assert seeded.cluster.runner is not None

    async def failed_mount() -> dict[str, Any] | None:
        pods, _ = await seeded.run.kube.list(kube.PODS, "default", label_selector=f"app={name}")
        assert seeded.cluster.runner is not None
        for pod in pods:
            (sidecar,) = injected_sidecars(pod)
            try:
                log = seeded.cluster.runner.logs("default", pod["metadata"]["name"], sidecar["name"])
            except PodNotFound:  # created, not yet taken by the node
                continue
            if "fuse_session_mount failed" in log or "Operation not permitted" in log:
                return dict(pod)
        return None

    pod = await seeded.run.wait_until("the unprivileged sidecar's mount failure", failed_mount, timeout=120)
    (sidecar,) = injected_sidecars(pod)
    security = sidecar.get("securityContext") or {}
    assert not security.get("privileged") and "SYS_ADMIN" not in str(security.get("capabilities"))
    status = pod.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    assert not ready or ready[0]["status"] != "True", "the app must not run without its data"
    await seeded.run.kubectl("delete", "deployment", name, "--wait=false")


async def test_job_pod_completes_after_reading(seeded: Seeded) -> None:
    script = ("mkdir -p /tmp/copy && cp -r /data/. /tmp/copy/ && cd /tmp/copy && "
              "find . -type f -exec sha256sum {} +")
    app = seed_app("deployment-eci.yaml")
    template = copy.deepcopy(app["spec"]["template"])
    template["metadata"]["labels"]["app"] = "reader-job"
    template["spec"]["restartPolicy"] = "Never"
    template["spec"]["containers"][0].update({"image": "busybox", "command": ["sh", "-c", script]})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "reader-job"},
           "spec": {"backoffLimit": 0, "template": template}}
    await seeded.run.apply_docs([job])

    async def complete() -> dict[str, Any] | None:
        found = await seeded.run.kube.get_or_none(JOBS, "reader-job", "default") or {}
        conditions = {c["type"]: c["status"] for c in (found.get("status") or {}).get("conditions") or []}
        assert conditions.get("Failed") != "True", found.get("status")
        return found if conditions.get("Complete") == "True" else None

    await seeded.run.wait_until("the Job to complete", complete, timeout=180)
    pod = await seeded.run.wait_pod("app=reader-job", phase="Succeeded")
    assert seeded.cluster.runner is not None
    log = seeded.cluster.runner.logs("default", pod["metadata"]["name"], "serving")
    seen = {line[66:].removeprefix("./"): line[:64] for line in log.splitlines() if len(line) > 66}
    assert seen == seeded.data.sha256


async def sha_in_app(c: Seeded, pod: dict[str, Any], container: str, path: str) -> tuple[bool, str]:
    """`cat /data/<path> | sha256sum` in the app container: (cat succeeded, digest or error)."""
    assert c.cluster.runner is not None
    meta = pod["metadata"]
    # the digest comes from the pipe; the exit status from a second cat (sh has no pipefail)
    script = 'cat "$1" | sha256sum && cat "$1" > /dev/null'
    result = await c.cluster.runner.exec(meta["namespace"], meta["name"], container,
                                         ["sh", "-c", script, "sh", f"/data/{path}"], timeout=60)
    out = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0:
        return False, result.stderr.decode(errors="replace").strip()[-300:]
    return True, out[:64]


async def test_killed_sidecar_comes_back_and_app_opens_again(seeded: Seeded) -> None:
    """A mount that comes back: the sidecar of a running pod is SIGKILLed; the pod's restart brings it
    back (native: the restartable init container; classic: the pod's restartPolicy), the new sidecar
    mounts over the dead shared mount, and HostToContainer propagation hands the new mount to the app:
    its next open() of /data succeeds without the app restarting (docs/sidecar.md)."""
    c = seeded
    name = f"restart-{'native' if c.native else 'classic'}"
    app = renamed_app(yaml.safe_load((SEED / "deployment-eci.yaml").read_text()), name)
    await c.run.apply_docs([app])
    pod = await c.run.wait_pod(f"app={name}")
    (sidecar_spec,) = injected_sidecars(pod)
    if c.native:
        assert sidecar_spec["restartPolicy"] == "Always" and sidecar_spec in pod["spec"]["initContainers"]
    else:
        assert pod["spec"]["containers"][0]["name"] == sidecar_spec["name"]
    assert c.cluster.runner is not None
    worker = c.cluster.runner.worker("default", pod["metadata"]["name"])
    app_name = app_container(pod)
    app_c, side_c = worker.container(app_name), worker.container(sidecar_spec["name"])
    assert app_c is not None and side_c is not None
    assert app_c.proc is not None and side_c.proc is not None
    app_pid, app_restarts = app_c.proc.pid, app_c.restart_count
    side_restarts = side_c.restart_count
    files = sorted(c.data.sha256)
    wrong = 0
    for path in files:  # the mount serves every file before the crash
        ok, digest = await sha_in_app(c, pod, app_name, path)
        assert ok, digest
        wrong += digest != c.data.sha256[path]
    assert wrong == 0

    os.kill(side_c.proc.pid, signal.SIGKILL)  # the sidecar process dies (the FUSE daemon with it)
    t0 = time.monotonic()
    failures: list[str] = []
    recovered = -1.0
    target = files[0]
    while time.monotonic() - t0 < RECOVERY_BOUND_S:
        ok, digest = await sha_in_app(c, pod, app_name, target)
        if ok and digest == c.data.sha256[target]:
            recovered = time.monotonic() - t0
            break
        if ok:
            wrong += 1
        failures.append(digest)
        await asyncio.sleep(0.2)
    print(f"\n{name}: the app's open of /data/{target} succeeded again {recovered:.2f}s after the "
          f"sidecar's SIGKILL; {len(failures)} failed attempts before, e.g. {failures[:1]}")
    sidecar_log = c.cluster.runner.logs("default", pod["metadata"]["name"], sidecar_spec["name"])
    assert recovered >= 0, (f"no successful open within {RECOVERY_BOUND_S}s: {failures[-3:]}; "
                            f"sidecar restarts {side_c.restart_count}, {side_c.terminated}, "
                            f"{side_c.waiting}; "
                            f"its log:\n{sidecar_log[-4000:]}")
    assert wrong == 0, "the mount served other bytes than were uploaded"
    # every file reads whole again, through the new mount, in the same app container
    for path in files:
        ok, digest = await sha_in_app(c, pod, app_name, path)
        assert ok, digest
        wrong += digest != c.data.sha256[path]
    assert wrong == 0
    assert app_c.proc is not None and app_c.proc.pid == app_pid, "the app container was restarted"
    assert app_c.restart_count == app_restarts
    assert side_c.restart_count == side_restarts + 1
    await c.run.kubectl("delete", "deployment", name, "--wait=false")
