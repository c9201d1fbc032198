"""Fluid's lifecycle on the sandbox API server: the runtime's owner reference, deleting the runtime
(workers, PV and PVC go, the Dataset is NotBound), status fields, the read-only condition, Events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller import kubeio
from controller.kubeio import Kube
from controller.objects import Settings
from controller.reconciler import Reconciler
from eddy.kube.resources import EVENTS
from eddy.names import LABEL_INJECT_DONE
from tests.test_controller import OBJECTS, secret_doc, seed_docs

NS, NAME = "default", "serverless-data"


@pytest.fixture
async def env(kube_api: Any, s3_server: Any, s3_bucket: str) -> AsyncIterator[tuple[Any, Kube, Reconciler]]:
    for key, size in OBJECTS:
        s3_server.put_object(s3_bucket, key, b"x" * size)
    kube = await Kube.connect(kube_api.url)
    reconciler = Reconciler(kube, Settings(image="registry.test/eddy:9"), ufs_period=3600)
    ds, rt = seed_docs(s3_bucket, s3_server.endpoint)[:2]
    ds["spec"]["accessModes"] = ["ReadWriteMany"]
    rt["spec"]["worker"] = {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
    await kube.create(kubeio.SECRETS, secret_doc(s3_server), NS)
    await kube.create(kubeio.DATASETS, ds, NS)
    await kube.create(kubeio.RUNTIMES, rt, NS)
    try:
        yield kube_api, kube, reconciler
    finally:
        await reconciler.close()
        await kube.close()


async def events(kube: Kube, kind: str) -> list[tuple[str, str, str]]:
    items, _ = await kube.list(EVENTS, NS)
    return [(e["type"], e["reason"], e["message"]) for e in items if e["involvedObject"]["kind"] == kind]


async def get(kube: Kube, res: Any, name: str, ns: str | None = NS) -> dict[str, Any] | None:
    obj: dict[str, Any] | None = await kube.get_or_none(res, name, ns)
    return obj


async def test_runtime_is_owned_by_its_dataset_and_status_is_fluids(env: Any) -> None:
    _, kube, reconciler = env
    await reconciler.reconcile_dataset(NS, NAME)
    ds = await get(kube, kubeio.DATASETS, NAME)
    rt = await get(kube, kubeio.RUNTIMES, NAME)
    assert ds is not None and rt is not None
    [owner] = rt["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["apiVersion"]) == (
        "Dataset", NAME, ds["metadata"]["uid"], "data.fluid.io/v1alpha1")
    status = ds["status"]
    assert status["phase"] == "Bound" and status["fileNum"] == str(len(OBJECTS))
    assert status["runtimes"] == [{"name": NAME, "namespace": NS, "category": "Accelerate", "type": "jindo",
                                   "masterReplicas": 1}]
    # A read-write access mode on Eddy's read-only cache: a condition and a warning Event, not EROFS later.
    read_only = next(c for c in status["conditions"] if c["type"] == "ReadOnlyCache")
    assert read_only["status"] == "True" and "EROFS" in read_only["message"]
    ds_events = await events(kube, "Dataset")
    assert ("Normal", "Bound", "Dataset phase unset -> Bound") in ds_events
    assert any(t == "Warning" and r == "ReadWriteRequested" for t, r, _ in ds_events)
    sts = await get(kube, kubeio.STATEFULSETS, f"{NAME}-eddy-worker")
    assert sts is not None
    resources = sts["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "5Gi"}}  # raised to the MEM quota
    pv = await get(kube, kubeio.PVS, f"{NS}-{NAME}", None)
    assert pv is not None and pv["metadata"]["annotations"]["CreatedBy"] == "fluid"

    # Workers and one injected pod become ready: counts, phase Events and setupDuration follow.
    await kube.patch_status(kubeio.STATEFULSETS, f"{NAME}-eddy-worker",
                            {"status": {"replicas": 1, "readyReplicas": 1}}, NS)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "app", "namespace": NS, "labels": {LABEL_INJECT_DONE: "true"}},
           "spec": {"containers": [
               {"name": "eddy-serverless-data", "image": "eddy", "env": [
                   {"name": "EDDY_DATASET", "value": f"{NS}/{NAME}"}]},
               {"name": "app", "image": "app"}]}}
    await kube.create(kubeio.PODS, pod, NS)
    await kube.patch_status(kubeio.PODS, "app", {"status": {"phase": "Running", "containerStatuses": [
        {"name": "eddy-serverless-data", "ready": True}, {"name": "app", "ready": True}]}}, NS)
    await reconciler.reconcile_dataset(NS, NAME)
    rt = await get(kube, kubeio.RUNTIMES, NAME)
    assert rt is not None
    counts = {k: rt["status"][k] for k in (
        "desiredWorkerNumberScheduled", "currentWorkerNumberScheduled", "workerNumberReady",
        "desiredFuseNumberScheduled", "fuseNumberReady", "masterNumberReady")}
    assert counts == {"desiredWorkerNumberScheduled": 1, "currentWorkerNumberScheduled": 1,
                      "workerNumberReady": 1, "desiredFuseNumberScheduled": 1, "fuseNumberReady": 1,
                      "masterNumberReady": 1}
    assert rt["status"]["setupDuration"].endswith("s")
    rt_events = await events(kube, "JindoRuntime")
    assert [m for _, r, m in rt_events if r == "Ready"] == ["JindoRuntime workerPhase NotReady -> Ready"]


async def test_deleting_the_runtime_removes_workers_pv_pvc_and_unbinds_the_dataset(env: Any) -> None:
    _, kube, reconciler = env
    await reconciler.reconcile_dataset(NS, NAME)
    assert await get(kube, kubeio.PVCS, NAME) is not None
    await kube.delete(kubeio.RUNTIMES, NAME, NS)
    await reconciler.reconcile_dataset(NS, NAME)
    for res, name, ns in [
        (kubeio.STATEFULSETS, f"{NAME}-eddy-worker", NS),
        (kubeio.SERVICES, f"{NAME}-eddy-worker", NS),
        (kubeio.CONFIG_MAPS, f"{NAME}-eddy-config", NS),
        (kubeio.PVCS, NAME, NS),
        (kubeio.PVS, f"{NS}-{NAME}", None),
    ]:
        assert await get(kube, res, name, ns) is None, res.plural
    ds = await get(kube, kubeio.DATASETS, NAME)
    assert ds is not None and ds["status"]["phase"] == "NotBound"
    ready = next(c for c in ds["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RuntimeDeleted"
    reasons = [(t, r) for t, r, _ in await events(kube, "Dataset")]
    assert ("Warning", "NotBound") in reasons and ("Warning", "RuntimeDeleted") in reasons
    # A new runtime binds it again; deleting the Dataset then goes through its finalizer.
    _, rt = seed_docs("unused", "http://127.0.0.1:9")[:2]
    await kube.create(kubeio.RUNTIMES, rt, NS)
    await reconciler.reconcile_dataset(NS, NAME)
    ds = await get(kube, kubeio.DATASETS, NAME)
    assert ds is not None and ds["status"]["phase"] == "Bound"
    await kube.delete(kubeio.DATASETS, NAME, NS)
    await reconciler.reconcile_dataset(NS, NAME)
    assert await get(kube, kubeio.DATASETS, NAME) is None
    assert await get(kube, kubeio.PVS, f"{NS}-{NAME}", None) is None
