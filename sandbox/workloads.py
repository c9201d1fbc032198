"""Minimal workload controllers (kube-controller-manager's part): Deployment, ReplicaSet,
StatefulSet, Job, the endpoints of Services (Endpoints and EndpointSlices) and the binding of
PersistentVolumeClaims (with an optional hostPath provisioner).

They are API clients over HTTP (`eddy.kube.Kube`), like the real controllers: the pods they make go
through admission (mutating webhooks, policies), and they learn everything from watches. Pods are
created through the namespaced endpoint with no `metadata.namespace` in the body, as the real
controllers do, so admission must take the namespace from the request.

Shared machinery lives here: informers for the owners and for pods, a de-duplicating work queue per
controller, "expectations" (pods created or deleted but not yet seen by the watch, so a quick second
reconcile does not create twice), owner references (`controller: true`, `blockOwnerDeletion: true`:
the API server's garbage collector deletes pods with their owner), conditions and status patches.
The controllers themselves are in `workloads_deployment.py`, `workloads_replicaset.py`,
`workloads_statefulset.py`, `workloads_job.py`, `workloads_endpoints.py` and `workloads_volumes.py`;
what each models and leaves out is in its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.errors import KubeError, NotFound
from eddy.kube.events import EventRecorder
from eddy.kube.informer import Informer
from eddy.kube.resources import PODS, Resource

Obj = dict[str, Any]
Key = tuple[str, str]
log = logging.getLogger("sandbox.workloads")
EXPECTATION_TTL = 60.0


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def owner_reference(owner: Obj) -> Obj:
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def controller_of(obj: Obj) -> Obj | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def terminating(pod: Obj) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def ready_since(pod: Obj) -> float | None:
    """When the pod became Running+Ready (None: it is not)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or terminating(pod):
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return parse_time(cond.get("lastTransitionTime")) or 0.0
    return None


def is_ready(pod: Obj) -> bool:
    return ready_since(pod) is not None


def is_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    since = ready_since(pod)
    return since is not None and (min_ready_seconds <= 0 or since + min_ready_seconds <= now)


def pod_body(template: Obj, owner: Obj, *, name: str = "", generate_name: str = "",
             labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
             spec_overrides: Obj | None = None) -> Obj:
    """A Pod from a pod template, owned by `owner`; no namespace (the request's is used)."""
    tmeta = template.get("metadata") or {}
    meta: Obj = {"labels": {**(tmeta.get("labels") or {}), **(labels or {})},
                 "ownerReferences": [owner_reference(owner)]}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = generate_name
    all_annotations = {**(tmeta.get("annotations") or {}), **(annotations or {})}
    if all_annotations:
        meta["annotations"] = all_annotations
    if tmeta.get("finalizers"):
        meta["finalizers"] = list(tmeta["finalizers"])
    spec = copy.deepcopy(template.get("spec") or {})
    spec.update(copy.deepcopy(spec_overrides or {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def set_condition(conditions: list[Obj], ctype: str, status: str, reason: str, message: str,
                  *, update_time: bool = False) -> list[Obj]:
    """Conditions with `ctype` set; times move only when status (transition) or reason/message
    (update) change, so an unchanged status patch stays a no-op."""
    stamp = now_iso()
    out = [dict(c) for c in conditions if c.get("type") != ctype]
    old = next((c for c in conditions if c.get("type") == ctype), None)
    cond: Obj = {"type": ctype, "status": status, "reason": reason, "message": message}
    same_status = old is not None and old.get("status") == status
    cond["lastTransitionTime"] = old.get("lastTransitionTime", stamp) if old and same_status else stamp
    if update_time:
        unchanged = same_status and old is not None and (old.get("reason"), old.get("message")) == (
            reason, message)
        cond["lastUpdateTime"] = old.get("lastUpdateTime", stamp) if old and unchanged else stamp
    if old is not None and all(old.get(k) == v for k, v in cond.items()) and len(old) == len(cond):
        cond = dict(old)
    out.append(cond)
    order = {c.get("type"): n for n, c in enumerate(conditions)}
    return sorted(out, key=lambda c: order.get(c.get("type"), len(order)))


def condition_true(obj: Obj, ctype: str) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # opaque elsewhere; integers in the sandbox's API server
        return 0


class OwnedIndex:
    """An informer on `resource` plus what this process wrote that the watch has not shown yet
    (created, updated: the newer resourceVersion wins; deleted: shown as terminating), so a quick
    second reconcile neither creates twice nor scales from a stale count."""

    def __init__(self, kube: Kube, resource: Resource = PODS) -> None:
        self.informer = Informer(kube, resource, on_event=self._seen)
        self._written: dict[str, tuple[Obj, float]] = {}
        self._deleted: dict[str, float] = {}

    async def _seen(self, etype: str, obj: Obj) -> None:
        uid = str(obj["metadata"].get("uid") or "")
        mine = self._written.get(uid)
        if mine is not None and (etype == "DELETED" or _rv(obj) >= _rv(mine[0])):
            del self._written[uid]
        if etype == "DELETED":
            self._deleted.pop(uid, None)

    def expect_created(self, obj: Obj) -> None:
        """`obj` as the API answered a create or an update."""
        self._written[str(obj["metadata"]["uid"])] = (obj, time.monotonic() + EXPECTATION_TTL)

    expect_updated = expect_created

    def expect_deleted(self, obj: Obj) -> None:
        self._deleted[str(obj["metadata"]["uid"])] = time.monotonic() + EXPECTATION_TTL

    def owned(self, namespace: str, owner_uid: str) -> list[Obj]:
        """Objects of `namespace` whose controller is `owner_uid`, as this process last knows them."""
        now = time.monotonic()
        self._written = {u: v for u, v in self._written.items() if v[1] > now}
        self._deleted = {u: t for u, t in self._deleted.items() if t > now}
        found: dict[str, Obj] = {}
        for obj in [*self.informer.items(), *(o for o, _ in self._written.values())]:
            meta = obj.get("metadata") or {}
            ref = controller_of(obj)
            uid = str(meta.get("uid"))
            if meta.get("namespace") != namespace or not ref or ref.get("uid") != owner_uid:
                continue
            if uid in self._deleted and not meta.get("deletionTimestamp"):
                # Deleted by us, not yet seen: terminating (it may stay a while if it has finalizers).
                obj = {**obj, "metadata": {**meta, "deletionTimestamp": now_iso()}}
            if uid not in found or _rv(obj) > _rv(found[uid]):
                found[uid] = obj
        return sorted(found.values(), key=lambda o: str(o["metadata"].get("name")))


PodIndex = OwnedIndex


class OwnerController:
    """One kind's controller: an informer on the owners, a work queue, `reconcile` per owner key.
    `reconcile` returns seconds after which to look again (timers: minReadySeconds, deadlines)."""

    resource: Resource
    component = "controller-manager"  # the Events' source, as kube-controller-manager's controllers name it

    def __init__(self, kube: Kube, pods: PodIndex) -> None:
        self.kube = kube
        self.pods = pods
        self.events = EventRecorder(kube, self.component)
        self.owners = Informer(kube, self.resource, on_event=self._owner_event)
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._worker: asyncio.Task[None] | None = None
        self._busy = False

    # ------------------------------------------------------------------ queue
    def enqueue(self, key: Key) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def enqueue_after(self, key: Key, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    async def _owner_event(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        if etype == "DELETED":
            self.forget(obj)
        self.enqueue(key)

    def pod_event(self, etype: str, pod: Obj) -> None:
        ref = controller_of(pod)
        kind = (self.resource.kind, self.resource.api_version)
        if ref and (ref.get("kind"), ref.get("apiVersion")) == kind:
            self.enqueue((str(pod["metadata"].get("namespace") or ""), str(ref.get("name"))))

    def forget(self, owner: Obj) -> None:
        """The owner is gone: drop any per-owner memory."""

    def start(self) -> None:
        self.owners.start()
        self._worker = asyncio.create_task(self._work(), name=f"{self.resource.plural}-controller")

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self.owners.stop()

    async def wait_synced(self, timeout: float) -> None:
        await self.owners.wait_synced(timeout)

    @property
    def idle(self) -> bool:
        return not self._busy and self._queue.empty()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._busy = True
            try:
                owner = self.owners.get(*key)
                if owner is None:
                    await self.gone(key)
                elif not terminating(owner):
                    again = await self.reconcile(owner)
                    self._failures.pop(key, None)
                    if again is not None:
                        self.enqueue_after(key, max(0.05, again))
            except Exception as exc:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(10.0, 0.1 * 2 ** min(failures, 10))
                level = logging.INFO if isinstance(exc, KubeError) else logging.ERROR
                log.log(level, "%s %s/%s: reconcile failed (%s); retry in %.1fs", self.resource.kind,
                        *key, exc, delay, exc_info=level == logging.ERROR)
                self.enqueue_after(key, delay)
            finally:
                self._busy = False

    async def reconcile(self, owner: Obj) -> float | None:
        raise NotImplementedError

    async def gone(self, key: Key) -> None:
        """The owner `key` no longer exists (what it owns goes with the API server's garbage collector)."""

    # ------------------------------------------------------------------ writes
    async def create_pod(self, owner: Obj, body: Obj) -> Obj:
        """Create a pod (through admission); `SuccessfulCreate`, or a `FailedCreate` Warning with the
        API's message (a webhook's or a policy's denial, say) on the owner, as kubectl describe shows."""
        try:
            pod = await self.kube.create(PODS, body, owner["metadata"]["namespace"])
        except KubeError as exc:
            message = f"Error creating: {exc.message or exc}"
            await self.events.record(owner, "FailedCreate", message, "Warning")
            raise
        self.pods.expect_created(pod)
        await self.events.record(owner, "SuccessfulCreate", self.created_message(owner, pod))
        return pod

    def created_message(self, owner: Obj, pod: Obj) -> str:
        return f"Created pod: {pod['metadata']['name']}"

    async def delete_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(NotFound):
            await self.kube.delete(PODS, meta["name"], meta["namespace"])
        self.pods.expect_deleted(pod)

    async def write_status(self, owner: Obj, status: Obj) -> None:
        """Merge-patch the status subresource with what changed (removed keys become null)."""
        old = owner.get("status") or {}
        patch: Obj = {k: v for k, v in status.items() if old.get(k) != v}
        patch.update({k: None for k in old if k not in status})
        if not patch:
            return
        meta = owner["metadata"]
        with contextlib.suppress(NotFound):
            await self.kube.patch_status(self.resource, meta["name"], {"status": patch}, meta["namespace"])


class WorkloadControllers:
    """The controllers over one pods informer. `start()` / `stop()`; `wait_idle()` for tests."""

    def __init__(self, kube: Kube, *,
                 kinds: Iterable[str] = ("Deployment", "ReplicaSet", "StatefulSet", "Job", "Endpoints",
                                         "PersistentVolume"),
                 job_backoff: float = 10.0, job_interim_conditions: bool = True,
                 volume_root: Path | None = None) -> None:
        """`job_backoff`: the delay before a Job replaces a failed pod, doubling per failure (10s like
        the Job controller; tests pass less). `job_interim_conditions`: Jobs also get
        `SuccessCriteriaMet` / `FailureTarget` before `Complete` / `Failed`, as since Kubernetes 1.31.
        `volume_root`: where the volume binder provisions hostPath volumes for claims that no volume
        fits (None: it only binds existing volumes)."""
        from sandbox.workloads_deployment import DeploymentController
        from sandbox.workloads_endpoints import EndpointsController
        from sandbox.workloads_job import JobController
        from sandbox.workloads_replicaset import ReplicaSetController
        from sandbox.workloads_statefulset import StatefulSetController
        from sandbox.workloads_volumes import VolumeBinder

        self.kube = kube
        self.pods = PodIndex(kube)
        self.controllers: list[OwnerController] = []
        wanted = set(kinds)
        if "Deployment" in wanted:
            self.controllers.append(DeploymentController(kube, self.pods))
        if "ReplicaSet" in wanted:
            self.controllers.append(ReplicaSetController(kube, self.pods))
        if "StatefulSet" in wanted:
            self.controllers.append(StatefulSetController(kube, self.pods))
        if "Endpoints" in wanted:  # Endpoints and EndpointSlices of Services with a selector
            self.controllers.append(EndpointsController(kube, self.pods))
        if "PersistentVolume" in wanted:  # the PV binder (and provisioner, with a volume_root)
            self.controllers.append(VolumeBinder(kube, self.pods, volume_root=volume_root))
        if "Job" in wanted:
            self.controllers.append(JobController(kube, self.pods, backoff=job_backoff,
                                                  interim_conditions=job_interim_conditions))
        self.pods.informer.add_handler(self._pod_event)

    async def _pod_event(self, etype: str, pod: Obj) -> None:
        for controller in self.controllers:
            controller.pod_event(etype, pod)

    async def start(self) -> None:
        self.pods.informer.start()
        await self.pods.informer.wait_synced(30)
        for controller in self.controllers:
            controller.start()
        for controller in self.controllers:
            await controller.wait_synced(30)

    async def stop(self) -> None:
        for controller in self.controllers:
            await controller.stop()
        await self.pods.informer.stop()

    async def __aenter__(self) -> WorkloadControllers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every informer's events are handled and every queue is empty (timers not included)."""
        async with asyncio.timeout(timeout):
            while True:
                await self.pods.informer.wait_idle()
                for controller in self.controllers:
                    await controller.owners.wait_idle()
                if all(c.idle for c in self.controllers):
                    return
                await asyncio.sleep(0.01)
