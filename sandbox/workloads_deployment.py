"""Deployment controller (the Deployment and ReplicaSet controllers folded into one).

Pods are named `<deployment>-<pod-template-hash>-<5 chars>` and labelled `pod-template-hash`, as the
ReplicaSet `<deployment>-<hash>` would name them; the hash is computed the way kube-controller-manager
does (FNV-32a over the template, then its "safe" alphabet), over the template's JSON. No ReplicaSet
objects are made: each pod's controller ownerReference points at the Deployment itself (so the API
server's garbage collector still deletes pods with their Deployment, and `kubectl get rs` shows
nothing). Each pod-template-hash plays the part of one ReplicaSet.

Modelled: `replicas` up and down (the least useful pods go first: unscheduled, pending, not ready,
newest), `RollingUpdate` with `maxSurge` / `maxUnavailable` (numbers or percentages), `Recreate`,
`minReadySeconds`, and status `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
`unavailableReplicas`, `observedGeneration` and the `Available` / `Progressing` conditions that
`kubectl rollout status` reads. Not modelled: `paused`, `progressDeadlineSeconds` (no
ProgressDeadlineExceeded), revision history and rollback, the `deployment.kubernetes.io/revision`
annotation.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from eddy.kube.resources import DEPLOYMENTS
from sandbox.workloads import (
    OwnerController,
    finished,
    is_available,
    is_ready,
    pod_body,
    ready_since,
    set_condition,
    terminating,
)

Obj = dict[str, Any]
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
HASH_LABEL = "pod-template-hash"


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


def deletion_order(pods: list[Obj]) -> list[Obj]:
    """Which pods a ReplicaSet removes first: unscheduled, then pending/unknown/running, not ready
    before ready, then the newest."""
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}
    by_age = sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""), reverse=True)
    return sorted(by_age, key=lambda p: (
        bool((p.get("spec") or {}).get("nodeName")),
        phase_rank.get(str((p.get("status") or {}).get("phase")), 1),
        is_ready(p),
    ))


class DeploymentController(OwnerController):
    resource = DEPLOYMENTS
    component = "deployment-controller"

    async def reconcile(self, owner: Obj) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        hash_ = template_hash(template, int((owner.get("status") or {}).get("collisionCount") or 0))
        pods = self.pods.owned(meta["namespace"], meta["uid"])
        active = [p for p in pods if not terminating(p) and not finished(p)]
        new = [p for p in active if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == hash_]
        old = [p for p in active if p not in new]
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            await self._recreate(owner, hash_, desired, new, old, pods)
        else:
            rolling = strategy.get("rollingUpdate") or {}
            surge = resolve_int_or_percent(rolling.get("maxSurge"), desired, "25%", round_up=True)
            unavailable = resolve_int_or_percent(rolling.get("maxUnavailable"), desired, "25%",
                                                 round_up=False)
            if surge == 0 and unavailable == 0:
                unavailable = 1
            await self._rolling(owner, hash_, desired, new, old, surge, unavailable)
        return await self._status(owner, hash_, desired)

    async def _scale(self, owner: Obj, hash_: str, count: int, pods: list[Obj]) -> None:
        """Make `pods` (one hash) number `count`."""
        name = owner["metadata"]["name"]
        template = (owner.get("spec") or {}).get("template") or {}
        for _ in range(count - len(pods)):
            body = pod_body(template, owner, generate_name=f"{name}-{hash_}-", labels={HASH_LABEL: hash_})
            await self.create_pod(owner, body)
        for pod in deletion_order(pods)[: max(0, len(pods) - count)]:
            await self.delete_pod(pod)

    async def _recreate(self, owner: Obj, hash_: str, desired: int, new: list[Obj], old: list[Obj],
                        everything: list[Obj]) -> None:
        if old:
            for pod in old:
                await self.delete_pod(pod)
            return
        if any(terminating(p) and p not in new for p in everything):
            return  # Recreate: no new pod while an old one is still shutting down
        await self._scale(owner, hash_, desired, new)

    async def _rolling(self, owner: Obj, hash_: str, desired: int, new: list[Obj], old: list[Obj],
                       surge: int, unavailable: int) -> None:
        if not old:
            await self._scale(owner, hash_, desired, new)
            return
        room = desired + surge - len(new) - len(old)
        if len(new) < desired and room > 0:
            await self._scale(owner, hash_, len(new) + min(room, desired - len(new)), new)
        elif len(new) > desired:
            await self._scale(owner, hash_, desired, new)
        min_ready = owner["spec"].get("minReadySeconds", 0)
        now = time.time()
        available = sum(1 for p in [*new, *old] if is_available(p, min_ready, now))
        for pod in [p for p in old if not is_ready(p)]:  # unhealthy old pods go first, for free
            await self.delete_pod(pod)
        budget = available - (desired - unavailable)
        healthy_old = deletion_order([p for p in old if is_ready(p)])
        for pod in healthy_old[: max(0, budget)]:
            await self.delete_pod(pod)

    async def _status(self, owner: Obj, hash_: str, desired: int) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        pods = [p for p in self.pods.owned(meta["namespace"], meta["uid"]) if not terminating(p)
                and not finished(p)]
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = time.time()
        updated = [p for p in pods if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == hash_]
        ready = [p for p in pods if is_ready(p)]
        available = [p for p in pods if is_available(p, min_ready, now)]
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        max_unavailable = 0 if (spec.get("strategy") or {}).get("type") == "Recreate" else (
            resolve_int_or_percent(rolling.get("maxUnavailable"), desired, "25%", round_up=False))
        old_status = owner.get("status") or {}
        conditions = list(old_status.get("conditions") or [])
        if len(available) >= desired - max_unavailable:
            conditions = set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                       "Deployment has minimum availability.", update_time=True)
        else:
            conditions = set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                                       "Deployment does not have minimum availability.", update_time=True)
        rs_name = f"{meta['name']}-{hash_}"
        complete = len(updated) == desired == len(pods) and len(available) == desired
        if complete:
            reason, message = "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.'
        elif not old_status.get("conditions"):
            reason, message = "NewReplicaSetCreated", f'Created new replica set "{rs_name}"'
        else:
            reason, message = "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.'
        conditions = set_condition(conditions, "Progressing", "True", reason, message, update_time=True)
        status: Obj = {
            "observedGeneration": int(meta.get("generation") or 1),
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": len(ready),
            "availableReplicas": len(available),
            "unavailableReplicas": max(0, desired - len(available)),
            "conditions": conditions,
        }
        if "collisionCount" in old_status:
            status["collisionCount"] = old_status["collisionCount"]
        await self.write_status(owner, status)
        waits = [since + min_ready - now for p in ready if (since := ready_since(p)) is not None
                 and since + min_ready > now]
        return min(waits) + 0.05 if waits else None
