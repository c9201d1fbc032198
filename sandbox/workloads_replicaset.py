"""ReplicaSet controller: `spec.replicas` pods from the template, named `<replicaset>-<5 chars>`.

A Deployment's ReplicaSet is `<deployment>-<pod-template-hash>`, so its pods are
`<deployment>-<hash>-<5 chars>`. Too few pods: create; too many: delete the least useful first
(unscheduled, pending, not ready, newest), as the ReplicaSet controller ranks them. Finished and
terminating pods do not count. Status: `replicas`, `fullyLabeledReplicas`, `readyReplicas`,
`availableReplicas` (with `minReadySeconds`), `observedGeneration`, and the `ReplicaFailure`
condition (reason `FailedCreate`, the API's message) while pods cannot be created.
"""

from __future__ import annotations

import time
from typing import Any

from eddy.kube.errors import KubeError
from eddy.kube.resources import Resource
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
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet", has_status=True)


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


class ReplicaSetController(OwnerController):
    resource = REPLICASETS
    component = "replicaset-controller"

    async def reconcile(self, owner: Obj) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        active = [p for p in self.pods.owned(meta["namespace"], meta["uid"])
                  if not terminating(p) and not finished(p)]
        conditions = [c for c in (owner.get("status") or {}).get("conditions") or []
                      if c.get("type") != "ReplicaFailure"]
        try:
            for _ in range(desired - len(active)):
                active.append(await self.create_pod(owner, pod_body(template, owner,
                                                                    generate_name=f"{meta['name']}-")))
        except KubeError as exc:  # denied by admission, say: shown on the ReplicaSet and its Deployment
            failure = set_condition((owner.get("status") or {}).get("conditions") or [], "ReplicaFailure",
                                    "True", "FailedCreate", exc.message or str(exc))
            await self.write_status(owner, {**(owner.get("status") or {}), "conditions": failure})
            raise
        extra = deletion_order(active)[: max(0, len(active) - desired)]
        for pod in extra:
            await self.delete_pod(pod)
        active = [p for p in active if p not in extra]
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = time.time()
        labels = (template.get("metadata") or {}).get("labels") or {}
        ready = [p for p in active if is_ready(p)]
        status: Obj = {
            "replicas": len(active),
            "fullyLabeledReplicas": sum(1 for p in active if labels.items() <= (
                p["metadata"].get("labels") or {}).items()),
            "readyReplicas": len(ready),
            "availableReplicas": sum(1 for p in active if is_available(p, min_ready, now)),
            "observedGeneration": int(meta.get("generation") or 1),
        }
        if conditions:
            status["conditions"] = conditions
        await self.write_status(owner, status)
        waits = [since + min_ready - now for p in ready if (since := ready_since(p)) is not None
                 and since + min_ready > now]
        return min(waits) + 0.05 if waits else None
