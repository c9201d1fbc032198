"""What one reconcile of a Dataset decides: a pure function of what was read.

`plan_dataset(seen, settings)` takes the Dataset and its same-named JindoRuntime as read, the live
objects they stand for (keyed by kind and name, never by list position) and, while the Dataset is
being deleted, the namespace's pods; it returns a `DatasetPlan`: the metadata patches, the objects to
create, update and delete, the status writes with their Events, and when to look again. No I/O, no
clock (`seen.now`), no global state: `controller/reconciler.py` reads, calls this and carries it out.

A bound Dataset's status also needs three measurements that cost I/O (the store's size, the workers'
cached bytes, the injected sidecars); the plan then names them in `bound`, and
`bound_statuses(bound, measured, now)` decides that status once they are taken.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.objects import Settings, desired_objects, owner_reference
from controller.status import (
    BOUND,
    FAILED,
    NOT_BOUND,
    Condition,
    dataset_status,
    differs,
    merge_conditions,
    read_only_condition,
    runtime_status,
    setup_duration,
)
from eddy import names
from eddy.api import API_VERSION, Dataset, JindoRuntime, ValidationError, parse_dataset, parse_runtime
from eddy.secrets import secret_values
from eddy.wire import TOKEN_READ_KEY, token_secret_name

FINALIZER = "data.fluid.io/eddy-controller"
STATUS_PERIOD = 30.0  # worker stats and readiness are looked at again this often
WAIT_PODS_PERIOD = 5.0
DATASET, RUNTIME, STATEFULSET, PV, SECRET = (
    "Dataset", "JindoRuntime", "StatefulSet", "PersistentVolume", "Secret")
Obj = dict[str, Any]


@dataclass(frozen=True)
class Ref:
    """An object by kind and name; `namespace` is None for a cluster-scoped one (the PV)."""

    kind: str
    name: str
    namespace: str | None


@dataclass(frozen=True)
class Patch:
    ref: Ref
    body: Obj


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: str = "Normal"


@dataclass(frozen=True)
class StatusWrite:
    """The status an object should have; `write` is False when the stored one already says it."""

    doc: Obj  # the object as read (its Events are recorded on it)
    status: Obj
    write: bool
    events: tuple[Event, ...] = ()

    @property
    def ref(self) -> Ref:
        meta = self.doc.get("metadata") or {}
        return Ref(str(self.doc.get("kind")), str(meta.get("name")), meta.get("namespace"))


@dataclass(frozen=True)
class Seen:
    """What the reconciler read for the key `namespace/name`."""

    namespace: str
    name: str
    dataset: Obj | None
    runtime: Obj | None
    live: Mapping[tuple[str, str], Obj]  # (kind, name) -> the live object, for those that exist
    now: str  # the status times, "%Y-%m-%dT%H:%M:%SZ"
    pods: Sequence[Obj] = ()  # the namespace's pods, read only while the Dataset awaits cleanup


@dataclass(frozen=True)
class Bound:
    """A Dataset whose objects are in place; its status waits for `Measured`."""

    dataset_doc: Obj
    runtime_doc: Obj
    dataset: Dataset
    runtime: JindoRuntime
    ready: int  # the worker StatefulSet's ready replicas
    current: int  # and its current ones
    token: str = field(repr=False)  # the workers' read token ("" while their Secret does not exist)


@dataclass(frozen=True)
class Measured:
    ufs_total: int | None  # bytes under every mount (None: never listed)
    ufs_files: int | None
    ufs_error: str  # why the listing failed ("" when it did not)
    cached: int  # bytes the workers that answered hold
    fuses: tuple[int, int] = (0, 0)  # pods with a sidecar of the Dataset, those whose sidecar is ready


@dataclass(frozen=True)
class DatasetPlan:
    """What to do, in the order the reconciler does it: patches, creates, updates, deletes, release,
    then the status writes (and, for `bound`, the status `bound_statuses` decides)."""

    patches: tuple[Patch, ...] = ()  # the Dataset's finalizer, the runtime's owner reference
    creates: tuple[Obj, ...] = ()
    updates: tuple[Patch, ...] = ()
    deletes: tuple[Ref, ...] = ()
    release: Patch | None = None  # the finalizer's removal, once everything is deleted
    statuses: tuple[StatusWrite, ...] = ()
    bound: Bound | None = None
    requeue: float | None = None
    logs: tuple[tuple[int, str], ...] = ()  # (logging level, message)


# ------------------------------------------------------------------ what to read
def owned_refs(namespace: str, name: str) -> list[Ref]:
    """Every object a Dataset stands for (controller/objects.py), in creation order."""
    worker = names.worker_name(name)
    return [
        Ref(PV, names.pv_name(namespace, name), None),
        Ref("PersistentVolumeClaim", names.pvc_name(name), namespace),
        Ref("ConfigMap", names.config_map_name(name), namespace),
        Ref(SECRET, token_secret_name(name), namespace),
        Ref("Service", worker, namespace),
        Ref("NetworkPolicy", worker, namespace),
        Ref("PodDisruptionBudget", worker, namespace),
        Ref(STATEFULSET, worker, namespace),
    ]


def awaits_cleanup(dataset_doc: Obj) -> bool:
    """Deleted but still holding this controller's finalizer: the plan then needs the pods."""
    meta = dataset_doc.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) and FINALIZER in (meta.get("finalizers") or [])


# ------------------------------------------------------------------ the plan
def plan_dataset(seen: Seen, settings: Settings) -> DatasetPlan:
    ds_doc, rt_doc = seen.dataset, seen.runtime
    key = f"{seen.namespace}/{seen.name}"
    if ds_doc is None:
        if rt_doc is None:
            return DatasetPlan()
        cond = Condition("Ready", False, "DatasetNotFound", f"waiting for Dataset {key}")
        return DatasetPlan(statuses=(_runtime_write(rt_doc, seen.now, cond),))
    if (ds_doc.get("metadata") or {}).get("deletionTimestamp"):
        return _cleanup(seen, ds_doc)
    patches = _finalizer_patch(ds_doc)
    try:
        ds = parse_dataset(ds_doc)
    except ValidationError as exc:
        invalid = Condition("Ready", False, "InvalidSpec", str(exc))
        statuses = [_dataset_write(ds_doc, seen.now, FAILED, invalid)]
        if rt_doc is not None:
            waiting = Condition("Ready", False, "DatasetInvalid", str(exc))
            statuses.append(_runtime_write(rt_doc, seen.now, waiting))
        return DatasetPlan(patches=patches, statuses=tuple(statuses),
                           logs=((logging.WARNING, f"dataset {key} is invalid: {exc}"),))
    if rt_doc is None:
        return _runtime_gone(seen, ds_doc, patches)
    patches += _owner_patch(ds_doc, rt_doc)
    try:
        rt = parse_runtime(rt_doc)
        objects = desired_objects(ds_doc, rt_doc, settings)
    except ValidationError as exc:
        cond = Condition("Ready", False, "RuntimeInvalid", str(exc))
        return DatasetPlan(patches=patches, statuses=(
            _dataset_write(ds_doc, seen.now, NOT_BOUND, cond), _runtime_write(rt_doc, seen.now, cond)))
    creates, updates = object_changes(objects, seen.live)
    sts = (seen.live.get((STATEFULSET, names.worker_name(seen.name))) or {}).get("status") or {}
    bound = Bound(ds_doc, rt_doc, ds, rt, ready=int(sts.get("readyReplicas") or 0),
                  current=int(sts.get("replicas") or 0), token=_worker_token(seen))
    return DatasetPlan(patches=patches, creates=creates, updates=updates, bound=bound, requeue=STATUS_PERIOD)


def bound_statuses(bound: Bound, measured: Measured, now: str) -> tuple[StatusWrite, StatusWrite]:
    """The Dataset's (`Bound`, sizes, read-only condition) and the runtime's (worker counts) statuses."""
    ds, rt, ready = bound.dataset, bound.runtime, bound.ready
    if measured.ufs_error:
        cond = Condition("Ready", False, "UfsUnavailable", measured.ufs_error)
    else:
        cond = Condition("Ready", True, "Bound", "PV, PVC, config and workers are in place")
    extra = [read_only_condition(ds)] if ds.read_write_requested else []
    dataset = _dataset_write(bound.dataset_doc, now, BOUND, cond, extra=extra, ufs=measured.ufs_total,
                             cached=measured.cached, capacity=rt.capacity_per_worker * rt.replicas,
                             files=measured.ufs_files, runtime=rt)
    rt_cond = Condition("Ready", ready >= rt.replicas > 0, "Workers", f"{ready}/{rt.replicas} workers ready")
    runtime = _runtime_write(bound.runtime_doc, now, rt_cond, applied=True, ready=ready, fuse=True, rt=rt,
                             current=bound.current, fuses=measured.fuses)
    return dataset, runtime


def object_changes(objects: Sequence[Obj], live: Mapping[tuple[str, str], Obj]
                   ) -> tuple[tuple[Obj, ...], tuple[Patch, ...]]:
    """(the desired objects that do not exist, the patches for those that differ), in `objects`' order."""
    creates: list[Obj] = []
    updates: list[Patch] = []
    for desired in objects:
        meta = desired["metadata"]
        current = live.get((desired["kind"], meta["name"]))
        if current is None:
            creates.append(desired)
        elif (patch := object_patch(desired, current)) is not None:
            updates.append(Patch(Ref(desired["kind"], meta["name"], meta.get("namespace")), patch))
    return tuple(creates), tuple(updates)


def object_patch(desired: Obj, live: Obj) -> Obj | None:
    """The merge patch bringing `live` to `desired`, or None when it already is.

    The worker-token Secret is never rewritten (random once: workers would lose their callers); of a PV
    or PVC only the labels are (their spec is immutable); extra live fields (server defaults) are fine."""
    if desired["kind"] == SECRET:
        return None
    if desired["kind"] in (PV, "PersistentVolumeClaim"):
        wanted: Obj = {"metadata": {"labels": desired["metadata"]["labels"]}}
    else:
        wanted = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return wanted if differs(wanted, live) else None


def pods_using(pods: Sequence[Obj], dataset_key: str, pvc: str) -> list[str]:
    """Names of the pods, not finished, that claim the Dataset's PVC or carry one of its sidecars."""
    return sorted(str(p["metadata"]["name"]) for p in pods if _uses_dataset(p, dataset_key, pvc))


def count_sidecars(pods: Sequence[Obj], dataset_key: str) -> tuple[int, int]:
    """(pods with a sidecar of this Dataset, those whose sidecar is ready): Eddy's FUSE "daemons"."""
    scheduled = ready = 0
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        spec = pod.get("spec") or {}
        sidecars = [c["name"] for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
                    if _runs_sidecar_of(c, dataset_key)]
        if not sidecars:
            continue
        scheduled += 1
        statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        if any(s.get("name") in sidecars and s.get("ready") for s in statuses):
            ready += 1
    return scheduled, ready


# ------------------------------------------------------------------ branches
def _cleanup(seen: Seen, ds_doc: Obj) -> DatasetPlan:
    """The Dataset is being deleted: wait for the pods using it, then delete its objects and release it."""
    if not awaits_cleanup(ds_doc):
        return DatasetPlan()
    ns, name = seen.namespace, seen.name
    users = pods_using(seen.pods, f"{ns}/{name}", names.pvc_name(name))
    if users:
        cond = Condition("Ready", False, "InUse",
                         f"deletion waits for pods using the dataset: {', '.join(users)}")
        old = ds_doc.get("status") or {}
        status = {**old, "conditions": merge_conditions(old.get("conditions"), [cond], seen.now)}
        return DatasetPlan(statuses=(StatusWrite(ds_doc, status, differs(status, old)),),
                           requeue=WAIT_PODS_PERIOD)
    kinds = (STATEFULSET, "Service", "ConfigMap", "PersistentVolumeClaim", PV)
    rest = [f for f in ds_doc["metadata"].get("finalizers") or [] if f != FINALIZER]
    return DatasetPlan(deletes=_existing(seen, kinds),
                       release=Patch(Ref(DATASET, name, ns), {"metadata": {"finalizers": rest or None}}),
                       logs=((logging.INFO, f"dataset {ns}/{name} cleaned up"),))


def _runtime_gone(seen: Seen, ds_doc: Obj, patches: tuple[Patch, ...]) -> DatasetPlan:
    """No runtime: remove what it stood for (workers, config, PVC, PV), as Fluid does, if it existed."""
    key = f"{seen.namespace}/{seen.name}"
    if not _existing(seen, (STATEFULSET, PV)):  # the runtime has not been created yet
        cond = Condition("Ready", False, "RuntimeNotFound", f"waiting for JindoRuntime {key}")
        return DatasetPlan(patches=patches, statuses=(_dataset_write(ds_doc, seen.now, NOT_BOUND, cond),))
    cond = Condition("Ready", False, "RuntimeDeleted",
                     f"JindoRuntime {key} was deleted: workers, PV and PVC removed")
    kinds = (STATEFULSET, "Service", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap",
             "PersistentVolumeClaim", PV)
    return DatasetPlan(patches=patches, deletes=_existing(seen, kinds),
                       statuses=(_dataset_write(ds_doc, seen.now, NOT_BOUND, cond),),
                       logs=((logging.INFO, f"runtime {key} deleted: workers, PV and PVC removed"),))


def _existing(seen: Seen, kinds: Sequence[str]) -> tuple[Ref, ...]:
    """The live ones among the Dataset's objects of `kinds`, in the order of `kinds`."""
    refs = {ref.kind: ref for ref in owned_refs(seen.namespace, seen.name)}
    return tuple(refs[kind] for kind in kinds if (kind, refs[kind].name) in seen.live)


def _finalizer_patch(ds_doc: Obj) -> tuple[Patch, ...]:
    meta = ds_doc["metadata"]
    finalizers = meta.get("finalizers") or []
    if FINALIZER in finalizers:
        return ()
    body = {"metadata": {"finalizers": [*finalizers, FINALIZER],
                         "resourceVersion": meta.get("resourceVersion")}}
    return (Patch(Ref(DATASET, meta["name"], meta.get("namespace")), body),)


def _owner_patch(ds_doc: Obj, rt_doc: Obj) -> tuple[Patch, ...]:
    """The runtime gets an owner reference to its Dataset, as Fluid gives it (deleting the Dataset
    deletes the runtime)."""
    uid = (ds_doc.get("metadata") or {}).get("uid")
    meta = rt_doc["metadata"]
    refs = meta.get("ownerReferences") or []
    if not uid or any(r.get("uid") == uid for r in refs):
        return ()
    owner = {**owner_reference(ds_doc), "apiVersion": API_VERSION}
    body = {"metadata": {"ownerReferences": [*refs, owner], "resourceVersion": meta.get("resourceVersion")}}
    return (Patch(Ref(RUNTIME, meta["name"], meta.get("namespace")), body),)


def _worker_token(seen: Seen) -> str:
    """The read token from the live worker-token Secret (the workers' stats need it); "" if none."""
    name = token_secret_name(seen.name)
    secret = seen.live.get((SECRET, name))
    return secret_values(secret, name).get(TOKEN_READ_KEY, "") if secret else ""


def _runs_sidecar_of(container: Mapping[str, Any], dataset_key: str) -> bool:
    return any(e.get("name") == "EDDY_DATASET" and e.get("value") == dataset_key
               for e in container.get("env") or [])


def _uses_dataset(pod: Mapping[str, Any], dataset_key: str, pvc: str) -> bool:
    spec = pod.get("spec") or {}
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    for volume in spec.get("volumes") or []:
        if ((volume or {}).get("persistentVolumeClaim") or {}).get("claimName") == pvc:
            return True
    return any(_runs_sidecar_of(c, dataset_key)
               for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])])


# ------------------------------------------------------------------ status writes
def _dataset_write(ds_doc: Obj, now: str, phase: str, cond: Condition, *, extra: Sequence[Condition] = (),
                   ufs: int | None = None, cached: int = 0, capacity: int = 0, files: int | None = None,
                   runtime: JindoRuntime | None = None) -> StatusWrite:
    old = ds_doc.get("status") or {}
    conds = [cond, *extra]
    status = dataset_status(phase=phase, ufs_total=ufs, cached=cached, capacity=capacity,
                            conditions=merge_conditions(old.get("conditions"), conds, now), files=files,
                            runtime=runtime)
    return StatusWrite(ds_doc, status, differs(status, old),
                       announcements(ds_doc, old, status, conds, "phase"))


def _runtime_write(rt_doc: Obj, now: str, cond: Condition, *, applied: bool = False, ready: int = 0,
                   fuse: bool = False, rt: JindoRuntime | None = None, current: int = 0,
                   fuses: tuple[int, int] = (0, 0)) -> StatusWrite:
    old = rt_doc.get("status") or {}
    desired = rt.replicas if rt else int((rt_doc.get("spec") or {}).get("replicas") or 0)
    status = runtime_status(applied=applied, desired=desired, ready=ready, fuse_ready=fuse,
                            conditions=merge_conditions(old.get("conditions"), [cond], now), current=current,
                            fuses=fuses)
    created = str((rt_doc.get("metadata") or {}).get("creationTimestamp") or "")
    status["setupDuration"] = old.get("setupDuration") or setup_duration(created, status, now)
    if not status["setupDuration"]:
        status.pop("setupDuration")
    return StatusWrite(rt_doc, status, differs(status, old),
                       announcements(rt_doc, old, status, [cond], "workerPhase"))


def announcements(doc: Obj, old: Obj, new: Obj, conds: Sequence[Condition], field: str) -> tuple[Event, ...]:
    """An Event for every phase change, and for every failing condition that is new or changed
    (`kubectl describe dataset` then tells the story)."""
    events: list[Event] = []
    before = {str(c.get("type")): c for c in old.get("conditions") or [] if isinstance(c, dict)}
    kind = doc.get("kind", "object")
    if old.get(field) != new.get(field) and new.get(field):
        failing = next((c for c in conds if not c.ok), None)
        text = f"{kind} {field} {old.get(field) or 'unset'} -> {new.get(field)}"
        suffix = f": {failing.message}" if failing and failing.message else ""
        events.append(Event(str(new.get(field)), text + suffix, "Warning" if failing else "Normal"))
    for cond in conds:
        prev = before.get(cond.type) or {}
        wanted = (cond.type == "Ready" and not cond.ok) or (cond.type != "Ready" and cond.ok)
        if wanted and (prev.get("reason") != cond.reason or prev.get("message") != cond.message):
            events.append(Event(cond.reason, cond.message, "Warning"))
    return tuple(events)
