"""The reconciler's decisions without a network: `plan_dataset` and `bound_statuses` of what was read."""

from __future__ import annotations

import base64
import copy
from typing import Any

from controller.objects import Settings, desired_objects
from controller.plan import (
    FINALIZER,
    STATUS_PERIOD,
    WAIT_PODS_PERIOD,
    Measured,
    Ref,
    Seen,
    bound_statuses,
    count_sidecars,
    owned_refs,
    plan_dataset,
)
from tests.test_controller_objects import docs

NS, NAME = "default", "serverless-data"
NOW = "2026-11-30T07:00:00Z"
SETTINGS = Settings(image="registry.test/eddy:9")
STS = ("StatefulSet", "serverless-data-eddy-worker")
MEASURED = Measured(ufs_total=3 * 2**20, ufs_files=3, ufs_error="", cached=2**20, fuses=(2, 1))
Obj = dict[str, Any]


def settled_docs(replicas: int = 1) -> tuple[Obj, Obj]:
    """The seed's Dataset with this controller's finalizer and its runtime owned by it."""
    ds, rt = docs(NAME, NS)
    ds["metadata"]["finalizers"] = [FINALIZER]
    rt["metadata"]["uid"] = "runtime-uid"
    rt["metadata"]["ownerReferences"] = [{"uid": ds["metadata"]["uid"], "kind": "Dataset"}]
    rt["spec"]["replicas"] = replicas
    return ds, rt


def applied(ds: Obj, rt: Obj, ready: int | None = None) -> dict[tuple[str, str], Obj]:
    """The live objects once the pair's objects are created (the StatefulSet with `ready` replicas)."""
    live = {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(ds, rt, SETTINGS)}
    sts = live[("StatefulSet", f"{ds['metadata']['name']}-eddy-worker")]
    if ready is not None:
        sts["status"] = {"replicas": sts["spec"]["replicas"], "readyReplicas": ready}
    return live


def seen(ds: Obj | None, rt: Obj | None, live: dict[tuple[str, str], Obj] | None = None,
         pods: list[Obj] | None = None) -> Seen:
    return Seen(NS, NAME, ds, rt, live or {}, NOW, pods or [])


def statuses(ds: Obj, rt: Obj, live: dict[tuple[str, str], Obj],
             measured: Measured = MEASURED) -> tuple[Obj, Obj]:
    plan = plan_dataset(seen(ds, rt, live), SETTINGS)
    assert plan.bound is not None
    dataset, runtime = bound_statuses(plan.bound, measured, NOW)
    return dataset.status, runtime.status


def test_a_new_dataset_gets_its_finalizer_its_runtime_owned_and_every_object() -> None:
    ds, rt = docs(NAME, NS)
    plan = plan_dataset(seen(ds, rt), SETTINGS)
    [finalizer, owner] = plan.patches
    assert finalizer.ref == Ref("Dataset", NAME, NS)
    assert finalizer.body["metadata"]["finalizers"] == [FINALIZER]
    assert owner.ref == Ref("JindoRuntime", NAME, NS)
    assert owner.body["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"]
    assert [(o["kind"], o["metadata"]["name"]) for o in plan.creates] == [
        (ref.kind, ref.name) for ref in owned_refs(NS, NAME)]
    assert (plan.updates, plan.deletes, plan.release, plan.statuses) == ((), (), None, ())
    assert plan.requeue == STATUS_PERIOD
    assert plan.bound is not None and (plan.bound.ready, plan.bound.current, plan.bound.token) == (0, 0, "")
    dataset, runtime = bound_statuses(plan.bound, MEASURED, NOW)
    assert dataset.write and dataset.status["phase"] == "Bound"
    assert dataset.status["ufsTotal"] == "3.00MiB" and dataset.status["fileNum"] == "3"
    assert dataset.status["cacheStates"] == {"cached": "1.00MiB", "cacheCapacity": "5.00GiB",
                                             "cachedPercentage": "33.3%"}
    assert [(e.reason, e.message, e.type) for e in dataset.events] == [
        ("Bound", "Dataset phase unset -> Bound", "Normal")]
    assert {k: runtime.status[k] for k in ("masterPhase", "workerPhase", "fusePhase")} == {
        "masterPhase": "Ready", "workerPhase": "NotReady", "fusePhase": "Ready"}
    assert (runtime.status["desiredFuseNumberScheduled"], runtime.status["fuseNumberReady"]) == (2, 1)


def test_applied_objects_and_written_status_give_an_empty_plan() -> None:
    ds, rt = settled_docs()
    live = applied(ds, rt, ready=1)
    plan = plan_dataset(seen(ds, rt, live), SETTINGS)
    assert (plan.patches, plan.creates, plan.updates, plan.deletes) == ((), (), (), ())
    ds["status"], rt["status"] = statuses(ds, rt, live)
    plan = plan_dataset(seen(ds, rt, live), SETTINGS)
    assert plan.bound is not None
    for write in bound_statuses(plan.bound, MEASURED, "2026-11-30T08:00:00Z"):  # later: same times kept
        assert not write.write and write.events == ()
    # A server default in a live object is no difference; a changed field is.
    live[STS]["spec"]["revisionHistoryLimit"] = 10
    assert plan_dataset(seen(ds, rt, live), SETTINGS).updates == ()
    live[STS]["spec"]["template"]["spec"]["containers"][0]["image"] = "other"
    [update] = plan_dataset(seen(ds, rt, live), SETTINGS).updates
    assert update.ref == Ref(*STS, NS)
    assert update.body["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/eddy:9"


def test_worker_phases_follow_the_ready_replicas() -> None:
    ds, rt = settled_docs(replicas=3)
    phases = []
    for ready in (0, 1, 3):
        _, runtime = statuses(ds, rt, applied(ds, rt, ready=ready))
        ready_cond = runtime["conditions"][0]
        phases.append((runtime["workerPhase"], runtime["workerNumberReady"], ready_cond["status"],
                       ready_cond["message"]))
    assert phases == [("NotReady", 0, "False", "0/3 workers ready"),
                      ("PartialReady", 1, "False", "1/3 workers ready"),
                      ("Ready", 3, "True", "3/3 workers ready")]


def test_an_unreachable_store_keeps_bound_with_a_condition_and_the_last_size() -> None:
    ds, rt = settled_docs()
    sick = Measured(ufs_total=None, ufs_files=None, ufs_error="cannot list the mounts: timeout", cached=0)
    dataset, _ = statuses(ds, rt, applied(ds, rt), sick)
    assert dataset["phase"] == "Bound" and "ufsTotal" not in dataset
    ready = dataset["conditions"][0]
    assert (ready["reason"], ready["status"]) == ("UfsUnavailable", "False")


def test_an_invalid_dataset_fails_and_its_runtime_waits() -> None:
    ds, rt = settled_docs()
    ds["spec"]["mounts"][0]["mountPoint"] = "hdfs://nope"
    plan = plan_dataset(seen(ds, rt, applied(*settled_docs())), SETTINGS)
    assert (plan.creates, plan.updates, plan.deletes, plan.bound, plan.requeue) == ((), (), (), None, None)
    dataset, runtime = plan.statuses
    assert dataset.status["phase"] == "Failed" and dataset.status["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.mounts[0].mountPoint" in dataset.status["conditions"][0]["message"]
    assert runtime.status["masterPhase"] == "NotReady"
    assert runtime.status["conditions"][0]["reason"] == "DatasetInvalid"
    assert plan.logs and "is invalid" in plan.logs[0][1]


def test_an_invalid_runtime_leaves_the_dataset_not_bound() -> None:
    ds, rt = settled_docs()
    rt["spec"]["tieredstore"]["levels"][0]["quota"] = "lots"
    plan = plan_dataset(seen(ds, rt), SETTINGS)
    assert (plan.creates, plan.bound) == ((), None)
    dataset, runtime = plan.statuses
    assert (dataset.ref.kind, dataset.status["phase"]) == ("Dataset", "NotBound")
    assert (runtime.ref.kind, runtime.status["conditions"][0]["reason"]) == ("JindoRuntime", "RuntimeInvalid")


def test_a_runtime_without_its_dataset_waits_and_nothing_is_made() -> None:
    _, rt = settled_docs()
    plan = plan_dataset(seen(None, rt), SETTINGS)
    assert (plan.patches, plan.creates, plan.deletes) == ((), (), ())
    [write] = plan.statuses
    assert write.ref == Ref("JindoRuntime", NAME, NS)
    cond = write.status["conditions"][0]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False", "DatasetNotFound", f"waiting for Dataset {NS}/{NAME}")
    assert write.status["desiredWorkerNumberScheduled"] == 1  # from the runtime's spec
    assert plan_dataset(seen(None, None), SETTINGS).statuses == ()


def test_a_missing_runtime_waits_then_once_deleted_takes_its_objects_along() -> None:
    ds, rt = settled_docs()
    waiting = plan_dataset(seen(ds, None), SETTINGS)
    assert waiting.deletes == ()
    [write] = waiting.statuses
    assert write.ref == Ref("Dataset", NAME, NS)
    assert (write.status["phase"], write.status["conditions"][0]["reason"]) == ("NotBound", "RuntimeNotFound")
    live = applied(ds, rt)
    del live[("Service", "serverless-data-eddy-worker")]  # already gone: not deleted again
    gone = plan_dataset(seen(ds, None, live), SETTINGS)
    assert [(r.kind, r.namespace) for r in gone.deletes] == [
        ("StatefulSet", NS), ("NetworkPolicy", NS), ("PodDisruptionBudget", NS), ("ConfigMap", NS),
        ("PersistentVolumeClaim", NS), ("PersistentVolume", None)]
    [write] = gone.statuses
    assert write.status["conditions"][0]["reason"] == "RuntimeDeleted"
    assert [(e.reason, e.type) for e in write.events] == [
        ("NotBound", "Warning"), ("RuntimeDeleted", "Warning")]


def test_zero_replicas_scale_the_workers_to_none_and_the_capacity_to_zero() -> None:
    ds, rt = settled_docs(replicas=1)
    live = applied(ds, rt, ready=1)
    ds, rt = settled_docs(replicas=0)
    plan = plan_dataset(seen(ds, rt, live), SETTINGS)
    updated = {u.ref.kind: u.body for u in plan.updates}
    assert updated["StatefulSet"]["spec"]["replicas"] == 0
    live[STS]["spec"]["replicas"], live[STS]["status"] = 0, {"replicas": 0, "readyReplicas": 0}
    dataset, runtime = statuses(ds, rt, live)
    assert dataset["cacheStates"]["cacheCapacity"] == "0.00B"
    assert runtime["workerPhase"] == "NotReady"  # none asked for: never Ready
    ready = runtime["conditions"][0]
    assert (ready["message"], ready["status"]) == ("0/0 workers ready", "False")


def test_a_scale_change_updates_workers_and_config_but_not_the_pod_template() -> None:
    ds, rt = settled_docs(replicas=1)
    live = applied(ds, rt, ready=1)
    ds, rt = settled_docs(replicas=3)
    plan = plan_dataset(seen(ds, rt, live), SETTINGS)
    assert plan.creates == ()
    updated = {u.ref.kind: u.body for u in plan.updates}
    assert sorted(updated) == ["ConfigMap", "StatefulSet"]
    assert updated["StatefulSet"]["spec"]["replicas"] == 3
    assert updated["StatefulSet"]["spec"]["template"] == live[STS]["spec"]["template"]  # no rolling restart
    dataset, runtime = statuses(ds, rt, live)
    assert dataset["cacheStates"]["cacheCapacity"] == "15.00GiB"
    assert (runtime["desiredWorkerNumberScheduled"], runtime["currentWorkerNumberScheduled"]) == (3, 1)


def _pod(name: str, *, claim: str = "", dataset_env: str = "", phase: str = "Running") -> Obj:
    container: Obj = {"name": "app", "image": "busybox"}
    if dataset_env:
        container["env"] = [{"name": "EDDY_DATASET", "value": dataset_env}]
    spec: Obj = {"containers": [container]}
    if claim:
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    return {"metadata": {"name": name, "namespace": NS}, "spec": spec, "status": {"phase": phase}}


def test_deletion_waits_for_the_pods_using_the_dataset_then_deletes_and_releases() -> None:
    ds, rt = settled_docs()
    live = applied(ds, rt)
    ds["metadata"]["deletionTimestamp"] = NOW
    ds["metadata"]["finalizers"] = ["other.io/keep", FINALIZER]
    pods = [_pod("reader", claim=NAME), _pod("sidecar", dataset_env=f"{NS}/{NAME}"),
            _pod("done", claim=NAME, phase="Succeeded"), _pod("elsewhere", claim="other")]
    waiting = plan_dataset(seen(ds, rt, live, pods), SETTINGS)
    assert (waiting.deletes, waiting.release, waiting.requeue) == ((), None, WAIT_PODS_PERIOD)
    [write] = waiting.statuses
    assert write.write and write.status["conditions"][0]["reason"] == "InUse"
    assert write.status["conditions"][0]["message"].endswith("dataset: reader, sidecar")

    plan = plan_dataset(seen(ds, rt, live, pods[2:]), SETTINGS)
    assert [r.kind for r in plan.deletes] == [
        "StatefulSet", "Service", "ConfigMap", "PersistentVolumeClaim", "PersistentVolume"]
    assert plan.release is not None and plan.release.body == {"metadata": {"finalizers": ["other.io/keep"]}}
    assert (plan.statuses, plan.creates, plan.requeue) == ((), (), None)
    # Not ours to clean up (finalizer gone): nothing at all.
    ds["metadata"]["finalizers"] = ["other.io/keep"]
    assert plan_dataset(seen(ds, rt, live, pods), SETTINGS) == plan_dataset(seen(None, None), SETTINGS)


def test_the_statefulset_is_found_by_name_not_by_position() -> None:
    ds, rt = settled_docs(replicas=2)
    ours = applied(ds, rt, ready=2)
    other_ds, other_rt = docs("other", NS)
    others = applied(other_ds, other_rt, ready=0)
    forwards = {**ours, **others}  # another Dataset's StatefulSet read last
    backwards = dict(reversed(list({**others, **ours}.items())))
    plans = [plan_dataset(seen(ds, rt, live), SETTINGS) for live in (forwards, backwards)]
    for plan in plans:
        assert plan.bound is not None and (plan.bound.ready, plan.bound.current) == (2, 2)
        assert plan.creates == () and plan.updates == ()
    _, runtime = statuses(ds, rt, backwards)
    assert runtime["workerPhase"] == "Ready"


def test_the_workers_read_token_comes_from_their_secret_and_stays_out_of_reprs() -> None:
    ds, rt = settled_docs()
    live = applied(ds, rt)
    secret = copy.deepcopy(live[("Secret", "serverless-data-eddy-token")])
    token = base64.b64decode(secret["data"]["read"]).decode()
    secret["data"]["admin"] = base64.b64encode(b"changed").decode()
    live[("Secret", "serverless-data-eddy-token")] = secret
    plan = plan_dataset(seen(ds, rt, live), SETTINGS)
    assert plan.bound is not None and plan.bound.token == token
    assert token not in repr(plan.bound) and token not in repr(plan)
    assert plan.updates == ()  # the token Secret is never rewritten


def test_sidecars_are_counted_per_dataset_and_readiness() -> None:
    key = f"{NS}/{NAME}"
    ready = _pod("a", dataset_env=key)
    ready["status"]["containerStatuses"] = [{"name": "app", "ready": True}]
    starting = _pod("b", dataset_env=key)
    assert count_sidecars([ready, starting, _pod("c", dataset_env="default/other"),
                           _pod("d", dataset_env=key, phase="Failed")], key) == (2, 1)
