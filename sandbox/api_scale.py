"""The `scale` subresource of Deployments, StatefulSets and ReplicaSets: an autoscaling/v1 `Scale`
that reads and writes the workload's `spec.replicas` (what `kubectl scale` and autoscalers use)."""

from __future__ import annotations

import copy

from sandbox.api_kinds import ApiError, Obj


def scale_of(obj: Obj) -> Obj:
    """The autoscaling/v1 Scale of a Deployment, StatefulSet or ReplicaSet (its `scale` subresource)."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    labels = ((spec.get("selector") or {}).get("matchLabels") or {}).items()
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in labels),
        },
    }


def scaled(obj: Obj, scale: Obj) -> Obj:
    replicas = (scale.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise ApiError(
            422,
            "Invalid",
            f'Scale.autoscaling "{obj["metadata"]["name"]}" is invalid: spec.replicas: '
            "Invalid value: must be greater than or equal to 0",
        )
    new = copy.deepcopy(obj)
    new.setdefault("spec", {})["replicas"] = replicas
    return new
