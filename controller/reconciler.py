"""One reconcile of a Dataset (+ its same-named JindoRuntime), of a lone runtime, and of a pod.

Level-triggered and idempotent: each call reads the current objects, applies what differs from
`desired_objects(...)` and writes status only when it changed, so a second call writes nothing.
Returns the seconds after which the key wants another look (status refresh), or None.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller import kubeio
from controller.kubeio import ApiError, Kube
from controller.objects import Settings, desired_objects, owner_reference
from controller.podfinish import sidecars_to_stop, stop_patch
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
from eddy.kube.events import EventRecorder
from eddy.objectstore import ObjectStore, ObjectStoreError
from eddy.retry import RetryPolicy
from eddy.secrets import SecretError, SecretSource, secret_values
from eddy.wire import TOKEN_READ_KEY
from eddy.workerclient import WorkerClient, WorkerError

log = logging.getLogger("eddy.controller")

FINALIZER = "data.fluid.io/eddy-controller"
COMPONENT = "eddy-controller"
STATUS_PERIOD = 30.0  # worker stats and readiness are looked at again this often
WAIT_PODS_PERIOD = 5.0
WorkerUrls = Callable[[Dataset, int, int], list[str]]


def _default_worker_urls(ds: Dataset, replicas: int, port: int) -> list[str]:
    return [names.worker_url(ds.meta.name, ds.meta.namespace, i, port) for i in range(replicas)]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _UfsTotal:
    fingerprint: str
    total: int | None
    error: str
    at: float
    files: int | None = None


def _uses_dataset(pod: dict[str, Any], ds_key: str, pvc: str) -> bool:
    spec = pod.get("spec") or {}
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    for volume in spec.get("volumes") or []:
        if ((volume or {}).get("persistentVolumeClaim") or {}).get("claimName") == pvc:
            return True
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for env in container.get("env") or []:
            if env.get("name") == "EDDY_DATASET" and env.get("value") == ds_key:
                return True
    return False


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        *,
        ufs_period: float = 300.0,
        worker_urls: WorkerUrls = _default_worker_urls,
        worker_client: WorkerClient | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.ufs_period = ufs_period
        self.worker_urls = worker_urls
        self.workers = worker_client or WorkerClient(timeout=3.0)
        self._ufs: dict[str, _UfsTotal] = {}
        self.events = EventRecorder(kube, COMPONENT)

    async def close(self) -> None:
        await self.workers.close()

    # ------------------------------------------------------------------ datasets
    async def reconcile_dataset(self, namespace: str, name: str) -> float | None:
        ds_doc = await self.kube.get_or_none(kubeio.DATASETS, name, namespace)
        rt_doc = await self.kube.get_or_none(kubeio.RUNTIMES, name, namespace)
        if ds_doc is None:
            if rt_doc is not None:
                cond = Condition("Ready", False, "DatasetNotFound",
                                 f"waiting for Dataset {namespace}/{name}")
                await self._runtime_status(rt_doc, applied=False, ready=0, fuse=False, cond=cond)
            return None
        meta = ds_doc["metadata"]
        if meta.get("deletionTimestamp"):
            return await self._finalize(ds_doc)
        if FINALIZER not in (meta.get("finalizers") or []):
            ds_doc = await self.kube.patch(kubeio.DATASETS, name, {
                "metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER],
                             "resourceVersion": meta.get("resourceVersion")}}, namespace)
        try:
            ds = parse_dataset(ds_doc)
        except ValidationError as exc:
            cond = Condition("Ready", False, "InvalidSpec", str(exc))
            await self._dataset_status(ds_doc, FAILED, None, 0, 0, cond)
            if rt_doc is not None:
                await self._runtime_status(rt_doc, applied=False, ready=0, fuse=False,
                                           cond=Condition("Ready", False, "DatasetInvalid", str(exc)))
            log.warning("dataset %s/%s is invalid: %s", namespace, name, exc)
            return None
        if rt_doc is None:
            if await self._tear_down(ds_doc):
                cond = Condition("Ready", False, "RuntimeDeleted",
                                 f"JindoRuntime {namespace}/{name} was deleted: workers, PV and PVC removed")
            else:
                cond = Condition("Ready", False, "RuntimeNotFound",
                                 f"waiting for JindoRuntime {namespace}/{name}")
            await self._dataset_status(ds_doc, NOT_BOUND, None, 0, 0, cond)
            return None
        rt_doc = await self._own_runtime(ds_doc, rt_doc)
        try:
            rt = parse_runtime(rt_doc)
            objects = desired_objects(ds_doc, rt_doc, self.settings)
        except ValidationError as exc:
            cond = Condition("Ready", False, "RuntimeInvalid", str(exc))
            await self._dataset_status(ds_doc, NOT_BOUND, None, 0, 0, cond)
            await self._runtime_status(rt_doc, applied=False, ready=0, fuse=False, cond=cond)
            return None
        live = [await self.apply(obj) for obj in objects]
        sts = live[-1]
        ready = int((sts.get("status") or {}).get("readyReplicas") or 0)
        ufs = await self._ufs_total(ds_doc, ds)
        cached = await self._cached(ds, rt, ready, _worker_token(live))
        capacity = rt.capacity_per_worker * rt.replicas
        if ufs.error:
            cond = Condition("Ready", False, "UfsUnavailable", ufs.error)
        else:
            cond = Condition("Ready", True, "Bound", "PV, PVC, config and workers are in place")
        extra = [read_only_condition(ds)] if ds.read_write_requested else []
        await self._dataset_status(ds_doc, BOUND, ufs.total, cached, capacity, cond, extra=extra,
                                   files=ufs.files, runtime=rt)
        rt_cond = Condition("Ready", ready >= rt.replicas > 0, "Workers",
                            f"{ready}/{rt.replicas} workers ready")
        fuses = await self._fuse_counts(ds)
        current = int((sts.get("status") or {}).get("replicas") or 0)
        await self._runtime_status(rt_doc, applied=True, ready=ready, fuse=True, cond=rt_cond, rt=rt,
                                   current=current, fuses=fuses)
        return STATUS_PERIOD

    async def _own_runtime(self, ds_doc: dict[str, Any], rt_doc: dict[str, Any]) -> dict[str, Any]:
        """The runtime gets an owner reference to its Dataset, as Fluid gives it (deleting the Dataset
        deletes the runtime)."""
        uid = (ds_doc.get("metadata") or {}).get("uid")
        refs = (rt_doc.get("metadata") or {}).get("ownerReferences") or []
        if not uid or any(r.get("uid") == uid for r in refs):
            return rt_doc
        meta = rt_doc["metadata"]
        owner = {**owner_reference(ds_doc), "apiVersion": API_VERSION}
        return await self.kube.patch(kubeio.RUNTIMES, meta["name"], {"metadata": {
            "ownerReferences": [*refs, owner], "resourceVersion": meta.get("resourceVersion")}},
            meta.get("namespace"))

    async def _tear_down(self, ds_doc: dict[str, Any]) -> bool:
        """The runtime is gone: remove what it stood for (workers, config, PVC, PV), as Fluid does.
        False when there was nothing to remove (the runtime has not been created yet)."""
        meta = ds_doc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        sts = await self.kube.get_or_none(kubeio.STATEFULSETS, names.worker_name(name), ns)
        pv = await self.kube.get_or_none(kubeio.PVS, names.pv_name(ns, name))
        if sts is None and pv is None:
            return False
        for res, obj_name in (
            (kubeio.STATEFULSETS, names.worker_name(name)),
            (kubeio.SERVICES, names.worker_name(name)),
            (kubeio.BY_KIND["NetworkPolicy"], names.worker_name(name)),
            (kubeio.BY_KIND["PodDisruptionBudget"], names.worker_name(name)),
            (kubeio.CONFIG_MAPS, names.config_map_name(name)),
            (kubeio.PVCS, names.pvc_name(name)),
        ):
            await self.kube.delete(res, obj_name, ns, propagation="Background", missing_ok=True)
        await self.kube.delete(kubeio.PVS, names.pv_name(ns, name), missing_ok=True)
        log.info("runtime %s/%s deleted: workers, PV and PVC removed", ns, name)
        return True

    async def _fuse_counts(self, ds: Dataset) -> tuple[int, int]:
        """(pods with a sidecar of this Dataset, those whose sidecar is ready): Eddy's FUSE "daemons"."""
        try:
            pods, _ = await self.kube.list(kubeio.PODS, ds.meta.namespace,
                                           label_selector=f"{names.LABEL_INJECT_DONE}=true")
        except ApiError as exc:
            log.debug("cannot count sidecars of %s: %s", ds.meta.key, exc)
            return 0, 0
        scheduled = ready = 0
        for pod in pods:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            spec = pod.get("spec") or {}
            containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
            sidecars = [c["name"] for c in containers
                        if any(e.get("name") == "EDDY_DATASET" and e.get("value") == ds.meta.key
                               for e in c.get("env") or [])]
            if not sidecars:
                continue
            scheduled += 1
            statuses = [*((pod.get("status") or {}).get("initContainerStatuses") or []),
                        *((pod.get("status") or {}).get("containerStatuses") or [])]
            if any(s.get("name") in sidecars and s.get("ready") for s in statuses):
                ready += 1
        return scheduled, ready

    async def apply(self, desired: dict[str, Any]) -> dict[str, Any]:
        """Create `desired`, or patch it where the live object differs; returns the live object."""
        res = kubeio.BY_KIND[desired["kind"]]
        meta = desired["metadata"]
        ns = meta.get("namespace")
        live = await self.kube.get_or_none(res, meta["name"], ns)
        if live is None:
            log.info("creating %s %s", desired["kind"], meta["name"])
            return await self.kube.create(res, desired, ns)
        if desired["kind"] == "Secret":
            return live  # the worker tokens: random once, never rewritten (workers would lose callers)
        if desired["kind"] in ("PersistentVolume", "PersistentVolumeClaim"):
            wanted: dict[str, Any] = {"metadata": {"labels": meta["labels"]}}  # the spec is immutable
        else:
            wanted = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
        if not differs(wanted, live):
            return live
        log.info("updating %s %s", desired["kind"], meta["name"])
        return await self.kube.patch(res, meta["name"], wanted, ns)

    async def _finalize(self, ds_doc: dict[str, Any]) -> float | None:
        meta = ds_doc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if FINALIZER not in (meta.get("finalizers") or []):
            return None
        pods, _ = await self.kube.list(kubeio.PODS, ns)
        users = sorted(p["metadata"]["name"] for p in pods
                       if _uses_dataset(p, f"{ns}/{name}", names.pvc_name(name)))
        if users:
            cond = Condition("Ready", False, "InUse",
                             f"deletion waits for pods using the dataset: {', '.join(users)}")
            old = ds_doc.get("status") or {}
            await self._patch_status(kubeio.DATASETS, ds_doc, {
                **old, "conditions": merge_conditions(old.get("conditions"), [cond], _now())})
            return WAIT_PODS_PERIOD
        for res, obj_name in (
            (kubeio.STATEFULSETS, names.worker_name(name)),
            (kubeio.SERVICES, names.worker_name(name)),
            (kubeio.CONFIG_MAPS, names.config_map_name(name)),
            (kubeio.PVCS, names.pvc_name(name)),
        ):
            await self.kube.delete(res, obj_name, ns, propagation="Background", missing_ok=True)
        await self.kube.delete(kubeio.PVS, names.pv_name(ns, name), missing_ok=True)
        rest = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        await self.kube.patch(kubeio.DATASETS, name, {"metadata": {"finalizers": rest or None}}, ns)
        self._ufs.pop(f"{ns}/{name}", None)
        log.info("dataset %s/%s cleaned up", ns, name)
        return None

    # ------------------------------------------------------------------ observations
    async def _secrets(self, ds: Dataset) -> SecretSource:
        mapping: dict[str, dict[str, str]] = {}
        for secret in ds.secret_names:
            doc = await self.kube.get_or_none(kubeio.SECRETS, secret, ds.meta.namespace)
            mapping[secret] = secret_values(doc or {}, f"{ds.meta.namespace}/{secret}")
        return SecretSource.from_mapping(mapping)

    async def _ufs_total(self, ds_doc: dict[str, Any], ds: Dataset) -> _UfsTotal:
        """Bytes under every mount, listed at most once per `ufs_period` (and when the spec changes)."""
        key = ds.meta.key
        fingerprint = f"{ds.meta.uid}:{ds.mounts!r}"
        known = self._ufs.get(key)
        if known and known.fingerprint == fingerprint and time.monotonic() - known.at < self.ufs_period:
            return known
        total, files, error = 0, 0, ""
        try:
            secrets = await self._secrets(ds)
            for mount in ds.mounts:
                # ufsTotal is informational: a short LIST retry budget keeps a sick store from stalling
                # the reconcile (DataLoads and sidecars keep the long default budget).
                async with ObjectStore.for_mount(mount, secrets, retry=RetryPolicy(budget=5.0)) as store:
                    async for info in store.list():
                        if not info.key.endswith("/"):
                            total += info.size
                            files += 1
        except (ObjectStoreError, SecretError) as exc:  # their messages name secrets and keys, never values
            error = f"cannot list the mounts: {exc}"
        except ApiError as exc:
            error = f"cannot read the mount secrets: {exc}"
        same = known is not None and known.fingerprint == fingerprint
        previous = known.total if known and same else None
        previous_files = known.files if known and same else None
        result = _UfsTotal(fingerprint, previous if error else total, error, time.monotonic(),
                           previous_files if error else files)
        self._ufs[key] = result
        return result

    async def _cached(self, ds: Dataset, rt: JindoRuntime, ready: int, token: str = "") -> int:
        """Sum of `cached_bytes` over the workers that answer; 0 while no worker is ready."""
        if ready <= 0:
            return 0
        total = 0
        for url in self.worker_urls(ds, rt.replicas, self.settings.worker_port):
            try:
                stats = await self.workers.stats(url, timeout=3.0, token=token or None)
            except (WorkerError, OSError, TimeoutError) as exc:
                log.debug("worker %s has no stats: %s", url, exc)
                continue
            total += int(stats.get("cached_bytes") or 0)
        return total

    # ------------------------------------------------------------------ status writes
    async def _patch_status(self, res: kubeio.Resource, doc: dict[str, Any], status: dict[str, Any]) -> None:
        if not differs(status, doc.get("status") or {}):
            return
        meta = doc["metadata"]
        await self.kube.patch_status(res, meta["name"], {"status": status}, meta.get("namespace"))

    async def _dataset_status(self, ds_doc: dict[str, Any], phase: str, ufs: int | None, cached: int,
                              capacity: int, cond: Condition, *, extra: list[Condition] | None = None,
                              files: int | None = None, runtime: JindoRuntime | None = None) -> None:
        old = ds_doc.get("status") or {}
        conditions = merge_conditions(old.get("conditions"), [cond, *(extra or [])], _now())
        status = dataset_status(phase=phase, ufs_total=ufs, cached=cached, capacity=capacity,
                                conditions=conditions, files=files, runtime=runtime)
        await self._patch_status(kubeio.DATASETS, ds_doc, status)
        await self._announce(ds_doc, old, status, [cond, *(extra or [])], "phase")

    async def _runtime_status(self, rt_doc: dict[str, Any], *, applied: bool, ready: int, fuse: bool,
                              cond: Condition, rt: JindoRuntime | None = None, current: int = 0,
                              fuses: tuple[int, int] = (0, 0)) -> None:
        old = rt_doc.get("status") or {}
        desired = rt.replicas if rt else int((rt_doc.get("spec") or {}).get("replicas") or 0)
        conditions = merge_conditions(old.get("conditions"), [cond], _now())
        status = runtime_status(applied=applied, desired=desired, ready=ready, fuse_ready=fuse,
                                conditions=conditions, current=current, fuses=fuses)
        created = str((rt_doc.get("metadata") or {}).get("creationTimestamp") or "")
        status["setupDuration"] = old.get("setupDuration") or setup_duration(created, status, _now())
        if not status["setupDuration"]:
            status.pop("setupDuration")
        await self._patch_status(kubeio.RUNTIMES, rt_doc, status)
        await self._announce(rt_doc, old, status, [cond], "workerPhase")

    async def _announce(self, doc: dict[str, Any], old: dict[str, Any], new: dict[str, Any],
                        conds: list[Condition], field: str) -> None:
        """An Event for every phase change, and for every failing condition that is new or changed
        (`kubectl describe dataset` then tells the story)."""
        before = {str(c.get("type")): c for c in old.get("conditions") or [] if isinstance(c, dict)}
        kind = doc.get("kind", "object")
        if old.get(field) != new.get(field) and new.get(field):
            failing = next((c for c in conds if not c.ok), None)
            text = f"{kind} {field} {old.get(field) or 'unset'} -> {new.get(field)}"
            await self.events.record(doc, str(new.get(field)), text + (
                f": {failing.message}" if failing and failing.message else ""),
                "Warning" if failing else "Normal")
        for cond in conds:
            prev = before.get(cond.type) or {}
            wanted = (cond.type == "Ready" and not cond.ok) or (cond.type != "Ready" and cond.ok)
            if wanted and (prev.get("reason") != cond.reason or prev.get("message") != cond.message):
                await self.events.record(doc, cond.reason, cond.message, "Warning")

    # ------------------------------------------------------------------ pods
    async def reconcile_pod(self, namespace: str, name: str) -> None:
        """Classic-mode sidecars of a finished Job/Argo pod are told to leave (controller/podfinish.py)."""
        pod = await self.kube.get_or_none(kubeio.PODS, name, namespace)
        if pod is None:
            return
        sidecars = sidecars_to_stop(pod)
        if sidecars:
            log.info("pod %s/%s: app containers ended; stopping sidecars %s", namespace, name, sidecars)
            await self.kube.patch(kubeio.PODS, name, stop_patch(), namespace)


def _worker_token(live: list[dict[str, Any]]) -> str:
    """The read token from the applied worker-token Secret (the workers' stats need it); "" if none."""
    for obj in live:
        if obj.get("kind") == "Secret" and obj["metadata"]["name"].endswith("-eddy-token"):
            return secret_values(obj, obj["metadata"]["name"]).get(TOKEN_READ_KEY, "")
    return ""
