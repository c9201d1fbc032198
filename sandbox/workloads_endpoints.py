"""Endpoints and EndpointSlice controllers: what `kubectl get endpoints` / `describe service` show.

For every Service with a selector, one `Endpoints` object of the same name (ready pods in
`addresses`, the others in `notReadyAddresses`, everything in `addresses` with
`publishNotReadyAddresses`; `hostname` for pods whose `spec.subdomain` names the Service) and one
`EndpointSlice` per distinct port set (`<svc>-<hash>`, labelled `kubernetes.io/service-name`, owned by
the Service, with `ready` / `serving` / `terminating` conditions). Named target ports are resolved per
pod, so pods with different numbers for one name land in different subsets / slices, as in Kubernetes.
Services without a selector are left alone (their endpoints are someone else's), and the sandbox's
proxy and DNS compute endpoints themselves (`network_endpoints.py`); these objects are for people and
for clients that read them. Not modelled: topology hints, `nodeName`/zone, slices of more than 100
endpoints, dual stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

from eddy.kube.errors import AlreadyExists, NotFound
from eddy.kube.resources import SERVICES, Resource
from sandbox.network_endpoints import endpoints, target_port
from sandbox.workloads import Key, OwnerController, owner_reference

Obj = dict[str, Any]
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"


def _target_ref(pod: Obj) -> Obj:
    meta = pod["metadata"]
    return {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}


def port_groups(service: Obj, pods: list[Obj]) -> list[tuple[list[Obj], list[Any]]]:
    """The Service's ports resolved on each pod behind it, grouped by the resolved port set:
    `[(ports, endpoints)]` in a stable order."""
    spec = service.get("spec") or {}
    everyone = bool(spec.get("publishNotReadyAddresses"))
    groups: dict[str, tuple[list[Obj], list[Any]]] = {}
    for ep in endpoints(service, pods):
        ports = []
        for entry in spec.get("ports") or []:
            number = target_port(entry, ep.target)
            if number is None:
                continue
            port: Obj = {"port": number, "protocol": entry.get("protocol") or "TCP"}
            if entry.get("name"):
                port["name"] = entry["name"]
            if entry.get("appProtocol"):
                port["appProtocol"] = entry["appProtocol"]
            ports.append(port)
        if not ports:
            continue
        key = json.dumps(ports, sort_keys=True)
        groups.setdefault(key, (ports, []))[1].append((ep, ep.ready or everyone))
    return [groups[k] for k in sorted(groups)]


class EndpointsController(OwnerController):
    resource = SERVICES
    component = "endpoint-controller"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._written: dict[Key, Obj] = {}  # what we last wrote: a no-op reconcile makes no request
        self._slices: dict[Key, dict[str, Obj]] = {}

    def pod_event(self, etype: str, pod: Obj) -> None:
        """Any pod change may move any Service of its namespace."""
        ns = str(pod["metadata"].get("namespace") or "")
        for svc in self.owners.items():
            if svc["metadata"].get("namespace") == ns and (svc.get("spec") or {}).get("selector"):
                self.enqueue((ns, str(svc["metadata"]["name"])))

    async def reconcile(self, owner: Obj) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        if not spec.get("selector") or spec.get("type") == "ExternalName":
            return None
        key = (str(meta["namespace"]), str(meta["name"]))
        pods = [p for p in self.pods.informer.items() if p["metadata"].get("namespace") == key[0]]
        groups = port_groups(owner, pods)
        await self._write_endpoints(owner, key, groups)
        await self._write_slices(owner, key, groups)
        return None

    async def _write_endpoints(self, owner: Obj, key: Key, groups: list[tuple[list[Obj], list[Any]]]) -> None:
        subsets = []
        for ports, members in groups:
            ready: list[Obj] = []
            not_ready: list[Obj] = []
            for ep, is_ready in members:
                address: Obj = {"ip": ep.ip, "targetRef": _target_ref(ep.target)}
                if ep.hostname:
                    address["hostname"] = ep.hostname
                (ready if is_ready else not_ready).append(address)
            subset: Obj = {"ports": ports}
            if ready:
                subset["addresses"] = sorted(ready, key=lambda a: a["ip"])
            if not_ready:
                subset["notReadyAddresses"] = sorted(not_ready, key=lambda a: a["ip"])
            subsets.append(subset)
        labels = dict(owner["metadata"].get("labels") or {})
        body: Obj = {"apiVersion": "v1", "kind": "Endpoints",
                     "metadata": {"name": key[1], "namespace": key[0], "labels": labels}}
        if subsets:
            body["subsets"] = subsets
        if key not in self._written:
            live = await self.kube.get_or_none(ENDPOINTS, key[1], key[0])
            if live is not None:
                self._written[key] = {"metadata": {"labels": (live["metadata"].get("labels") or {})},
                                      "subsets": live.get("subsets")}
        wanted = {"metadata": {"labels": labels}, "subsets": body.get("subsets")}
        if self._written.get(key) == wanted:
            return
        try:
            await self.kube.create(ENDPOINTS, body, key[0])
        except AlreadyExists:
            await self.kube.replace(ENDPOINTS, key[1], body, key[0])
        self._written[key] = wanted

    async def _write_slices(self, owner: Obj, key: Key, groups: list[tuple[list[Obj], list[Any]]]) -> None:
        wanted: dict[str, Obj] = {}
        for ports, members in groups:
            digest = hashlib.sha256(f"{owner['metadata']['uid']}/{json.dumps(ports)}".encode()).hexdigest()
            name = f"{key[1][:57]}-{digest[:5]}"
            items = []
            for ep, is_ready in sorted(members, key=lambda m: m[0].ip):
                item: Obj = {"addresses": [ep.ip], "targetRef": _target_ref(ep.target),
                             "conditions": {"ready": is_ready, "serving": is_ready, "terminating": False}}
                if ep.hostname:
                    item["hostname"] = ep.hostname
                items.append(item)
            wanted[name] = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": key[0], "ownerReferences": [owner_reference(owner)],
                             "labels": {SERVICE_NAME_LABEL: key[1], MANAGED_BY_LABEL: MANAGED_BY}},
                "addressType": "IPv4", "endpoints": items, "ports": ports,
            }
        if key not in self._slices:
            selector = f"{SERVICE_NAME_LABEL}={key[1]}"
            live, _ = await self.kube.list(ENDPOINT_SLICES, key[0], label_selector=selector)
            self._slices[key] = {s["metadata"]["name"]: _slice_content(s) for s in live
                                 if (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY}
        known = self._slices[key]
        for name, body in wanted.items():
            if known.get(name) == _slice_content(body):
                continue
            try:
                await self.kube.create(ENDPOINT_SLICES, body, key[0])
            except AlreadyExists:
                await self.kube.replace(ENDPOINT_SLICES, name, body, key[0])
            known[name] = _slice_content(body)
        for name in [n for n in known if n not in wanted]:
            with contextlib.suppress(NotFound):
                await self.kube.delete(ENDPOINT_SLICES, name, key[0])
            del known[name]

    async def gone(self, key: Key) -> None:
        """The Service is deleted: its Endpoints go (its slices go with it through their owner)."""
        self._slices.pop(key, None)
        if self._written.pop(key, None) is not None:
            await self.kube.delete(ENDPOINTS, key[1], key[0], missing_ok=True)


def _slice_content(obj: Obj) -> Obj:
    return {"endpoints": obj.get("endpoints") or [], "ports": obj.get("ports") or [],
            "labels": (obj.get("metadata") or {}).get("labels") or {}}
