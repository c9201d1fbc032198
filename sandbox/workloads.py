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
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.errors import KubeError, NotFound
from eddy.kube.events import EventRecorder
from eddy.kube.informer import Informer
from eddy.kube.resources import PODS, Resource
from eddy.retry import RetryPolicy
from sandbox.workloads_base import (
    OwnedIndex,
    condition_true,
    controller_of,
    finished,
    is_available,
    is_ready,
    now_iso,
    owner_reference,
    parse_time,
    pod_body,
    ready_since,
    set_condition,
    terminating,
)

__all__ = [
    "Key", "OwnedIndex", "OwnerController", "OwnerGone", "PodIndex", "WorkloadControllers", "condition_true",
    "controller_of", "finished", "is_available", "is_ready", "now_iso", "owner_reference", "parse_time",
    "pod_body", "ready_since", "set_condition", "terminating",
]
Obj = dict[str, Any]
Key = tuple[str, str]
log = logging.getLogger("sandbox.workloads")
PodIndex = OwnedIndex
# A failed reconcile is queued again after 0.2 s, doubling up to 10 s, for as long as it fails. No jitter,
# as in kube-controller-manager's per-item workqueue backoff (which runs from 5 ms to 1000 s).
RECONCILE_RETRY = RetryPolicy(initial=0.2, maximum=10.0, jitter=0.0, attempts=None)


class OwnerGone(Exception):
    """The owner was deleted while its reconcile ran: nothing more to make for it."""


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
        self._alive: set[Key] = set()  # owners read back from the API in this reconcile
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
            self._alive.discard(key)
            try:
                owner = self.owners.get(*key)
                if owner is None:
                    await self.gone(key)
                elif not terminating(owner):
                    again = await self.reconcile(owner)
                    self._failures.pop(key, None)
                    if again is not None:
                        self.enqueue_after(key, max(0.05, again))
            except OwnerGone:
                pass  # deleted under our feet: its DELETED event brings `gone`
            except Exception as exc:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = RECONCILE_RETRY.step(failures)
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
    async def ensure_alive(self, owner: Obj) -> None:
        """Before making dependents: is the owner still there (an uncached read, once per reconcile)?
        The cache may trail a deletion, and a dependent created after its owner is gone would never be
        collected (kube-controller-manager rechecks the same way before adopting)."""
        meta = owner["metadata"]
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        if key in self._alive:
            return
        live = await self.kube.get_or_none(self.resource, meta["name"], meta.get("namespace"))
        if live is None or live["metadata"].get("uid") != meta.get("uid") or terminating(live):
            raise OwnerGone(f"{self.resource.kind} {key[0]}/{key[1]} is gone")
        self._alive.add(key)

    async def create_pod(self, owner: Obj, body: Obj) -> Obj:
        """Create a pod (through admission); `SuccessfulCreate`, or a `FailedCreate` Warning with the
        API's message (a webhook's or a policy's denial, say) on the owner, as kubectl describe shows."""
        await self.ensure_alive(owner)
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
