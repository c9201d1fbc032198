"""The controller against the Kubernetes API test server (real kubernetes-asyncio) and a real S3 server.

The seed's dataset.yaml, placeholders filled to point at the test S3 server, becomes a PV, PVC, config,
headless Service and worker StatefulSet, and the seed's status columns.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from controller import kubeio
from controller.kubeio import Kube
from controller.loop import Controller
from controller.objects import CSI_DRIVER, Settings
from controller.podfinish import STOP_ANNOTATION
from controller.reconciler import FINALIZER, Reconciler
from eddy.config import parse_config
from eddy.kube import ApiRequest
from eddy.quantity import human_size
from tests.support.seed import SEED

OBJECTS = [("data/a.bin", 300 * 1024), ("data/b.bin", 700 * 1024), ("data/sub/c.bin", 1024 * 1024 + 7)]


def seed_docs(bucket: str, endpoint: str) -> list[dict[str, Any]]:
    text = (SEED / "dataset.yaml").read_text()
    text = text.replace("<oss_bucket>", bucket).replace("<bucket_dir>", "data")
    text = text.replace("<oss_endpoint>", endpoint)
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = "default"
    return docs


def secret_doc(s3: Any) -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "access-key", "namespace": "default"},
        "data": {"fs.oss.accessKeyId": b64(s3.access_key), "fs.oss.accessKeySecret": b64(s3.secret_key)},
    }


class Bed:
    def __init__(self, api: Any, kube: Kube, reconciler: Reconciler, s3: Any, bucket: str) -> None:
        self.api, self.kube, self.reconciler, self.s3, self.bucket = api, kube, reconciler, s3, bucket
        self.writes: list[ApiRequest] = []  # the controller's write requests, seen by its request hook
        kube.add_request_hook(lambda request: self.writes.append(request) if request.writes else None)

    async def apply_seed(self, bucket: str | None = None) -> list[dict[str, Any]]:
        docs = seed_docs(bucket or self.bucket, self.s3.endpoint)
        await self.kube.create(kubeio.SECRETS, secret_doc(self.s3), "default")
        await self.kube.create(kubeio.DATASETS, docs[0], "default")
        await self.kube.create(kubeio.RUNTIMES, docs[1], "default")
        return docs

    def get(self, resource: str, name: str, ns: str | None = "default") -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.api.get_object(resource, ns, name)
        return obj


@pytest.fixture
async def bed(kube_api: Any, s3_server: Any, s3_bucket: str) -> AsyncIterator[Bed]:
    for key, size in OBJECTS:
        s3_server.put_object(s3_bucket, key, b"x" * size)
    s3_server.put_object(s3_bucket, "elsewhere.bin", b"y" * 4096)  # outside the mount's prefix
    kube = await Kube.connect(kube_api.url)
    reconciler = Reconciler(kube, Settings(image="registry.test/eddy:9"), ufs_period=3600)
    try:
        yield Bed(kube_api, kube, reconciler, s3_server, s3_bucket)
    finally:
        await reconciler.close()
        await kube.close()


async def test_seed_dataset_becomes_pv_pvc_config_and_workers(bed: Bed) -> None:
    await bed.apply_seed()
    again = await bed.reconciler.reconcile_dataset("default", "serverless-data")
    assert again is not None

    pv = bed.get("persistentvolumes", "default-serverless-data", None)
    assert pv is not None
    labels = {"fluid.io/s-default-serverless-data": "true", "fluid.io/dataset-id": "default-serverless-data"}
    assert labels.items() <= pv["metadata"]["labels"].items()
    assert pv["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert pv["spec"]["csi"]["driver"] == CSI_DRIVER
    assert pv["spec"]["claimRef"] == {"namespace": "default", "name": "serverless-data"}

    pvc = bed.get("persistentvolumeclaims", "serverless-data")
    assert pvc is not None
    assert labels.items() <= pvc["metadata"]["labels"].items()
    assert pvc["spec"]["volumeName"] == "default-serverless-data"
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    ds = bed.get("datasets.data.fluid.io", "serverless-data")
    assert ds is not None
    owner = pvc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Dataset", ds["metadata"]["uid"], True)
    assert FINALIZER in ds["metadata"]["finalizers"]

    svc = bed.get("services", "serverless-data-eddy-worker")
    assert svc is not None and svc["spec"]["clusterIP"] == "None"

    sts = bed.get("statefulsets.apps", "serverless-data-eddy-worker")
    assert sts is not None
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == "serverless-data-eddy-worker"
    pod = sts["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["image"] == "registry.test/eddy:9"
    assert worker["args"][0] == "worker"
    volumes = {v["name"]: v for v in pod["volumes"]}
    tier = volumes["tier-0-mem"]
    assert tier["emptyDir"] == {"medium": "Memory", "sizeLimit": "5Gi"}
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts["tier-0-mem"] == "/dev/shm"
    assert volumes["secret-0"]["secret"]["secretName"] == "access-key"
    assert mounts["secret-0"] == "/etc/eddy/secrets/access-key"
    selector = sts["spec"]["selector"]["matchLabels"]
    assert selector.items() <= sts["spec"]["template"]["metadata"]["labels"].items()

    cm = bed.get("configmaps", "serverless-data-eddy-config")
    assert cm is not None
    text = cm["data"]["eddy.yaml"]
    config = parse_config(yaml.safe_load(text))
    assert config.workers() == [
        "http://serverless-data-eddy-worker-0.serverless-data-eddy-worker.default.svc:8080"
    ]
    assert config.dataset.mounts[0].encrypt_options[0].secret.name == "access-key"
    assert bed.s3.secret_key not in text and bed.s3.access_key not in text
    assert bed.s3.secret_key not in yaml.safe_dump(sts)

    status = ds["status"]
    total = sum(size for _, size in OBJECTS)
    assert status["phase"] == "Bound"
    assert status["ufsTotal"] == human_size(total) == "1.98MiB"
    assert status["cacheStates"] == {
        "cached": "0.00B", "cacheCapacity": "5.00GiB", "cachedPercentage": "0.0%"}
    assert status["conditions"][0]["status"] == "True"

    runtime = bed.get("jindoruntimes.data.fluid.io", "serverless-data")
    assert runtime is not None
    assert runtime["status"]["masterPhase"] == "Ready"
    assert runtime["status"]["fusePhase"] == "Ready"
    assert runtime["status"]["workerPhase"] == "NotReady"  # no worker pod is ready yet

    # The StatefulSet controller reports its pod ready: the runtime becomes Ready, as in the seed.
    sts["status"] = {"replicas": 1, "readyReplicas": 1}
    bed.api.put(sts)
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    runtime = bed.get("jindoruntimes.data.fluid.io", "serverless-data")
    assert runtime is not None
    assert {k: runtime["status"][k] for k in ("masterPhase", "workerPhase", "fusePhase")} == {
        "masterPhase": "Ready", "workerPhase": "Ready", "fusePhase": "Ready"}
    assert runtime["status"]["workerNumberReady"] == 1


async def test_reconcile_twice_writes_nothing(bed: Bed) -> None:
    await bed.apply_seed()
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    writes = len(bed.writes)
    assert {r.verb for r in bed.writes} >= {"create", "patch"}  # the seed, then the first reconcile
    version = bed.api.resource_version
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    assert bed.writes[writes:] == []
    assert bed.api.resource_version == version
    assert not [c for c in bed.api.calls if isinstance(c, tuple) and c[0] in ("create", "patch", "update")
                and bed.api.calls[c] > 1 and "status" not in c[1] and c[1] != "datasets.data.fluid.io"
                and c not in (("create", "secrets"), ("create", "events"))]  # seed credentials + token; the
    # first reconcile's Events (phases set); `writes` above shows the second one recorded none
    tokens = bed.get("secrets", "serverless-data-eddy-token")
    assert tokens is not None and sorted(tokens["data"]) == ["admin", "read"]


async def test_replicas_change_updates_the_statefulset_and_capacity(bed: Bed) -> None:
    await bed.apply_seed()
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    before = bed.get("statefulsets.apps", "serverless-data-eddy-worker")
    assert before is not None
    await bed.kube.patch(kubeio.RUNTIMES, "serverless-data", {"spec": {"replicas": 3}}, "default")
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    sts = bed.get("statefulsets.apps", "serverless-data-eddy-worker")
    assert sts is not None and sts["spec"]["replicas"] == 3
    # Scaling does not roll the running workers (their cache would be lost).
    assert sts["spec"]["template"] == before["spec"]["template"]
    cm = bed.get("configmaps", "serverless-data-eddy-config")
    assert cm is not None and len(parse_config(yaml.safe_load(cm["data"]["eddy.yaml"])).workers()) == 3
    ds = bed.get("datasets.data.fluid.io", "serverless-data")
    assert ds is not None and ds["status"]["cacheStates"]["cacheCapacity"] == "15.00GiB"


async def test_delete_waits_for_pods_then_cleans_up(bed: Bed) -> None:
    await bed.apply_seed()
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    user = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "serverless-data"}}]},
        "status": {"phase": "Running"},
    }
    bed.api.put(user)
    await bed.kube.delete(kubeio.DATASETS, "serverless-data", "default")
    again = await bed.reconciler.reconcile_dataset("default", "serverless-data")
    assert again is not None  # waits for the pod
    ds = bed.get("datasets.data.fluid.io", "serverless-data")
    assert ds is not None and ds["metadata"].get("deletionTimestamp")
    assert "reader" in ds["status"]["conditions"][0]["message"]
    assert bed.get("persistentvolumeclaims", "serverless-data") is not None

    bed.api.remove("pods", "default", "reader")
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    assert bed.get("datasets.data.fluid.io", "serverless-data") is None
    for resource, name, ns in [
        ("persistentvolumes", "default-serverless-data", None),
        ("persistentvolumeclaims", "serverless-data", "default"),
        ("configmaps", "serverless-data-eddy-config", "default"),
        ("services", "serverless-data-eddy-worker", "default"),
        ("statefulsets.apps", "serverless-data-eddy-worker", "default"),
    ]:
        assert bed.get(resource, name, ns) is None, resource
    # The runtime's owner reference to the Dataset (as Fluid's) lets garbage collection remove it too.
    assert bed.get("jindoruntimes.data.fluid.io", "serverless-data") is None


async def test_bad_mount_sets_a_condition_and_makes_nothing(bed: Bed) -> None:
    docs = [d for d in yaml.safe_load_all((SEED / "dataset.yaml").read_text()) if d]  # placeholders left
    await bed.kube.create(kubeio.DATASETS, docs[0], "default")
    await bed.kube.create(kubeio.RUNTIMES, docs[1], "default")
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    ds = bed.get("datasets.data.fluid.io", "serverless-data")
    assert ds is not None
    assert ds["status"]["phase"] == "Failed"
    message = ds["status"]["conditions"][0]["message"]
    assert "spec.mounts[0].mountPoint" in message and "placeholder" in message
    assert bed.api.objects("persistentvolumes") == []
    for resource in ("persistentvolumeclaims", "configmaps", "services", "statefulsets.apps"):
        assert bed.api.objects(resource, "default") == [], resource
    runtime = bed.get("jindoruntimes.data.fluid.io", "serverless-data")
    assert runtime is not None and runtime["status"]["masterPhase"] == "NotReady"


async def test_runtime_without_dataset_waits_with_a_condition(bed: Bed) -> None:
    docs = seed_docs(bed.bucket, bed.s3.endpoint)
    await bed.kube.create(kubeio.RUNTIMES, docs[1], "default")
    await bed.reconciler.reconcile_dataset("default", "serverless-data")
    runtime = bed.get("jindoruntimes.data.fluid.io", "serverless-data")
    assert runtime is not None
    cond = runtime["status"]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "DatasetNotFound")
    assert "default/serverless-data" in cond["message"]
    assert bed.api.objects("statefulsets.apps", "default") == []


async def test_unreachable_store_keeps_bound_with_a_condition(bed: Bed) -> None:
    docs = seed_docs(bed.bucket, "http://127.0.0.1:9")  # nothing listens on the discard port
    await bed.kube.create(kubeio.SECRETS, secret_doc(bed.s3), "default")
    await bed.kube.create(kubeio.DATASETS, docs[0], "default")
    await bed.kube.create(kubeio.RUNTIMES, docs[1], "default")
    reconciler = Reconciler(bed.kube, Settings(), ufs_period=3600)
    try:
        await asyncio.wait_for(reconciler.reconcile_dataset("default", "serverless-data"), 60)
    finally:
        await reconciler.close()
    ds = bed.get("datasets.data.fluid.io", "serverless-data")
    assert ds is not None
    assert ds["status"]["conditions"][0]["reason"] == "UfsUnavailable"
    assert bed.s3.secret_key not in ds["status"]["conditions"][0]["message"]
    assert bed.get("statefulsets.apps", "serverless-data-eddy-worker") is not None


async def test_missing_or_binary_secret_values_give_a_condition_without_them(bed: Bed) -> None:
    """A Secret with a binary key and without the key the mount needs: Bound, a condition naming the
    secret and key, and neither the bytes nor a decoder's message quoting them anywhere in the status."""
    docs = seed_docs(bed.bucket, bed.s3.endpoint)
    binary = b"\x82\xff-not-text"
    secret = secret_doc(bed.s3)
    del secret["data"]["fs.oss.accessKeySecret"]
    secret["data"]["blob"] = base64.b64encode(binary).decode()
    await bed.kube.create(kubeio.SECRETS, secret, "default")
    await bed.kube.create(kubeio.DATASETS, docs[0], "default")
    await bed.kube.create(kubeio.RUNTIMES, docs[1], "default")
    reconciler = Reconciler(bed.kube, Settings(), ufs_period=3600)
    try:
        await asyncio.wait_for(reconciler.reconcile_dataset("default", "serverless-data"), 60)
    finally:
        await reconciler.close()
    ds = bed.get("datasets.data.fluid.io", "serverless-data")
    assert ds is not None and ds["status"]["phase"] == "Bound"
    condition = ds["status"]["conditions"][0]
    assert condition["reason"] == "UfsUnavailable"
    assert "access-key" in condition["message"] and "fs.oss.accessKeySecret" in condition["message"]
    status = json.dumps(ds["status"])
    assert "codec" not in status and "0x82" not in status and bed.s3.access_key not in status


async def test_finished_classic_pod_gets_its_sidecar_stopped(bed: Bed) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "step", "namespace": "default",
                     "labels": {"done.sidecar.fluid.io/inject": "true"}},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "eddy-serverless-data", "image": "eddy",
             "env": [{"name": "EDDY_DATASET", "value": "default/serverless-data"}]},
            {"name": "main", "image": "busybox"}]},
        "status": {"containerStatuses": [
            {"name": "eddy-serverless-data", "state": {"running": {}}},
            {"name": "main", "state": {"running": {}}}]},
    }
    bed.api.put(pod)
    await bed.reconciler.reconcile_pod("default", "step")
    live = bed.get("pods", "step")
    assert live is not None and STOP_ANNOTATION not in (live["metadata"].get("annotations") or {})
    live["status"]["containerStatuses"][1]["state"] = {"terminated": {"exitCode": 1}}  # failed: Fluid #1948
    bed.api.put(live)
    await bed.reconciler.reconcile_pod("default", "step")
    live = bed.get("pods", "step")
    assert live is not None and live["metadata"]["annotations"][STOP_ANNOTATION] == "true"


async def test_controller_loop_reconciles_from_watches(bed: Bed) -> None:
    controller = Controller(bed.kube, bed.reconciler, resync=3600, concurrency=2)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.synced.wait(), 10)
        # A broken dataset first: the loop must carry on with the good one.
        broken = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset",
                  "metadata": {"name": "broken", "namespace": "default"},
                  "spec": {"mounts": [{"mountPoint": "hdfs://nope"}]}}
        await bed.kube.create(kubeio.DATASETS, broken, "default")
        await bed.apply_seed()

        async def until(check: Any) -> None:
            for _ in range(200):
                if check():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"condition not reached in 10 s: queued={controller._queued} "
                                 f"active={controller._active} timers={list(controller._timers)} "
                                 f"qsize={controller.queue.qsize()} reqs={bed.api.requests[-8:]}")

        def phase(name: str) -> str:
            ds = bed.get("datasets.data.fluid.io", name)
            return str(((ds or {}).get("status") or {}).get("phase"))

        await until(lambda: phase("serverless-data") == "Bound")
        await until(lambda: phase("broken") == "Failed")
        # The server forgets its history and drops every watch: the loop re-lists (410) and carries on.
        bed.api.compact()
        bed.api.close_watches()
        await asyncio.sleep(0.2)
        await bed.kube.patch(kubeio.RUNTIMES, "serverless-data", {"spec": {"replicas": 2}}, "default")

        def replicas() -> int:
            sts = bed.get("statefulsets.apps", "serverless-data-eddy-worker")
            return int((sts or {}).get("spec", {}).get("replicas") or 0)

        await until(lambda: replicas() == 2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
