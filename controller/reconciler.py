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
from controller.objects import Settings, desired_objects
from controller.podfinish import sidecars_to_stop, stop_patch
from controller.status import (
    BOUND,
    FAILED,
    NOT_BOUND,
    Condition,
    dataset_status,
    differs,
    merge_conditions,
    runtime_status,
)
from eddy import names
from eddy.api import Dataset, JindoRuntime, ValidationError, parse_dataset, parse_runtime
from eddy.objectstore import ObjectStore, ObjectStoreError, RetryPolicy
from eddy.secrets import SecretError, SecretSource, secret_values
from eddy.workerclient import WorkerClient, WorkerError

log = logging.getLogger("eddy.controller")

FINALIZER = "data.fluid.io/eddy-controller"
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
            cond = Condition("Ready", False, "RuntimeNotFound",
                             f"waiting for JindoRuntime {namespace}/{name}")
            await self._dataset_status(ds_doc, NOT_BOUND, None, 0, 0, cond)
            return None
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
        cached = await self._cached(ds, rt, ready)
        capacity = rt.capacity_per_worker * rt.replicas
        if ufs.error:
            cond = Condition("Ready", False, "UfsUnavailable", ufs.error)
        else:
            cond = Condition("Ready", True, "Bound", "PV, PVC, config and workers are in place")
        await self._dataset_status(ds_doc, BOUND, ufs.total, cached, capacity, cond)
        rt_cond = Condition("Ready", ready >= rt.replicas > 0, "Workers",
                            f"{ready}/{rt.replicas} workers ready")
        await self._runtime_status(rt_doc, applied=True, ready=ready, fuse=True, cond=rt_cond, rt=rt)
        return STATUS_PERIOD

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
        total, error = 0, ""
        try:
            secrets = await self._secrets(ds)
            for mount in ds.mounts:
                # ufsTotal is informational: a short LIST retry budget keeps a sick store from stalling
                # the reconcile (DataLoads and sidecars keep the long default budget).
                async with ObjectStore.for_mount(mount, secrets, retry=RetryPolicy(budget=5.0)) as store:
                    async for info in store.list():
                        if not info.key.endswith("/"):
                            total += info.size
        except (ObjectStoreError, SecretError) as exc:  # their messages name secrets and keys, never values
            error = f"cannot list the mounts: {exc}"
        except ApiError as exc:
            error = f"cannot read the mount secrets: {exc}"
        previous = known.total if known and known.fingerprint == fingerprint else None
        result = _UfsTotal(fingerprint, previous if error else total, error, time.monotonic())
        self._ufs[key] = result
        return result

    async def _cached(self, ds: Dataset, rt: JindoRuntime, ready: int) -> int:
        """Sum of `cached_bytes` over the workers that answer; 0 while no worker is ready."""
        if ready <= 0:
            return 0
        total = 0
        for url in self.worker_urls(ds, rt.replicas, self.settings.worker_port):
            try:
                stats = await self.workers.stats(url, timeout=3.0)
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
                              capacity: int, cond: Condition) -> None:
        old = ds_doc.get("status") or {}
        conditions = merge_conditions(old.get("conditions"), [cond], _now())
        status = dataset_status(phase=phase, ufs_total=ufs, cached=cached, capacity=capacity,
                                conditions=conditions)
        await self._patch_status(kubeio.DATASETS, ds_doc, status)

    async def _runtime_status(self, rt_doc: dict[str, Any], *, applied: bool, ready: int, fuse: bool,
                              cond: Condition, rt: JindoRuntime | None = None) -> None:
        old = rt_doc.get("status") or {}
        desired = rt.replicas if rt else int((rt_doc.get("spec") or {}).get("replicas") or 0)
        conditions = merge_conditions(old.get("conditions"), [cond], _now())
        status = runtime_status(applied=applied, desired=desired, ready=ready, fuse_ready=fuse,
                                conditions=conditions)
        await self._patch_status(kubeio.RUNTIMES, rt_doc, status)

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
