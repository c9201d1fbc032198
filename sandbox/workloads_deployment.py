"""Deployment controller, over ReplicaSets as kube-controller-manager does it.

Each template gets a ReplicaSet `<deployment>-<pod-template-hash>` (owned by the Deployment, labelled
and selecting `pod-template-hash`, annotated `deployment.kubernetes.io/revision`), whose pods the
ReplicaSet controller (`workloads_replicaset.py`) names `<deployment>-<hash>-<5 chars>`. The hash is
computed the way kube-controller-manager does (FNV-32a over the template, then its "safe" alphabet),
over the template's JSON. The API server's garbage collector deletes ReplicaSets with their
Deployment and pods with their ReplicaSet.

Modelled: `replicas`, `RollingUpdate` with `maxSurge` / `maxUnavailable` (numbers or percentages:
the new ReplicaSet grows within `replicas + maxSurge`, old ones shrink while `replicas -
maxUnavailable` pods stay available, unavailable ones first), `Recreate` (old pods all gone before the
new ReplicaSet grows), `minReadySeconds`, `revisionHistoryLimit`, `ScalingReplicaSet` Events, and
status `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`, `unavailableReplicas`,
`observedGeneration` and the `Available` / `Progressing` conditions that `kubectl rollout status`
reads (`Progressing` turns False with `ProgressDeadlineExceeded` when a rollout makes no progress for
`progressDeadlineSeconds`, and Unknown with `DeploymentPaused` under `paused`, which stops the
rollout), plus `ReplicaFailure` while the new ReplicaSet cannot create pods. Not modelled: rollback
(`kubectl rollout undo` re-uses an old ReplicaSet's revision), scaling a paused Deployment,
proportional scaling of several ReplicaSets during a rollout, the Deployment's own revision
annotation.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.errors import AlreadyExists
from eddy.kube.resources import DEPLOYMENTS
from sandbox.workloads import (
    OwnedIndex,
    OwnerController,
    controller_of,
    now_iso,
    owner_reference,
    parse_time,
    set_condition,
    terminating,
)
from sandbox.workloads_replicaset import REPLICASETS, deletion_order

__all__ = ["HASH_LABEL", "DeploymentController", "deletion_order", "template_hash"]
Obj = dict[str, Any]
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


def fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Obj, collision_count: int = 0) -> str:
    """kube-controller-manager's ComputeHash shape: FNV-32a, collisionCount mixed in, the decimal
    number written with the alphabet that cannot spell words."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += collision_count.to_bytes(4, "little")
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in str(fnv32a(data)).encode())


def resolve_int_or_percent(value: Any, total: int, default: str, *, round_up: bool) -> int:
    value = default if value is None else value
    if isinstance(value, str) and value.endswith("%"):
        share = total * float(value[:-1]) / 100.0
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


class DeploymentController(OwnerController):
    resource = DEPLOYMENTS
    component = "deployment-controller"

    def __init__(self, kube: Kube, pods: OwnedIndex) -> None:
        super().__init__(kube, pods)
        self.replicasets = OwnedIndex(kube, REPLICASETS)
        self.replicasets.informer.add_handler(self._replicaset_event)

    async def _replicaset_event(self, _etype: str, rs: Obj) -> None:
        self.pod_event(_etype, rs)  # the same thing: enqueue the controlling Deployment

    def start(self) -> None:
        self.replicasets.informer.start()
        super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.replicasets.informer.stop()

    async def wait_synced(self, timeout: float) -> None:
        await super().wait_synced(timeout)
        await self.replicasets.informer.wait_synced(timeout)

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self, owner: Obj) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        hash_ = template_hash(spec.get("template") or {},
                              int((owner.get("status") or {}).get("collisionCount") or 0))
        sets = self.replicasets.owned(meta["namespace"], meta["uid"])
        new = next((rs for rs in sets if _labels(rs).get(HASH_LABEL) == hash_), None)
        olds = sorted((rs for rs in sets if rs is not new), key=_revision)
        strategy = spec.get("strategy") or {}
        recreate = strategy.get("type") == "Recreate"
        rolling = strategy.get("rollingUpdate") or {}
        surge = unavailable = 0
        if not recreate:
            surge = resolve_int_or_percent(rolling.get("maxSurge"), desired, "25%", round_up=True)
            unavailable = resolve_int_or_percent(rolling.get("maxUnavailable"), desired, "25%",
                                                 round_up=False)
        if not recreate and surge == 0 and unavailable == 0:
            unavailable = 1
        old_total = sum(_replicas(rs) for rs in olds)
        if spec.get("paused"):  # `kubectl rollout pause`: no rollout, only the status
            return await self._status(owner, desired, unavailable, hash_)
        if new is None:
            if recreate:
                initial = 0 if old_total or self._old_pods(olds) else desired
            else:
                initial = desired if not old_total else max(0, min(desired, desired + surge - old_total))
            new = await self._create_replicaset(owner, hash_, initial, olds, desired + surge)
        if recreate:
            await self._recreate(owner, desired, new, olds)
        else:
            await self._rolling(owner, desired, new, olds, surge, unavailable)
        await self._cleanup(owner, olds)
        return await self._status(owner, desired, unavailable, hash_)

    def _old_pods(self, olds: list[Obj]) -> bool:
        return any(self.pods.owned(rs["metadata"]["namespace"], rs["metadata"]["uid"]) for rs in olds)

    async def _create_replicaset(self, owner: Obj, hash_: str, replicas: int, olds: list[Obj],
                                 max_replicas: int) -> Obj:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), HASH_LABEL: hash_}
        selector = copy.deepcopy(spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: hash_}
        revision = max([_revision(rs) for rs in olds] + [0]) + 1
        body: Obj = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{hash_}", "labels": dict(tmeta["labels"]),
                "annotations": {REVISION_ANNOTATION: str(revision),
                                "deployment.kubernetes.io/desired-replicas": str(spec.get("replicas", 1)),
                                "deployment.kubernetes.io/max-replicas": str(max_replicas)},
                "ownerReferences": [owner_reference(owner)],
            },
            "spec": {"replicas": replicas, "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                     "selector": selector, "template": template},
        }
        await self.ensure_alive(owner)
        try:
            rs = await self.kube.create(REPLICASETS, body, meta["namespace"])
        except AlreadyExists:  # ours from a run that did not see it yet, or a hash collision
            rs = await self.kube.get(REPLICASETS, body["metadata"]["name"], meta["namespace"])
            if (controller_of(rs) or {}).get("uid") != meta["uid"]:
                raise
        else:
            await self.events.record(owner, "ScalingReplicaSet",
                                     f"Scaled up replica set {rs['metadata']['name']} from 0 to {replicas}")
        self.replicasets.expect_created(rs)
        return rs

    async def _scale(self, owner: Obj, rs: Obj, replicas: int) -> Obj:
        before = _replicas(rs)
        if before == replicas:
            return rs
        meta = rs["metadata"]
        scaled = await self.kube.patch(REPLICASETS, meta["name"], {"spec": {"replicas": replicas}},
                                       meta["namespace"])
        self.replicasets.expect_updated(scaled)
        way = "up" if replicas > before else "down"
        await self.events.record(owner, "ScalingReplicaSet",
                                 f"Scaled {way} replica set {meta['name']} from {before} to {replicas}")
        return scaled

    async def _recreate(self, owner: Obj, desired: int, new: Obj, olds: list[Obj]) -> None:
        """All old pods go first; the new ReplicaSet grows only when none of them is left."""
        for rs in olds:
            await self._scale(owner, rs, 0)
        if not self._old_pods(olds):
            await self._scale(owner, new, desired)

    async def _rolling(self, owner: Obj, desired: int, new: Obj, olds: list[Obj], surge: int,
                       unavailable: int) -> None:
        """kube-controller-manager's rolling update over ReplicaSet sizes: grow the new one within
        `desired + maxSurge`, shrink old ones while `desired - maxUnavailable` pods stay available
        (unavailable old pods go first)."""
        if not any(_replicas(rs) for rs in olds):
            await self._scale(owner, new, desired)
            return
        total = _replicas(new) + sum(_replicas(rs) for rs in olds)
        if _replicas(new) > desired:
            new = await self._scale(owner, new, desired)
        elif _replicas(new) < desired and (room := desired + surge - total) > 0:
            new = await self._scale(owner, new, _replicas(new) + min(room, desired - _replicas(new)))
        total = _replicas(new) + sum(_replicas(rs) for rs in olds)
        min_available = desired - unavailable
        new_unavailable = _replicas(new) - _available(new)
        budget = total - min_available - new_unavailable
        for n, rs in enumerate(olds):  # first the pods that are not available anyway
            if budget <= 0:
                break
            cut = min(budget, _replicas(rs) - _available(rs))
            if cut > 0:
                olds[n] = await self._scale(owner, rs, _replicas(rs) - cut)
                budget -= cut
        available = _available(new) + sum(min(_available(rs), _replicas(rs)) for rs in olds)
        budget = available - min_available
        for rs in olds:
            if budget <= 0:
                break
            cut = min(budget, _replicas(rs))
            if cut > 0:
                await self._scale(owner, rs, _replicas(rs) - cut)
                budget -= cut

    async def _cleanup(self, owner: Obj, olds: list[Obj]) -> None:
        """Old ReplicaSets scaled to nothing beyond `revisionHistoryLimit` (10) go, oldest first."""
        limit = int((owner.get("spec") or {}).get("revisionHistoryLimit", 10))
        idle = [rs for rs in olds if not _replicas(rs) and not (rs.get("status") or {}).get("replicas")]
        for rs in idle[: max(0, len(idle) - limit)]:
            meta = rs["metadata"]
            await self.kube.delete(REPLICASETS, meta["name"], meta["namespace"], missing_ok=True)
            self.replicasets.expect_deleted(rs)

    async def _status(self, owner: Obj, desired: int, max_unavailable: int, hash_: str) -> float | None:
        meta = owner["metadata"]
        sets = [rs for rs in self.replicasets.owned(meta["namespace"], meta["uid"]) if not terminating(rs)]
        new = next((rs for rs in sets if _labels(rs).get(HASH_LABEL) == hash_), None)

        def total(field: str) -> int:
            return sum(int((rs.get("status") or {}).get(field) or 0) for rs in sets)

        replicas, available = total("replicas"), total("availableReplicas")
        updated = int(((new or {}).get("status") or {}).get("replicas") or 0)
        old_status = owner.get("status") or {}
        conditions = list(old_status.get("conditions") or [])
        if available >= desired - max_unavailable:
            conditions = set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                       "Deployment has minimum availability.", update_time=True)
        else:
            conditions = set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                                       "Deployment does not have minimum availability.", update_time=True)
        rs_name = f"{meta['name']}-{hash_}"
        spec = owner.get("spec") or {}
        previous = next((c for c in conditions if c.get("type") == "Progressing"), {})
        counts = (replicas, updated, available)
        moved = counts != tuple(int(old_status.get(k) or 0) for k in (
            "replicas", "updatedReplicas", "availableReplicas"))
        since = parse_time(previous.get("lastUpdateTime")) or time.time()
        deadline = int(spec.get("progressDeadlineSeconds", 600))
        again: float | None = None
        status_word = "True"
        if spec.get("paused"):
            status_word, reason, message = "Unknown", "DeploymentPaused", "Deployment is paused"
        elif updated == desired == replicas and available == desired:
            reason, message = "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.'
        elif not old_status.get("conditions"):
            reason, message = "NewReplicaSetCreated", f'Created new replica set "{rs_name}"'
        elif not moved and previous.get("reason") == "NewReplicaSetAvailable" and f'"{rs_name}"' in str(
                previous.get("message")):
            # The rollout was done; pods lost since do not reopen it (nor its deadline), as in
            # kube-controller-manager.
            reason, message = "NewReplicaSetAvailable", str(previous["message"])
        elif not moved and previous.get("reason") != "DeploymentPaused" and (
                previous.get("reason") == "ProgressDeadlineExceeded" or time.time() - since > deadline):
            status_word, reason = "False", "ProgressDeadlineExceeded"
            message = f'ReplicaSet "{rs_name}" has timed out progressing.'
        else:
            reason, message = "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.'
            again = deadline - (0 if moved else time.time() - since) + 0.5  # look again at the deadline
        if moved and reason == "ReplicaSetUpdated":  # progress: the deadline starts over
            conditions = [c for c in conditions if c.get("type") != "Progressing"]
            conditions.append({**previous, "type": "Progressing", "lastUpdateTime": now_iso()})
        conditions = set_condition(conditions, "Progressing", status_word, reason, message, update_time=True)
        failure = next((c for c in ((new or {}).get("status") or {}).get("conditions") or []
                        if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), None)
        if failure is not None:  # the new ReplicaSet cannot create pods: say so on the Deployment
            conditions = set_condition(conditions, "ReplicaFailure", "True", str(failure.get("reason")),
                                       str(failure.get("message")), update_time=True)
        else:
            conditions = [c for c in conditions if c.get("type") != "ReplicaFailure"]
        status: Obj = {
            "observedGeneration": int(meta.get("generation") or 1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(0, desired - available),
            "conditions": conditions,
        }
        if "collisionCount" in old_status:
            status["collisionCount"] = old_status["collisionCount"]
        await self.write_status(owner, status)
        return again


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _replicas(rs: Obj) -> int:
    return int((rs.get("spec") or {}).get("replicas", 1))


def _available(rs: Obj) -> int:
    return int((rs.get("status") or {}).get("availableReplicas") or 0)


def _revision(rs: Obj) -> int:
    try:
        return int(((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION) or 0)
    except ValueError:
        return 0
