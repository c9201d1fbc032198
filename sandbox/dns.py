"""Cluster DNS for the sandbox: one hosts file per running pod, kept current from the API.

There is no DNS server: the pod runner bind-mounts a hosts file over each container's /etc/hosts and
`ClusterDns` rewrites it whenever a Service or a Pod changes, so the names a cluster's DNS serves
resolve inside pods through `files` in nsswitch. Files are written in place (same inode: a bind mount
pins the inode, so a rename would never be seen inside the pod).

Names in the file of a pod in namespace `ns`:
- `localhost` (and the usual IPv6 loopback names), the pod's hostname (`spec.hostname` or its name)
  and, with `spec.subdomain`, `<hostname>.<subdomain>.<ns>.svc.cluster.local` (as the kubelet writes);
- every Service as `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`, `<svc>.<ns>`, and `<svc>` for
  Services of the pod's own namespace (the search path of a pod's resolv.conf gives exactly these):
  a ClusterIP Service maps to its VIP, a headless one to each published endpoint's IP (ready pods, or
  all with `publishNotReadyAddresses`), and such an endpoint whose pod has `spec.hostname` and
  `spec.subdomain` = the Service also gets `<hostname>.<svc>.<ns>.svc[.cluster.local]` (StatefulSet pods);
- `kubernetes.default.svc.cluster.local`, `kubernetes.default.svc`, `kubernetes.default` (and
  `kubernetes` in `default`) -> `api_server_ip`.
ExternalName Services (a CNAME) cannot be expressed in a hosts file and are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eddy.kube.client import Kube
from eddy.kube.informer import Informer
from eddy.kube.resources import PODS, SERVICES
from sandbox.network_endpoints import headless, pod_ready, published, service_port, target_port

if TYPE_CHECKING:
    from sandbox.network import PodNetwork

Obj = dict[str, Any]
log = logging.getLogger("sandbox.dns")
HEADER = "# Kubernetes-managed hosts file (eddy sandbox ClusterDns).\n"
LOOPBACK = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


class NoEndpoints(LookupError):
    """A Service (port) has no ready endpoint, or does not exist: kube-apiserver's error when it calls
    a webhook through a service reference."""


@dataclass
class _Registered:
    pod: Obj
    ip: str
    path: Path
    written: str = ""


class ClusterDns:
    """Keeps one hosts file per running pod current (see the module docstring for the names)."""

    def __init__(self, kube: Kube, *, api_server_ip: str, network: PodNetwork | None = None,
                 service_ip: Callable[[str, str], str | None] | None = None,
                 cluster_domain: str = "cluster.local", resync: float = 2.0) -> None:
        """A ClusterIP Service's names point at the VIP its proxy serves: `network.service_ip` (the
        files are rewritten when the network's VIPs change), or `service_ip(ns, name)`, and without
        either at `spec.clusterIP`. A Service without an address yet is left out until it has one.
        Files are also re-rendered every `resync` seconds, in case an answer changed unannounced."""
        if network is not None:
            service_ip = service_ip or network.service_ip
            network.add_service_listener(self.changed)
        self.kube = kube
        self.api_server_ip = api_server_ip
        self.service_ip = service_ip
        self.domain = cluster_domain
        self.resync = resync
        self._pods: dict[str, _Registered] = {}
        self._services: Informer | None = None
        self._pod_informer: Informer | None = None
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._turn = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._writer is not None:
            return

        async def changed(_etype: str, _obj: Obj) -> None:
            self._dirty.set()

        self._services = Informer(self.kube, SERVICES, on_event=changed)
        self._pod_informer = Informer(self.kube, PODS, on_event=changed)
        self._services.start()
        self._pod_informer.start()
        self._writer = asyncio.create_task(self._write_loop(), name="cluster-dns-writer")
        await self._services.wait_synced(30)
        await self._pod_informer.wait_synced(30)

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        for informer in (self._services, self._pod_informer):
            if informer is not None:
                await informer.stop()
        self._services = self._pod_informer = None

    # ------------------------------------------------------------------ pods
    def register(self, pod: Obj, ip: str, hosts_path: Path) -> None:
        """Write the pod's hosts file now (creating it) and keep it current until `unregister`."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if not uid:
            raise ValueError("ClusterDns.register: the pod has no metadata.uid")
        entry = self._pods[uid] = _Registered(pod, ip, Path(hosts_path))
        text = self._render(entry)
        _write_in_place(entry.path, text)  # a few KiB: written on the spot, before any bind mount
        entry.written = text

    def changed(self) -> None:
        """Something the files depend on changed outside the API: rewrite them soon."""
        self._dirty.set()

    def unregister(self, pod_uid: str) -> None:
        self._pods.pop(pod_uid, None)

    def hosts(self, pod_uid: str) -> str:
        """The hosts file content for a registered pod as of now (what the next write puts there)."""
        return self._render(self._pods[pod_uid])

    async def refresh(self) -> None:
        """Rewrite every registered pod's hosts file that changed (the watch does it by itself)."""
        updates = []
        for entry in list(self._pods.values()):
            text = self._render(entry)
            if text != entry.written:
                updates.append((entry, text))
        for entry, text in updates:
            try:
                await asyncio.to_thread(_write_in_place, entry.path, text)
                entry.written = text
            except OSError as exc:  # the pod is being torn down
                log.warning("cannot write hosts file %s: %s", entry.path, exc)

    async def _write_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.resync)
            await asyncio.sleep(0.02)  # coalesce a burst of events
            self._dirty.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("hosts file refresh failed")

    # ------------------------------------------------------------------ content
    def _render(self, entry: _Registered) -> str:
        meta, spec = entry.pod.get("metadata") or {}, entry.pod.get("spec") or {}
        ns = str(meta.get("namespace") or "default")
        hostname = str(spec.get("hostname") or meta.get("name") or "")[:63].rstrip("-.")
        lines = [HEADER, LOOPBACK]
        own = [hostname]
        if spec.get("subdomain"):
            own.insert(0, f"{hostname}.{spec['subdomain']}.{ns}.svc.{self.domain}")
        lines.append(f"{entry.ip}\t{' '.join(own)}\n")
        kube_names = [f"kubernetes.default.svc.{self.domain}", "kubernetes.default.svc", "kubernetes.default"]
        if ns == "default":
            kube_names.append("kubernetes")
        if self.api_server_ip:
            lines.append(f"{self.api_server_ip}\t{' '.join(kube_names)}\n")
        services = self._services.items() if self._services else []
        pods = self._pod_informer.items() if self._pod_informer else []
        for svc in sorted(services, key=_key):
            lines.extend(self._service_lines(svc, pods, ns))
        return "".join(lines)

    def _service_lines(self, svc: Obj, pods: list[Obj], own_ns: str) -> list[str]:
        svc_ns, name = _key(svc)
        spec = svc.get("spec") or {}
        if (svc_ns, name) == ("default", "kubernetes") or spec.get("type") == "ExternalName":
            return []
        base = f"{name}.{svc_ns}.svc"
        names = [f"{base}.{self.domain}", base, f"{name}.{svc_ns}"] + ([name] if svc_ns == own_ns else [])
        if not headless(svc):
            if self.service_ip is not None:
                vip = self.service_ip(svc_ns, name) or ""
            else:
                vip = _valid_ip(spec.get("clusterIP"))
            return [f"{vip}\t{' '.join(names)}\n"] if vip else []
        lines = []
        for ep in published(svc, pods):
            lines.append(f"{ep.ip}\t{' '.join(names)}\n")
            if ep.hostname:
                lines.append(f"{ep.ip}\t{ep.hostname}.{base}.{self.domain} {ep.hostname}.{base}\n")
        return lines

    # ------------------------------------------------------------------ webhook service references
    async def resolve_service(self, namespace: str, name: str, port: int) -> tuple[str, int]:
        """A ready endpoint (pod IP, target port) of Service `namespace/name` port `port`, round robin;
        NoEndpoints when the Service, its port or a ready endpoint is missing."""
        svc = self._services.get(namespace, name) if self._services else None
        if svc is None:
            svc = await self.kube.get_or_none(SERVICES, name, namespace)
        if svc is None:
            raise NoEndpoints(f'service "{namespace}/{name}" not found')
        port_spec = service_port(svc, port)
        if port_spec is None:
            raise NoEndpoints(f'service "{namespace}/{name}" has no port {port}')
        candidates = self._ready(svc, self._pod_informer.items() if self._pod_informer else [], port_spec)
        if not candidates:  # the cache may trail a pod that just became ready: ask the API
            wanted = (svc.get("spec") or {}).get("selector") or {}
            selector = ",".join(f"{k}={v}" for k, v in wanted.items())
            if selector:
                pods, _ = await self.kube.list(PODS, namespace, label_selector=selector)
                candidates = self._ready(svc, pods, port_spec)
        if not candidates:
            raise NoEndpoints(f'no endpoints available for service "{namespace}/{name}" port {port}')
        self._turn += 1
        return candidates[self._turn % len(candidates)]

    @staticmethod
    def _ready(svc: Obj, pods: list[Obj], port_spec: Obj) -> list[tuple[str, int]]:
        found = []
        for ep in published(svc, pods):
            number = target_port(port_spec, ep.target)
            if number and pod_ready(ep.target):
                found.append((ep.ip, number))
        return found


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _valid_ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return ""


def _write_in_place(path: Path, text: str) -> None:
    """Overwrite keeping the inode (the file is bind-mounted into the pod's containers)."""
    data = text.encode()
    path.touch(exist_ok=True)
    with open(path, "r+b") as fh:
        fh.seek(0)
        fh.write(data)
        fh.truncate()
        fh.flush()
