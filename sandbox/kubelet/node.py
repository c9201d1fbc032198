"""The Node object a kubelet registers, and the one-node scheduler's fit check.

The runner registers its node (`kubectl get nodes` shows it Ready, with this machine's CPU and memory
as capacity and the pod network's host address), and binds a pod only when the pod's `nodeSelector`
matches the node's labels; a pod that does not fit stays Pending with the scheduler's
`PodScheduled=False, reason Unschedulable` condition. Affinity, taints and resources are not
considered (one node: there is nowhere else to go).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from sandbox.kubelet.container import now

Obj = dict[str, Any]


def node_labels(name: str) -> dict[str, str]:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch,
            "node-role.kubernetes.io/control-plane": ""}


def node_object(name: str, host_ip: str) -> Obj:
    memory_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory_kib}Ki", "pods": "110",
                "ephemeral-storage": "0"}
    stamp = now()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name)},
        "spec": {},
        "status": {
            "capacity": capacity, "allocatable": dict(capacity),
            "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "eddy sandbox kubelet is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "nodeInfo": {"kubeletVersion": "v1.32.0-eddy-sandbox", "containerRuntimeVersion": "sandbox://1",
                         "operatingSystem": "linux", "architecture": node_labels(name)["kubernetes.io/arch"],
                         "kernelVersion": platform.release(), "osImage": "eddy sandbox"},
        },
    }


def unfit_reason(pod: Obj, labels: dict[str, str]) -> str:
    """Why the scheduler would not place `pod` on a node with `labels` ("" when it fits)."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if all(labels.get(k) == v for k, v in selector.items()):
        return ""
    return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."


def unschedulable_status(pod: Obj, message: str) -> Obj | None:
    """The status patch that marks a pod unschedulable, None when it already says so."""
    conditions = [c for c in (pod.get("status") or {}).get("conditions") or []]
    current = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
    if current is not None and current.get("status") == "False" and current.get("message") == message:
        return None
    conditions = [c for c in conditions if c.get("type") != "PodScheduled"]
    conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": message, "lastProbeTime": None, "lastTransitionTime": now()})
    return {"status": {"phase": "Pending", "conditions": conditions}}
