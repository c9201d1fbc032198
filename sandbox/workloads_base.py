"""The objects the workload controllers read and write: pod and condition helpers, owner references,
and `OwnedIndex` (an informer plus the writes it has not shown yet). See `workloads.py`."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.informer import Informer
from eddy.kube.resources import PODS, Resource

Obj = dict[str, Any]
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
