"""One reconcile of a Dataset (+ its same-named JindoRuntime), of a lone runtime, and of a pod.

Level-triggered and idempotent. The decisions are `controller/plan.py`'s, a pure function of what was
read; this module reads (the Dataset, its runtime, the objects they stand for, and what the status
measures: the store's size, the workers' cached bytes, the injected sidecars), asks the plan, and
carries it out. A second call writes nothing. Returns the seconds after which the key wants another
look (status refresh), or None.
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
from controller.objects import Settings
from controller.plan import (
    FINALIZER,
    STATUS_PERIOD,
    WAIT_PODS_PERIOD,
    Bound,
    DatasetPlan,
    Measured,
    Ref,
    Seen,
    StatusWrite,
    awaits_cleanup,
    bound_statuses,
    count_sidecars,
    owned_refs,
    plan_dataset,
)
from controller.podfinish import sidecars_to_stop, stop_patch
from eddy import names
from eddy.api import Dataset, JindoRuntime
from eddy.kube.events import EventRecorder
from eddy.objectstore import ObjectStore, ObjectStoreError
from eddy.retry import RetryPolicy
from eddy.secrets import SecretError, SecretSource, secret_values
from eddy.workerclient import WorkerClient, WorkerError

log = logging.getLogger("eddy.controller")

COMPONENT = "eddy-controller"
WorkerUrls = Callable[[Dataset, int, int], list[str]]
RESOURCES: dict[str, kubeio.Resource] = {**kubeio.BY_KIND, "Dataset": kubeio.DATASETS,
                                         "JindoRuntime": kubeio.RUNTIMES}
__all__ = ["COMPONENT", "FINALIZER", "STATUS_PERIOD", "WAIT_PODS_PERIOD", "Reconciler"]


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
        seen = await self._read(namespace, name)
        plan = plan_dataset(seen, self.settings)
        await self._carry_out(plan)
        if plan.bound is not None:  # the objects are in place: measure, then write the status
            await self._write_statuses(bound_statuses(plan.bound, await self._measure(plan.bound), _now()))
        if plan.release is not None:
            self._ufs.pop(f"{namespace}/{name}", None)
        return plan.requeue

    async def _read(self, namespace: str, name: str) -> Seen:
        ds_doc = await self.kube.get_or_none(kubeio.DATASETS, name, namespace)
        rt_doc = await self.kube.get_or_none(kubeio.RUNTIMES, name, namespace)
        live: dict[tuple[str, str], dict[str, Any]] = {}
        pods: list[dict[str, Any]] = []
        if ds_doc is not None:
            for ref in owned_refs(namespace, name):
                obj = await self.kube.get_or_none(RESOURCES[ref.kind], ref.name, ref.namespace)
                if obj is not None:
                    live[(ref.kind, ref.name)] = obj
            if awaits_cleanup(ds_doc):
                pods, _ = await self.kube.list(kubeio.PODS, namespace)
        return Seen(namespace, name, ds_doc, rt_doc, live, _now(), pods)

    async def _carry_out(self, plan: DatasetPlan) -> None:
        for patch in plan.patches:
            await self.kube.patch(RESOURCES[patch.ref.kind], patch.ref.name, patch.body, patch.ref.namespace)
        for obj in plan.creates:
            log.info("creating %s %s", obj["kind"], obj["metadata"]["name"])
            await self.kube.create(RESOURCES[obj["kind"]], obj, obj["metadata"].get("namespace"))
        for patch in plan.updates:
            log.info("updating %s %s", patch.ref.kind, patch.ref.name)
            await self.kube.patch(RESOURCES[patch.ref.kind], patch.ref.name, patch.body, patch.ref.namespace)
        for ref in plan.deletes:
            await self._delete(ref)
        if plan.release is not None:
            ref = plan.release.ref
            await self.kube.patch(RESOURCES[ref.kind], ref.name, plan.release.body, ref.namespace)
        await self._write_statuses(plan.statuses)
        for level, message in plan.logs:
            log.log(level, "%s", message)

    async def _delete(self, ref: Ref) -> None:
        if ref.namespace is None:
            await self.kube.delete(RESOURCES[ref.kind], ref.name, missing_ok=True)
        else:
            await self.kube.delete(RESOURCES[ref.kind], ref.name, ref.namespace, propagation="Background",
                                   missing_ok=True)

    async def _write_statuses(self, writes: tuple[StatusWrite, ...]) -> None:
        for write in writes:
            ref = write.ref
            if write.write:
                await self.kube.patch_status(RESOURCES[ref.kind], ref.name, {"status": write.status},
                                             ref.namespace)
            for event in write.events:
                await self.events.record(write.doc, event.reason, event.message, event.type)

    # ------------------------------------------------------------------ measurements
    async def _measure(self, bound: Bound) -> Measured:
        ufs = await self._ufs_total(bound.dataset)
        cached = await self._cached(bound.dataset, bound.runtime, bound.ready, bound.token)
        fuses = await self._fuse_counts(bound.dataset)
        return Measured(ufs.total, ufs.files, ufs.error, cached, fuses)

    async def _fuse_counts(self, ds: Dataset) -> tuple[int, int]:
        try:
            pods, _ = await self.kube.list(kubeio.PODS, ds.meta.namespace,
                                           label_selector=f"{names.LABEL_INJECT_DONE}=true")
        except ApiError as exc:
            log.debug("cannot count sidecars of %s: %s", ds.meta.key, exc)
            return 0, 0
        return count_sidecars(pods, ds.meta.key)

    async def _secrets(self, ds: Dataset) -> SecretSource:
        mapping: dict[str, dict[str, str]] = {}
        for secret in ds.secret_names:
            doc = await self.kube.get_or_none(kubeio.SECRETS, secret, ds.meta.namespace)
            mapping[secret] = secret_values(doc or {}, f"{ds.meta.namespace}/{secret}")
        return SecretSource.from_mapping(mapping)

    async def _ufs_total(self, ds: Dataset) -> _UfsTotal:
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
