"""What the endpoints controller computes, as pure functions over Service and Pod objects.

Shared by the service proxy (`network_proxy.py`), the hosts files (`dns.py`) and the webhook service
resolution (`ClusterDns.resolve_service`), so all three agree on which pods back a Service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """One pod behind a Service: its IP, its hostname (for `<hostname>.<svc>.<ns>.svc`) and readiness."""

    ip: str
    pod: str
    hostname: str
    ready: bool
    target: Obj  # the pod, for resolving named target ports


def pod_ready(pod: Obj) -> bool:
    """Running, Ready condition True, not terminating: the pod receives Service traffic."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def pod_ip(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")


def pod_hostname(pod: Obj) -> str:
    """`spec.hostname`, else the pod name cut to 63 characters (what the kubelet sets)."""
    meta = pod.get("metadata") or {}
    return str((pod.get("spec") or {}).get("hostname") or meta.get("name") or "")[:63].rstrip("-.")


def headless(service: Obj) -> bool:
    return (service.get("spec") or {}).get("clusterIP") == "None"


def selects(service: Obj, pod: Obj) -> bool:
    """Same namespace and every `spec.selector` label matches (an empty selector selects nothing:
    such Services get their endpoints from elsewhere, which the sandbox does not model)."""
    selector = (service.get("spec") or {}).get("selector") or {}
    smeta, pmeta = service.get("metadata") or {}, pod.get("metadata") or {}
    if not selector or smeta.get("namespace") != pmeta.get("namespace"):
        return False
    labels = pmeta.get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def endpoints(service: Obj, pods: list[Obj]) -> list[Endpoint]:
    """The pods behind `service` that have an IP and are neither terminating nor finished, ready ones
    first (by name), then the not-ready ones.
    A pod's hostname is published only when its `spec.subdomain` names this Service (as the endpoints
    controller does)."""
    name = (service.get("metadata") or {}).get("name")
    found = []
    for pod in pods:
        ip = pod_ip(pod)
        if not ip or not selects(service, pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue  # a finished pod's IP is already someone else's
        spec = pod.get("spec") or {}
        hostname = pod_hostname(pod) if spec.get("hostname") and spec.get("subdomain") == name else ""
        found.append(Endpoint(ip, str(pod["metadata"].get("name")), hostname, pod_ready(pod), pod))
    return sorted(found, key=lambda e: (not e.ready, e.pod))


def published(service: Obj, pods: list[Obj]) -> list[Endpoint]:
    """The endpoints that get traffic and names: ready ones, or all with `publishNotReadyAddresses`."""
    everyone = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    return [e for e in endpoints(service, pods) if e.ready or everyone]


def service_port(service: Obj, port: int) -> Obj | None:
    """The `spec.ports` entry for a Service port number."""
    for entry in (service.get("spec") or {}).get("ports") or []:
        if int(entry.get("port") or 0) == port:
            return dict(entry)
    return None


def target_port(port_spec: Obj, pod: Obj) -> int | None:
    """`targetPort` as a number on `pod`: a number as is, a name looked up among the containers' ports
    (None when the pod has no such named port), absent means the Service port."""
    target = port_spec.get("targetPort", port_spec.get("port"))
    if isinstance(target, int):
        return target
    text = str(target)
    if text.isdigit():
        return int(text)
    spec = pod.get("spec") or {}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for cport in container.get("ports") or []:
            if cport.get("name") == text and (cport.get("protocol") or "TCP") == (
                port_spec.get("protocol") or "TCP"
            ):
                return int(cport["containerPort"])
    return None
