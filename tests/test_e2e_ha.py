"""Operating Eddy on the sandbox (issue 14): an HA control plane and a clean uninstall.

One cluster (v1.30) with Eddy installed from `manifests/`: two controller and two preloader replicas
elect a leader on a Lease each. The leader's container process is SIGKILLed mid-reconcile (a new
Dataset) and mid-DataLoad (over a slow link to the object store); the standby takes over within one
lease duration, creates no duplicate object, and the DataLoad completes without the worker fetching
any block twice. Last, the documented uninstall order leaves no Eddy object behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from controller.objects import WORKER_COMPONENT
from eddy import kube
from eddy.names import WORKER_PORT
from eddy_cli.demo_data import DataSet, upload
from sandbox.cluster import Sandbox
from sandbox.link import Link
from sandbox.s3server import LocalS3, start_seaweedfs
from sandbox.scenario import MANIFESTS, ObjectStoreAccess, Scenario, filled_dataset
from tests.support.seed import SEED
from tests.test_e2e_cluster import leftover_mounts, need_cluster_capabilities

pytestmark = pytest.mark.asyncio(loop_scope="module")
Obj = dict[str, Any]
LEASE_DURATION = 15.0  # the manifests' (the flags' default)
RETRY_PERIOD = LEASE_DURATION * 2 / 15
SLOW_BYTES_PER_S = 2_000_000  # the slow data set takes ~15 s to load: time to kill the leader mid-way
LATENCY_S = 1.0  # per request on the slow link: the controller's listing of it takes that long
SLOW_SIZE = 20 << 20


@dataclass
class Installed:
    cluster: Sandbox
    run: Scenario
    s3: LocalS3
    slow: ObjectStoreAccess
    slow_data: DataSet


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def installed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Installed]:
    need_cluster_capabilities()
    work = tmp_path_factory.mktemp("ha")
    s3 = await asyncio.to_thread(start_seaweedfs, work / "s3")
    cluster = Sandbox(work / "cluster", git_version="v1.30.0")
    links: list[Link] = []
    try:
        await upload(s3.endpoint, s3.access_key, s3.secret_key, "eddy-ha", "serverless/", 4 << 20)
        slow_data = await upload(s3.endpoint, s3.access_key, s3.secret_key, "eddy-ha", "slow/", SLOW_SIZE)
        await cluster.start()
        host, port = s3.endpoint.removeprefix("http://").rsplit(":", 1)
        fast = await Link(host, int(port), bandwidth=0, latency_s=0, host=cluster.gateway).start()
        links.append(fast)
        slow = await Link(host, int(port), bandwidth=SLOW_BYTES_PER_S, latency_s=LATENCY_S,
                          host=cluster.gateway).start()
        links.append(slow)
        access = ObjectStoreAccess(fast.endpoint, "eddy-ha", "serverless/", s3.access_key, s3.secret_key)
        run = Scenario(cluster)
        await run.install_eddy()
        load = await run.seed_dataset(SEED, access)
        assert load["phases"][-1] == "Complete"
        slow_access = ObjectStoreAccess(slow.endpoint, "eddy-ha", "slow/", s3.access_key, s3.secret_key)
        yield Installed(cluster, run, s3, slow_access, slow_data)
    finally:
        await cluster.stop()
        for link in links:
            await link.stop()
        await asyncio.to_thread(s3.stop)
    assert not leftover_mounts(work), "the sandbox left mounts behind"


# ------------------------------------------------------------------------------------------ helpers
async def items(k: kube.Kube, resource: kube.Resource, namespace: str | None = None,
                label_selector: str | None = None) -> list[Obj]:
    return (await k.list(resource, namespace, label_selector=label_selector))[0]


async def lease_holder(k: kube.Kube, name: str) -> tuple[str, str]:
    lease = await k.get_or_none(kube.LEASES, name, "eddy-system")
    spec = (lease or {}).get("spec") or {}
    return str(spec.get("holderIdentity") or ""), str(spec.get("acquireTime") or "")


async def running_pods(k: kube.Kube, app: str) -> list[Obj]:
    pods = await items(k, kube.PODS, "eddy-system", label_selector=f"app.kubernetes.io/name={app}")
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"
            and all(c.get("ready") for c in (p["status"].get("containerStatuses") or []))]


async def eventually(what: str, check: Callable[[], Awaitable[Any]], timeout: float,
                     every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        await asyncio.sleep(every)


async def two_replicas_and_a_leader(installed: Installed, app: str) -> str:
    k = installed.run.kube

    async def ready() -> str:
        pods = await running_pods(k, app)
        holder, _ = await lease_holder(k, app)
        names = {p["metadata"]["name"] for p in pods}
        return holder if len(pods) == 2 and holder.rsplit("_", 1)[0] in names else ""

    return str(await eventually(f"two {app} replicas and a Lease holder among them", ready, 120))


def pod_of(identity: str) -> str:
    """The pod of a leader identity (`<pod>_<per-process suffix>`)."""
    return identity.rsplit("_", 1)[0]


def kill_container(installed: Installed, pod: str, container: str) -> None:
    runner = installed.cluster.runner
    assert runner is not None
    found = runner.worker("eddy-system", pod).container(container)
    assert found is not None, f"no container {pod}/{container}"
    proc = found.proc
    assert proc is not None and proc.returncode is None, f"{pod}/{container} is not running"
    os.kill(proc.pid, signal.SIGKILL)


async def take_over(installed: Installed, app: str, old: str, killed_at: float) -> float:
    """Seconds from the kill until another replica holds the Lease."""
    k = installed.run.kube

    async def new_holder() -> str:
        holder, _ = await lease_holder(k, app)
        return holder if holder and holder != old else ""

    await eventually(f"a standby taking over the {app} Lease", new_holder, LEASE_DURATION * 3)
    return time.monotonic() - killed_at


async def worker_warm_counts(k: kube.Kube, dataset: str) -> dict[str, float]:
    """`eddy_worker_warm_blocks_total` by status, summed over the Dataset's worker pods."""
    pods = await items(k, kube.PODS, "default", label_selector=f"app.kubernetes.io/name={WORKER_COMPONENT}")
    counts: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or not pod["metadata"]["name"].startswith(f"{dataset}-"):
                continue
            async with session.get(f"http://{ip}:{WORKER_PORT}/metrics") as resp:
                text = await resp.text()
            for line in text.splitlines():
                if line.startswith("eddy_worker_warm_blocks_total{"):
                    status = line.split('status="', 1)[1].split('"', 1)[0]
                    counts[status] = counts.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


# -------------------------------------------------------------------------------------------- tests
async def test_controller_standby_finishes_a_reconcile_cut_short(installed: Installed) -> None:
    k = installed.run.kube
    leader = await two_replicas_and_a_leader(installed, "eddy-controller")
    await installed.run.apply_docs(filled_dataset(SEED, installed.slow, name="ha-data"))

    async def started() -> bool:
        """Mid-reconcile: the objects are applied, the Dataset is not Bound yet (the leader is listing the
        object store over the slow link, which answers each request after LATENCY_S)."""
        ds = await k.get_or_none(kube.DATASETS, "ha-data", "default")
        sets = [o for o in await items(k, kube.STATEFULSETS, "default")
                if o["metadata"]["name"].startswith("ha-data")]
        return bool(sets) and ((ds or {}).get("status") or {}).get("phase") != "Bound"

    await eventually("the controller to apply Dataset ha-data's objects", started, 60, every=0.05)
    killed_at = time.monotonic()
    kill_container(installed, pod_of(leader), "controller")
    ds = await k.get(kube.DATASETS, "ha-data", "default")
    assert (ds.get("status") or {}).get("phase") != "Bound", "killed too late: the reconcile had ended"
    took = await take_over(installed, "eddy-controller", leader, killed_at)
    assert took <= LEASE_DURATION + 2 * RETRY_PERIOD + 1, f"the standby took {took:.1f}s to lead"
    print(f"controller: leader {leader} killed mid-reconcile; a new leader after {took:.1f}s")
    await installed.run.wait_dataset("ha-data")
    for resource in (kube.STATEFULSETS, kube.PVCS, kube.SERVICES, kube.SECRETS, kube.CONFIGMAPS):
        names = [o["metadata"]["name"] for o in await items(k, resource, "default")
                 if "ha-data" in o["metadata"]["name"]]
        assert len(names) == len(set(names)) and names, f"{resource.plural}: {names}"
    pvs = [o["metadata"]["name"] for o in await items(k, kube.PVS) if "ha-data" in o["metadata"]["name"]]
    assert len(pvs) == 1, f"PersistentVolumes for ha-data: {pvs}"
    # The killed replica came back as the standby: two replicas again, one leading.
    await two_replicas_and_a_leader(installed, "eddy-controller")


async def test_preloader_standby_resumes_a_dataload(installed: Installed) -> None:
    k = installed.run.kube
    await installed.run.wait_dataset("ha-data")
    leader = await two_replicas_and_a_leader(installed, "eddy-preloader")
    await installed.run.apply_docs([{
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "DataLoad",
        "metadata": {"name": "ha-warmup", "namespace": "default"},
        "spec": {"dataset": {"name": "ha-data", "namespace": "default"}},
    }])

    async def some_blocks_done() -> Obj | None:
        load = await k.get_or_none(kube.DATALOADS, "ha-warmup", "default")
        status = (load or {}).get("status") or {}
        done = int((status.get("progress") or {}).get("loadedBlocks") or 0)
        return status if status.get("phase") == "Executing" and done >= 2 else None

    before = await eventually("the DataLoad to warm its first blocks", some_blocks_done, 120)
    killed_at = time.monotonic()
    kill_container(installed, pod_of(leader), "preloader")
    took = await take_over(installed, "eddy-preloader", leader, killed_at)
    assert took <= LEASE_DURATION + 2 * RETRY_PERIOD + 1, f"the standby took {took:.1f}s to lead"
    final = await installed.run.wait_dataload("ha-warmup")
    assert final["phases"][-1] == "Complete", final
    load = await k.get(kube.DATALOADS, "ha-warmup", "default")
    status = load["status"]
    progress = status["progress"]
    assert status["startTime"] == before["startTime"], "the DataLoad was restarted, not resumed"
    assert progress["alreadyCachedBlocks"] >= before["progress"]["loadedBlocks"], progress
    assert progress["totalBlocks"] == progress["loadedBlocks"], progress
    counts = await worker_warm_counts(k, "ha-data")
    print(f"preloader: leader {leader} killed after {before['progress']['loadedBlocks']} blocks; new leader "
          f"after {took:.1f}s; final {progress['fetchedBlocks']} fetched + {progress['alreadyCachedBlocks']} "
          f"already cached of {progress['totalBlocks']}; worker warm results {counts}")
    assert counts.get("fetched", 0) == progress["totalBlocks"], (
        f"the worker fetched {counts} blocks for a data set of {progress['totalBlocks']}: some twice")


# ---------------------------------------------------------------------------------------- uninstall
CLUSTER_SCOPED = ("customresourcedefinitions", "clusterroles", "clusterrolebindings",
                  "mutatingwebhookconfigurations", "validatingadmissionpolicies",
                  "validatingadmissionpolicybindings", "persistentvolumes")
NAMESPACED = ("pods", "deployments", "replicasets", "statefulsets", "services", "configmaps", "secrets",
              "serviceaccounts", "roles", "rolebindings", "leases", "poddisruptionbudgets",
              "networkpolicies", "persistentvolumeclaims")


async def names(run: Scenario, kinds: tuple[str, ...], *flags: str) -> list[str]:
    out = await run.kubectl("get", ",".join(kinds), "-o", "name", "--ignore-not-found", *flags, show=False)
    return out.split()


def eddy_named(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in ("eddy", "fluid.io", "serverless-data", "ha-data"))


async def test_documented_uninstall_leaves_nothing(installed: Installed) -> None:
    """docs/operations.md, "Uninstall": DataLoads, then Datasets (the controller tears down), then
    `kubectl delete -k manifests`. Nothing of Eddy stays, and nothing hangs on a finalizer."""
    run = installed.run
    started = time.monotonic()
    await run.kubectl("delete", "dataload", "--all", "-A", "--timeout=120s")
    await run.kubectl("delete", "dataset", "--all", "-A", "--wait=true", "--timeout=120s")
    await run.kubectl("delete", "-k", str(MANIFESTS), "--ignore-not-found", "--timeout=180s")
    took = time.monotonic() - started

    async def leftovers() -> list[str]:
        found = await names(run, ("namespaces/eddy-system",))
        found += [n for n in await names(run, CLUSTER_SCOPED) if eddy_named(n)]
        found += [n for n in await names(run, NAMESPACED, "-A") if eddy_named(n)]
        return found + await names(run, ("pods",), "-A")  # no app pods in this module: none at all

    deadline = time.monotonic() + 60  # garbage collection of owned objects and pods is asynchronous
    left = await leftovers()
    while left and time.monotonic() < deadline:
        await asyncio.sleep(1)
        left = await leftovers()
    assert not left, f"left behind after the documented uninstall: {left}"
    assert took < 300, f"the uninstall took {took:.0f}s"
    print(f"uninstall: documented order done in {took:.1f}s, nothing left")
