"""The sandbox's workload controllers (sandbox/workloads*.py) against the sandbox API server over HTTP.

No pod runs here: the tests play the kubelet by writing pod status (Running + Ready, Succeeded,
Failed) through the API, and assert on the objects the controllers make and the status they write.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest_asyncio

from eddy.kube import DEPLOYMENTS, EVENTS, PODS, PVCS, PVS, SERVICES, STATEFULSETS, Kube
from sandbox.apiserver import AdmissionAttributes, ApiError, KubeApiServer
from sandbox.workloads import RECONCILE_RETRY, WorkloadControllers
from sandbox.workloads_endpoints import ENDPOINT_SLICES, ENDPOINTS
from sandbox.workloads_job import JOBS, format_indexes, parse_indexes
from sandbox.workloads_replicaset import REPLICASETS

Obj = dict[str, Any]
NS = "default"


@pytest_asyncio.fixture
async def cluster(kube_api: KubeApiServer) -> AsyncIterator[tuple[Kube, list[AdmissionAttributes]]]:
    seen: list[AdmissionAttributes] = []

    async def record(attrs: AdmissionAttributes) -> Obj:
        if attrs.kind.kind == "Pod":
            seen.append(attrs)
        return attrs.obj

    kube_api.admission.append(record)
    kube = await Kube.connect(url=kube_api.url)
    controllers = WorkloadControllers(kube, job_backoff=0.05)
    await controllers.start()
    try:
        yield kube, seen
    finally:
        await controllers.stop()
        await kube.close()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something other than None or False (its last AssertionError is
    raised on timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = await check()
            if result is not None and result is not False:
                return result
            error: Exception = AssertionError(f"still {result!r}")
        except AssertionError as exc:
            error = exc
        if asyncio.get_running_loop().time() > deadline:
            raise error
        await asyncio.sleep(0.05)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def kubelet(kube: Kube, pod: Obj, phase: str, ready: bool = False) -> None:
    """What the kubelet would write: phase, a pod IP, the Ready condition."""
    status: Obj = {"phase": phase, "podIP": "10.244.0.9",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                   "lastTransitionTime": _now()}]}
    await kube.patch_status(PODS, pod["metadata"]["name"], {"status": status}, NS)


async def pods_of(kube: Kube, selector: str) -> list[Obj]:
    pods, _ = await kube.list(PODS, NS, label_selector=selector)
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def template(app: str, image: str = "busybox", restart: str = "Always") -> Obj:
    return {"metadata": {"labels": {"app": app}},
            "spec": {"restartPolicy": restart, "containers": [{"name": "main", "image": image}]}}


async def test_deployment_names_scales_rolls_and_reports(cluster: Any) -> None:
    kube, admitted = cluster
    deploy = await kube.create(DEPLOYMENTS, {"metadata": {"name": "web"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}}, NS)

    first = await eventually(lambda: _count(kube, "app=web", 2))
    hash_ = first[0]["metadata"]["labels"]["pod-template-hash"]
    rs = await kube.get(REPLICASETS, f"web-{hash_}", NS)
    assert rs["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": deploy["metadata"]["uid"],
         "controller": True, "blockOwnerDeletion": True}]
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": hash_}
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    for pod in first:
        assert re.fullmatch(rf"web-{hash_}-[a-z0-9]{{5}}", pod["metadata"]["name"]), pod["metadata"]["name"]
        ref = pod["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"web-{hash_}",
                       "uid": rs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    # Created through the namespaced endpoint, without a namespace in the body (what admission sees).
    assert admitted and all(a.namespace == NS and "namespace" not in a.obj["metadata"] for a in admitted)
    assert all(a.operation == "CREATE" and a.obj["metadata"]["generateName"] == f"web-{hash_}-"
               for a in admitted)

    for pod in first:
        await kubelet(kube, pod, "Running", ready=True)

    async def steady() -> Obj | None:
        status = (await kube.get(DEPLOYMENTS, "web", NS)).get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        wanted = {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2,
                  "observedGeneration": 1}
        ok = all(status.get(k) == v for k, v in wanted.items()) and conditions.get(
            "Progressing", {}).get("reason") == "NewReplicaSetAvailable"
        return conditions if ok else None

    conditions = await eventually(steady)
    assert conditions["Available"]["status"] == "True"
    assert conditions["Available"]["reason"] == "MinimumReplicasAvailable"

    # Scale down to 1: one pod goes.
    await kube.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 1}}, NS)
    await eventually(lambda: _count(kube, "app=web", 1))

    # New template: a new hash, new pod first, the old one goes once the new one is ready.
    await kube.patch(DEPLOYMENTS, "web", {"spec": {"template": template("web", image="busybox:2")}}, NS)

    async def rolled() -> bool:
        pods = await pods_of(kube, "app=web")
        for pod in pods:
            if (pod.get("status") or {}).get("phase") != "Running":
                await kubelet(kube, pod, "Running", ready=True)
        hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in pods}
        return len(pods) == 1 and hashes != {hash_}

    await eventually(rolled)
    [pod] = await pods_of(kube, "app=web")
    assert pod["spec"]["containers"][0]["image"] == "busybox:2"
    status = (await eventually(lambda: _status_is(kube, DEPLOYMENTS, "web", observedGeneration=3,
                                                  updatedReplicas=1, availableReplicas=1, replicas=1)))
    assert status["unavailableReplicas"] == 0
    sets, _ = await kube.list(REPLICASETS, NS)
    assert {s["metadata"]["name"]: s["spec"]["replicas"] for s in sets} == {
        f"web-{hash_}": 0, pod["metadata"]["name"].rsplit("-", 1)[0]: 1}
    events, _ = await kube.list(EVENTS, NS)
    assert any(e["reason"] == "ScalingReplicaSet" and e["involvedObject"]["name"] == "web" for e in events)

    # The API server's garbage collector takes the ReplicaSets with their Deployment, and their pods.
    await kube.delete(DEPLOYMENTS, "web", NS)
    await eventually(lambda: _count(kube, "app=web", 0))
    assert not (await kube.list(REPLICASETS, NS))[0]


async def test_statefulset_ordered_ready_names_claims_and_scale_down(cluster: Any) -> None:
    kube, _ = cluster
    claim = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": "1Gi"}}}}
    await kube.create(STATEFULSETS, {"metadata": {"name": "db"}, "spec": {
        "replicas": 3, "serviceName": "db-hl", "selector": {"matchLabels": {"app": "db"}},
        "template": template("db"), "volumeClaimTemplates": [claim]}}, NS)

    [zero] = await eventually(lambda: _count(kube, "app=db", 1))
    await asyncio.sleep(0.3)
    assert [p["metadata"]["name"] for p in await pods_of(kube, "app=db")] == ["db-0"], "OrderedReady"
    assert zero["spec"]["hostname"] == "db-0" and zero["spec"]["subdomain"] == "db-hl"
    assert zero["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] == "db-0"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}} in zero["spec"]["volumes"]
    assert await kube.get(PVCS, "data-db-0", NS)

    for n in range(3):
        pods = await eventually(lambda n=n: _count(kube, "app=db", n + 1))  # type: ignore[misc]
        assert [p["metadata"]["name"] for p in pods] == [f"db-{i}" for i in range(n + 1)]
        await kubelet(kube, pods[n], "Running", ready=True)
    assert {p["metadata"]["name"] for p in (await kube.list(PVCS, NS))[0]} == {"data-db-0", "data-db-1",
                                                                              "data-db-2"}
    await eventually(lambda: _status_is(kube, STATEFULSETS, "db", replicas=3, readyReplicas=3,
                                        currentReplicas=3, availableReplicas=3, updatedReplicas=3))

    # A deleted pod comes back under its name.
    old_uid = (await kube.get(PODS, "db-1", NS))["metadata"]["uid"]
    await kube.delete(PODS, "db-1", NS)

    async def recreated() -> bool:
        pod = await kube.get_or_none(PODS, "db-1", NS)
        return pod is not None and pod["metadata"]["uid"] != old_uid

    await eventually(recreated)
    await kubelet(kube, await kube.get(PODS, "db-1", NS), "Running", ready=True)

    # Scale down: the highest ordinal first, one at a time.
    await kube.patch(STATEFULSETS, "db", {"spec": {"replicas": 1}}, NS)
    await eventually(lambda: _count(kube, "app=db", 1))
    [left] = await pods_of(kube, "app=db")
    assert left["metadata"]["name"] == "db-0"
    assert (await kube.get(PVCS, "data-db-2", NS)), "claims are kept on scale down"


async def test_statefulset_parallel_and_rolling_update(cluster: Any) -> None:
    kube, _ = cluster
    await kube.create(STATEFULSETS, {"metadata": {"name": "par"}, "spec": {
        "replicas": 3, "serviceName": "par", "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": {"app": "par"}}, "template": template("par")}}, NS)
    pods = await eventually(lambda: _count(kube, "app=par", 3))
    assert [p["metadata"]["name"] for p in pods] == ["par-0", "par-1", "par-2"]
    assert all((p.get("status") or {}).get("phase") == "Pending" for p in pods)
    for pod in pods:
        await kubelet(kube, pod, "Running", ready=True)
    status = await eventually(lambda: _status_is(kube, STATEFULSETS, "par", readyReplicas=3,
                                                 currentReplicas=3))
    old_rev = status["currentRevision"]
    assert status["updateRevision"] == old_rev and old_rev.startswith("par-")

    # A new template: pods are replaced from the highest ordinal down, one at a time.
    await kube.patch(STATEFULSETS, "par", {"spec": {"template": template("par", image="busybox:2")}}, NS)
    replaced: list[str] = []

    async def rolled() -> bool:
        for pod in await pods_of(kube, "app=par"):
            rev = pod["metadata"]["labels"]["controller-revision-hash"]
            if rev != old_rev and pod["metadata"]["name"] not in replaced:
                replaced.append(pod["metadata"]["name"])
            if (pod.get("status") or {}).get("phase") != "Running":
                await kubelet(kube, pod, "Running", ready=True)
        return len(replaced) == 3

    await eventually(rolled)
    assert replaced == ["par-2", "par-1", "par-0"]
    status = await eventually(lambda: _status_is(kube, STATEFULSETS, "par", updatedReplicas=3,
                                                 currentReplicas=3, readyReplicas=3))
    assert status["currentRevision"] == status["updateRevision"] != old_rev


async def test_job_runs_to_completion(cluster: Any) -> None:
    kube, _ = cluster
    job = await kube.create(JOBS, {"metadata": {"name": "batch"}, "spec": {
        "completions": 2, "parallelism": 1, "template": template("batch", restart="Never")}}, NS)
    uid = job["metadata"]["uid"]
    for n in range(2):
        pods = await eventually(lambda n=n: _count(kube, "app=batch", n + 1))  # type: ignore[misc]
        pod = next(p for p in pods if (p.get("status") or {}).get("phase") == "Pending")
        assert re.fullmatch(r"batch-[a-z0-9]{5}", pod["metadata"]["name"])
        labels = pod["metadata"]["labels"]
        assert labels["batch.kubernetes.io/job-name"] == labels["job-name"] == "batch"
        assert labels["controller-uid"] == labels["batch.kubernetes.io/controller-uid"] == uid
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
        await kubelet(kube, pod, "Running", ready=True)
        await kubelet(kube, pod, "Succeeded")

    status = await eventually(lambda: _status_is(kube, JOBS, "batch", succeeded=2, active=0, failed=0))
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Complete"]["status"] == "True"
    assert conditions["SuccessCriteriaMet"]["status"] == "True"
    assert "Failed" not in conditions
    assert status["startTime"] <= status["completionTime"]


async def test_job_fails_after_backoff_limit(cluster: Any) -> None:
    kube, _ = cluster
    await kube.create(JOBS, {"metadata": {"name": "flaky"}, "spec": {
        "backoffLimit": 1, "template": template("flaky", restart="Never")}}, NS)
    failed: set[str] = set()
    for n in range(2):
        pods = await eventually(lambda n=n: _count(kube, "app=flaky", n + 1))  # type: ignore[misc]
        pod = next(p for p in pods if p["metadata"]["name"] not in failed)
        await kubelet(kube, pod, "Failed")
        failed.add(pod["metadata"]["name"])
    status = await eventually(lambda: _status_is(kube, JOBS, "flaky", failed=2, active=0, succeeded=0))
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Failed"]["status"] == "True"
    assert conditions["Failed"]["reason"] == "BackoffLimitExceeded"
    assert conditions["FailureTarget"]["reason"] == "BackoffLimitExceeded"
    assert "Complete" not in conditions and "completionTime" not in status
    await asyncio.sleep(0.2)
    assert len(await pods_of(kube, "app=flaky")) == 2, "no pod after the Job failed"


async def _count(kube: Kube, selector: str, count: int) -> list[Obj] | None:
    pods = [p for p in await pods_of(kube, selector) if not p["metadata"].get("deletionTimestamp")]
    return pods if len(pods) == count else None


async def _status_is(kube: Kube, resource: Any, name: str, **wanted: Any) -> Obj | None:
    status = (await kube.get(resource, name, NS)).get("status") or {}
    return status if all(status.get(k) == v for k, v in wanted.items()) else None


async def test_job_parallelism_deleted_pod_and_deadline(cluster: Any) -> None:
    kube, _ = cluster
    await kube.create(JOBS, {"metadata": {"name": "par"}, "spec": {
        "completions": 3, "parallelism": 2, "template": template("jpar", restart="Never")}}, NS)
    pods = await eventually(lambda: _count(kube, "app=jpar", 2))
    # An active pod deleted by someone else counts as failed, and is replaced.
    await kube.delete(PODS, pods[0]["metadata"]["name"], NS)
    await eventually(lambda: _status_is(kube, JOBS, "par", failed=1, active=2))
    for _ in range(3):
        pending = await eventually(lambda: _pending(kube, "app=jpar"))
        await kubelet(kube, pending, "Succeeded")
    status = await eventually(lambda: _status_is(kube, JOBS, "par", succeeded=3, failed=1, active=0))
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in status["conditions"])

    # activeDeadlineSeconds: a Job still running at its deadline fails, and its pods go.
    await kube.create(JOBS, {"metadata": {"name": "slow"}, "spec": {
        "activeDeadlineSeconds": 2, "template": template("slow", restart="Never")}}, NS)
    [pod] = await eventually(lambda: _count(kube, "app=slow", 1))
    await kubelet(kube, pod, "Running", ready=True)
    status = await eventually(lambda: _status_is(kube, JOBS, "slow", active=0), timeout=6)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Failed"]["reason"] == "DeadlineExceeded"
    await eventually(lambda: _count(kube, "app=slow", 0))


async def test_deployment_recreate_replaces_all_at_once(cluster: Any) -> None:
    kube, _ = cluster
    await kube.create(DEPLOYMENTS, {"metadata": {"name": "rec"}, "spec": {
        "replicas": 2, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": "rec"}},
        "template": template("rec")}}, NS)
    old = await eventually(lambda: _count(kube, "app=rec", 2))
    for pod in old:
        await kubelet(kube, pod, "Running", ready=True)
    await kube.patch(DEPLOYMENTS, "rec", {"spec": {"template": template("rec", image="busybox:2")}}, NS)

    async def replaced() -> list[Obj] | None:
        pods = await _count(kube, "app=rec", 2)
        images = {p["spec"]["containers"][0]["image"] for p in pods or []}
        return pods if images == {"busybox:2"} else None

    new = await eventually(replaced)
    assert not {p["metadata"]["name"] for p in old} & {p["metadata"]["name"] for p in new}


async def _pending(kube: Kube, selector: str) -> Obj | None:
    return next((p for p in await pods_of(kube, selector)
                 if (p.get("status") or {}).get("phase") == "Pending"), None)


async def test_denied_pod_is_a_failed_create_event(kube_api: KubeApiServer, cluster: Any) -> None:
    kube, _ = cluster
    denying = True

    async def deny(attrs: AdmissionAttributes) -> Obj:
        if denying and attrs.kind.kind == "Pod" and attrs.operation == "CREATE":
            raise ApiError(400, "BadRequest", 'admission webhook "guard.example" denied the request: no')
        return attrs.obj

    kube_api.admission.append(deny)
    await kube.create(DEPLOYMENTS, {"metadata": {"name": "guarded"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "guarded"}}, "template": template("guarded")}}, NS)

    async def failed_create() -> Obj | None:
        events, _ = await kube.list(EVENTS, NS)
        return next((e for e in events if e["involvedObject"]["name"].startswith("guarded-")
                     and e["reason"] == "FailedCreate"), None)

    event = await eventually(failed_create)
    assert event["type"] == "Warning" and event["source"]["component"] == "replicaset-controller"
    assert event["involvedObject"]["kind"] == "ReplicaSet"
    assert event["message"] == 'Error creating: admission webhook "guard.example" denied the request: no'

    async def deployment_says_so() -> Obj | None:
        status = (await kube.get(DEPLOYMENTS, "guarded", NS)).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == "ReplicaFailure"), None)

    condition = await eventually(deployment_says_so)
    assert condition["reason"] == "FailedCreate" and "denied the request" in condition["message"]
    denying = False
    await eventually(lambda: _count(kube, "app=guarded", 1))
    assert await eventually(lambda: _no_replica_failure(kube, "guarded"))


async def _no_replica_failure(kube: Kube, name: str) -> bool | None:
    status = (await kube.get(DEPLOYMENTS, name, NS)).get("status") or {}
    return True if all(c["type"] != "ReplicaFailure" for c in status.get("conditions") or []) else None


async def test_endpoints_and_slices_follow_pods(cluster: Any) -> None:
    kube, _ = cluster
    await kube.create(SERVICES, {"metadata": {"name": "web", "labels": {"tier": "front"}}, "spec": {
        "selector": {"app": "ep"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}, NS)
    for name, ip, ready in (("ep-a", "10.244.0.11", True), ("ep-b", "10.244.0.12", False)):
        tpl = template("ep")
        tpl["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
        await kube.create(PODS, {"metadata": {"name": name, **tpl["metadata"]}, "spec": tpl["spec"]}, NS)
        await kube.patch_status(PODS, name, {"status": {"phase": "Running", "podIP": ip, "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"}]}}, NS)

    async def endpoints_ready() -> Obj | None:
        ep = await kube.get_or_none(ENDPOINTS, "web", NS)
        subsets = (ep or {}).get("subsets") or []
        ok = subsets and [a["ip"] for a in subsets[0].get("addresses", [])] == ["10.244.0.11"] and [
            a["ip"] for a in subsets[0].get("notReadyAddresses", [])] == ["10.244.0.12"]
        return ep if ok else None

    ep = await eventually(endpoints_ready)
    assert ep["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP", "name": "http"}]
    assert ep["subsets"][0]["addresses"][0]["targetRef"]["name"] == "ep-a"
    assert ep["metadata"]["labels"] == {"tier": "front"}
    slices, _ = await kube.list(ENDPOINT_SLICES, NS, label_selector="kubernetes.io/service-name=web")
    [one] = slices
    assert one["addressType"] == "IPv4" and one["ports"] == ep["subsets"][0]["ports"]
    assert {e["addresses"][0]: e["conditions"]["ready"] for e in one["endpoints"]} == {
        "10.244.0.11": True, "10.244.0.12": False}
    assert one["metadata"]["ownerReferences"][0]["kind"] == "Service"

    # Both ready; then the Service goes, and its Endpoints and slices with it.
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    await kube.patch_status(PODS, "ep-b", ready, NS)

    async def both() -> bool:
        ep = await kube.get(ENDPOINTS, "web", NS)
        return len(ep["subsets"][0].get("addresses", [])) == 2 and "notReadyAddresses" not in ep["subsets"][0]

    await eventually(both)
    await kube.delete(SERVICES, "web", NS)

    async def cleaned() -> bool:
        slices, _ = await kube.list(ENDPOINT_SLICES, NS, label_selector="kubernetes.io/service-name=web")
        return not slices and await kube.get_or_none(ENDPOINTS, "web", NS) is None

    await eventually(cleaned)


async def test_indexed_job(cluster: Any) -> None:
    kube, _ = cluster
    await kube.create(JOBS, {"metadata": {"name": "idx"}, "spec": {
        "completions": 3, "parallelism": 2, "completionMode": "Indexed",
        "template": template("idx", restart="Never")}}, NS)
    pods = await eventually(lambda: _count(kube, "app=idx", 2))
    by_index = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]
    one = by_index["1"]
    assert re.fullmatch(r"idx-1-[a-z0-9]{5}", one["metadata"]["name"]) and one["spec"]["hostname"] == "idx-1"
    assert one["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"
    assert {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}} in one["spec"][
        "containers"][0]["env"]
    await kubelet(kube, one, "Succeeded")
    await eventually(lambda: _status_is(kube, JOBS, "idx", completedIndexes="1", succeeded=1))
    for _ in range(2):
        pending = await eventually(lambda: _pending(kube, "app=idx"))
        await kubelet(kube, pending, "Succeeded")
    status = await eventually(lambda: _status_is(kube, JOBS, "idx", completedIndexes="0-2", succeeded=3))
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in status["conditions"])


def test_completed_indexes_text() -> None:
    assert format_indexes({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert parse_indexes("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    assert format_indexes(set()) == "" and parse_indexes("") == set()


async def test_claims_bind_and_provision(kube_api: KubeApiServer, tmp_path: Path) -> None:
    kube = await Kube.connect(url=kube_api.url)
    controllers = WorkloadControllers(kube, kinds=("PersistentVolume",), volume_root=tmp_path / "volumes")
    await controllers.start()
    try:
        # Pre-bound, as Eddy's controller makes a Dataset's PV and PVC.
        await kube.create(PVS, {"metadata": {"name": "default-data"}, "spec": {
            "capacity": {"storage": "10Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "fluid",
            "hostPath": {"path": str(tmp_path)}, "claimRef": {"namespace": NS, "name": "data"}}})
        claim = await kube.create(PVCS, {"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadOnlyMany"], "storageClassName": "fluid", "volumeName": "default-data",
            "resources": {"requests": {"storage": "10Gi"}}}}, NS)
        # A free volume that fits, and one that does not.
        for name, size in (("small", "1Gi"), ("big", "8Gi")):
            await kube.create(PVS, {"metadata": {"name": name, "labels": {"tier": "fast"}}, "spec": {
                "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                "hostPath": {"path": str(tmp_path)}}})
        await kube.create(PVCS, {"metadata": {"name": "scratch"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "selector": {"matchLabels": {"tier": "fast"}},
            "resources": {"requests": {"storage": "2Gi"}}}}, NS)
        # No volume and no class: provisioned under volume_root.
        fresh = await kube.create(PVCS, {"metadata": {"name": "fresh"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}, NS)

        async def bound(name: str) -> Obj | None:
            pvc = await kube.get(PVCS, name, NS)
            return pvc if (pvc.get("status") or {}).get("phase") == "Bound" else None

        data = await eventually(lambda: bound("data"))
        assert data["status"]["capacity"] == {"storage": "10Gi"}
        assert data["spec"]["volumeName"] == "default-data"
        pv = await kube.get(PVS, "default-data")
        assert pv["status"]["phase"] == "Bound" and pv["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
        assert (await eventually(lambda: bound("scratch")))["spec"]["volumeName"] == "big"
        assert (await kube.get(PVS, "small")).get("status", {}).get("phase") != "Bound"
        made = await eventually(lambda: bound("fresh"))
        name = f"pvc-{fresh['metadata']['uid']}"
        assert made["spec"]["volumeName"] == name
        provisioned = await kube.get(PVS, name)
        path = Path(provisioned["spec"]["hostPath"]["path"])
        assert path == tmp_path / "volumes" / name and await asyncio.to_thread(path.is_dir)

        # Claims go: a provisioned volume (Delete) goes with its directory; a static one is Released.
        await kube.delete(PVCS, "fresh", NS)
        await kube.delete(PVCS, "scratch", NS)
        await eventually(lambda: _gone(kube, name))
        assert not await asyncio.to_thread(path.exists)
        await eventually(lambda: _phase_is(kube, "big", "Released"))
    finally:
        await controllers.stop()
        await kube.close()


async def _gone(kube: Kube, pv: str) -> bool | None:
    return True if await kube.get_or_none(PVS, pv) is None else None


async def _phase_is(kube: Kube, pv: str, phase: str) -> bool | None:
    return True if ((await kube.get(PVS, pv)).get("status") or {}).get("phase") == phase else None


async def test_deployment_paused_and_progress_deadline(cluster: Any) -> None:
    kube, _ = cluster
    await kube.create(DEPLOYMENTS, {"metadata": {"name": "slow"}, "spec": {
        "replicas": 1, "progressDeadlineSeconds": 1, "selector": {"matchLabels": {"app": "slowd"}},
        "template": template("slowd")}}, NS)

    async def progressing(reason: str) -> Obj | None:
        status = (await kube.get(DEPLOYMENTS, "slow", NS)).get("status") or {}
        found = next((c for c in status.get("conditions") or [] if c["type"] == "Progressing"), None)
        return found if found and found["reason"] == reason else None

    # Its pod never becomes ready: after the deadline the rollout is reported stuck.
    stuck = await eventually(lambda: progressing("ProgressDeadlineExceeded"), timeout=8)
    assert stuck["status"] == "False" and "timed out progressing" in stuck["message"]

    # Paused: a new template makes no new ReplicaSet until it is resumed.
    paused_spec = {"paused": True, "template": template("slowd", "busybox:2")}
    await kube.patch(DEPLOYMENTS, "slow", {"spec": paused_spec}, NS)
    paused = await eventually(lambda: progressing("DeploymentPaused"))
    assert paused["status"] == "Unknown"
    assert len((await kube.list(REPLICASETS, NS))[0]) == 1
    await kube.patch(DEPLOYMENTS, "slow", {"spec": {"paused": False}}, NS)

    async def two_sets() -> bool | None:
        return True if len((await kube.list(REPLICASETS, NS))[0]) == 2 else None

    await eventually(two_sets)


def test_a_failing_reconcile_is_retried_as_kube_controller_manager_does() -> None:
    """Doubling pauses with no jitter (0.2 s to 10 s here, 5 ms to 1000 s in Kubernetes), and no end."""
    pauses = [RECONCILE_RETRY.pause(n, 0.0, random.Random(n)) for n in (1, 2, 3, 4, 5, 6, 7, 1000)]
    assert pauses == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
