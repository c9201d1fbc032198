"""StatefulSet controller.

Pods `<sts>-<ordinal>` with `spec.hostname` = the pod name and `spec.subdomain` = `serviceName` (so
the headless Service gives each a stable name, `<sts>-<n>.<svc>.<ns>.svc`), labels
`statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and `controller-revision-hash`,
and one PVC per `volumeClaimTemplates` entry, `<template>-<sts>-<ordinal>`, created before the pod
(never deleted, unless `persistentVolumeClaimRetentionPolicy.whenDeleted: Delete` makes the
StatefulSet its owner). Binding a PVC is not this controller's business.

Policies: `OrderedReady` (default: one pod at a time, the next ordinal only when every lower one is
Running and Ready; scale down from the highest ordinal, one at a time, only when all others are
Running+Ready) and `Parallel` (create and delete all at once). A deleted, Failed or Succeeded pod is
replaced under the same name (after the old one is gone). `RollingUpdate` (default) replaces pods whose
`controller-revision-hash` is not the template's, highest ordinal first, one at a time, down to
`partition`; `OnDelete` only uses the new template for pods that are deleted.

Status: `replicas`, `readyReplicas`, `availableReplicas` (with `minReadySeconds`), `currentReplicas`,
`updatedReplicas`, `currentRevision`, `updateRevision`, `observedGeneration`, `collisionCount`.
Not modelled: ControllerRevision objects (so a pod below `partition` that is recreated gets the new
template, where Kubernetes would use the old revision), `maxUnavailable`, `ordinals.start`, and the
`whenScaled` PVC policy.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from typing import Any

from eddy.kube.errors import AlreadyExists
from eddy.kube.resources import PVCS, STATEFULSETS
from sandbox.workloads import (
    OwnerController,
    finished,
    is_available,
    is_ready,
    now_iso,
    owner_reference,
    pod_body,
    ready_since,
    terminating,
)
from sandbox.workloads_deployment import template_hash

Obj = dict[str, Any]
REVISION_LABEL = "controller-revision-hash"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def ordinal_of(sts_name: str, pod: Obj) -> int | None:
    match = re.fullmatch(rf"{re.escape(sts_name)}-(\d+)", str(pod["metadata"].get("name") or ""))
    return int(match.group(1)) if match else None


def revision_of(pod: Obj) -> str:
    return str((pod["metadata"].get("labels") or {}).get(REVISION_LABEL) or "")


class StatefulSetController(OwnerController):
    resource = STATEFULSETS
    component = "statefulset-controller"

    def created_message(self, owner: Obj, pod: Obj) -> str:
        return f"create Pod {pod['metadata']['name']} in StatefulSet {owner['metadata']['name']} successful"

    async def reconcile(self, owner: Obj) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        name = meta["name"]
        desired = int(spec.get("replicas", 1))
        parallel = spec.get("podManagementPolicy") == "Parallel"
        update_rev = f"{name}-{template_hash(spec.get('template') or {})}"
        by_ordinal: dict[int, Obj] = {}
        for pod in self.pods.owned(meta["namespace"], meta["uid"]):
            ordinal = ordinal_of(name, pod)
            if ordinal is not None:
                by_ordinal[ordinal] = pod
        await self._sync_pods(owner, desired, parallel, update_rev, by_ordinal)
        return await self._status(owner, desired, update_rev)

    async def _sync_pods(self, owner: Obj, desired: int, parallel: bool, update_rev: str,
                         by_ordinal: dict[int, Obj]) -> None:
        # Replace pods that ended: a StatefulSet's pods are meant to run forever.
        for ordinal, pod in sorted(by_ordinal.items()):
            if finished(pod) and not terminating(pod):
                await self.delete_pod(pod)
                by_ordinal[ordinal] = {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": now_iso()}}
        # Create what is missing, in order; OrderedReady waits for each pod to be Running+Ready.
        for ordinal in range(desired):
            present = by_ordinal.get(ordinal)
            if present is None:
                await self._create(owner, ordinal, update_rev)
                if not parallel:
                    return
            elif not parallel and (terminating(present) or not is_ready(present)):
                return
        # Scale down: condemned ordinals from the highest.
        condemned = sorted((o for o in by_ordinal if o >= desired), reverse=True)
        if condemned:
            if parallel:
                for ordinal in condemned:
                    if not terminating(by_ordinal[ordinal]):
                        await self.delete_pod(by_ordinal[ordinal])
                return
            if any(terminating(p) for p in by_ordinal.values()):
                return  # one at a time: wait until the last one is gone
            if all(is_ready(by_ordinal[o]) for o in range(desired) if o in by_ordinal):
                await self.delete_pod(by_ordinal[condemned[0]])
            return
        # Rolling update, highest ordinal first, one pod at a time.
        strategy = (owner.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type") == "OnDelete":
            return
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        pods = [by_ordinal[o] for o in range(desired) if o in by_ordinal]
        if len(pods) < desired or any(terminating(p) or not is_ready(p) for p in pods):
            return
        for ordinal in range(desired - 1, partition - 1, -1):
            if revision_of(by_ordinal[ordinal]) != update_rev:
                await self.delete_pod(by_ordinal[ordinal])
                return

    async def _create(self, owner: Obj, ordinal: int, update_rev: str) -> None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        pod_name = f"{meta['name']}-{ordinal}"
        template = copy.deepcopy(spec.get("template") or {})
        volumes = [v for v in (template.get("spec") or {}).get("volumes") or []]
        for claim in spec.get("volumeClaimTemplates") or []:
            claim_name = await self._ensure_claim(owner, claim, ordinal)
            tpl = str((claim.get("metadata") or {}).get("name"))
            volumes = [v for v in volumes if v.get("name") != tpl]
            volumes.append({"name": tpl, "persistentVolumeClaim": {"claimName": claim_name}})
        overrides: Obj = {"hostname": pod_name}
        if spec.get("serviceName"):
            overrides["subdomain"] = spec["serviceName"]
        if volumes:
            overrides["volumes"] = volumes
        labels = {POD_NAME_LABEL: pod_name, POD_INDEX_LABEL: str(ordinal), REVISION_LABEL: update_rev}
        body = pod_body(template, owner, name=pod_name, labels=labels, spec_overrides=overrides)
        with contextlib.suppress(AlreadyExists):  # the old pod is still there: its DELETED brings us back
            await self.create_pod(owner, body)

    async def _ensure_claim(self, owner: Obj, claim: Obj, ordinal: int) -> str:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        cmeta = claim.get("metadata") or {}
        claim_name = f"{cmeta.get('name')}-{meta['name']}-{ordinal}"
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        body: Obj = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name, "labels": {**(cmeta.get("labels") or {}), **selector}},
            "spec": copy.deepcopy(claim.get("spec") or {}),
        }
        if cmeta.get("annotations"):
            body["metadata"]["annotations"] = dict(cmeta["annotations"])
        policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
        if policy.get("whenDeleted") == "Delete":
            body["metadata"]["ownerReferences"] = [owner_reference(owner)]
        await self.ensure_alive(owner)
        with contextlib.suppress(AlreadyExists):
            await self.kube.create(PVCS, body, meta["namespace"])
        return claim_name

    async def _status(self, owner: Obj, desired: int, update_rev: str) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        name = meta["name"]
        pods = [p for p in self.pods.owned(meta["namespace"], meta["uid"])
                if ordinal_of(name, p) is not None and not terminating(p)]
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = time.time()
        old_status = owner.get("status") or {}
        current_rev = str(old_status.get("currentRevision") or update_rev)
        ready = [p for p in pods if is_ready(p)]
        updated = [p for p in pods if revision_of(p) == update_rev]
        if len(updated) == len(pods) == len(ready) == desired:
            current_rev = update_rev  # the rolling update is complete
        status: Obj = {
            "observedGeneration": int(meta.get("generation") or 1),
            "replicas": len(pods),
            "readyReplicas": len(ready),
            "availableReplicas": sum(1 for p in pods if is_available(p, min_ready, now)),
            "currentReplicas": sum(1 for p in pods if revision_of(p) == current_rev),
            "updatedReplicas": len(updated),
            "currentRevision": current_rev,
            "updateRevision": update_rev,
            "collisionCount": int(old_status.get("collisionCount") or 0),
        }
        await self.write_status(owner, status)
        waits = [since + min_ready - now for p in ready if (since := ready_since(p)) is not None
                 and since + min_ready > now]
        return min(waits) + 0.05 if waits else None
