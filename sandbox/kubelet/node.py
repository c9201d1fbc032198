"""The Node object a kubelet registers: `kubectl get nodes` shows it Ready, with this machine's CPU and
memory as capacity and the pod network's host address. (The one-node scheduler in runner.py binds every
pod to it: selectors, affinity and taints are not considered.)
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
