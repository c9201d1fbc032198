"""A pod's `status` as kubelet's status manager writes it: phase, conditions, IPs, container statuses.

Conditions keep their `lastTransitionTime` until their status flips (`Conditions` remembers them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sandbox.kubelet.container import Container, now

Obj = dict[str, Any]


class Conditions:
    def __init__(self) -> None:
        self._since: dict[str, tuple[str, str]] = {}  # type -> (status, lastTransitionTime)

    def make(self, ctype: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        before = self._since.get(ctype)
        if before is None or before[0] != status:
            before = (status, now())
            self._since[ctype] = before
        out: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": before[1]}
        if reason:
            out["reason"] = reason
        if message:
            out["message"] = message
        return out


def qos_class(pod: Obj) -> str:
    """Guaranteed (every container: cpu and memory limits, requests equal to them), BestEffort (no
    requests or limits at all), else Burstable."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    guaranteed, any_set = True, False
    for c in containers:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        for name in ("cpu", "memory"):
            if name in limits or name in requests:
                any_set = True
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _names(containers: Sequence[Container]) -> str:
    return "[" + " ".join(c.name for c in containers) + "]"


def pod_status(
    *,
    phase: str,
    conditions: Conditions,
    init: Sequence[Container],
    main: Sequence[Container],
    initialized: bool,
    network_ready: bool,
    schedule_error: str,
    host_ip: str,
    pod_ip: str,
    start_time: str,
    qos: str = "BestEffort",
    reason: str = "",
    message: str = "",
) -> Obj:
    sidecars = [c for c in init if c.role == "sidecar"]
    not_init = [c for c in init if not (c.role == "sidecar" and c.started) and not (
        c.role == "init" and c.terminated is not None and c.terminated.exit_code == 0 and c.done.is_set())]
    unready = [c for c in [*sidecars, *main] if not c.ready]
    terminal = phase in ("Succeeded", "Failed")
    conds = [
        conditions.make("PodReadyToStartContainers", network_ready),
        conditions.make("Initialized", initialized or terminal,
                        "" if initialized or terminal else "ContainersNotInitialized",
                        "" if initialized or terminal else f"containers with incomplete status: "
                        f"{_names(not_init)}"),
    ]
    if terminal:
        conds += [conditions.make("Ready", False, "PodCompleted"),
                  conditions.make("ContainersReady", False, "PodCompleted")]
    else:
        message_unready = f"containers with unready status: {_names(unready)}"
        conds += [conditions.make("Ready", not unready, "" if not unready else "ContainersNotReady",
                                  "" if not unready else message_unready),
                  conditions.make("ContainersReady", not unready, "" if not unready else "ContainersNotReady",
                                  "" if not unready else message_unready)]
    conds.append(conditions.make("PodScheduled", not schedule_error,
                                 "Unschedulable" if schedule_error else "", schedule_error))
    status: Obj = {"phase": phase, "conditions": conds, "startTime": start_time,
                   "containerStatuses": [c.status() for c in main]}
    if host_ip:
        status["hostIP"], status["hostIPs"] = host_ip, [{"ip": host_ip}]
    if pod_ip:
        status["podIP"], status["podIPs"] = pod_ip, [{"ip": pod_ip}]
    if init:
        status["initContainerStatuses"] = [c.status() for c in init]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    status["qosClass"] = qos
    return status
