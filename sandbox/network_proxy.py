"""Service VIPs with a userspace proxy, as kube-proxy's old `userspace` mode did.

Each ClusterIP Service (not headless) gets a VIP from the service CIDR: its `spec.clusterIP` when that
lies in the CIDR and is free, else the lowest free address. The VIP is added to the bridge as a /32, so
pods reach it through their service-CIDR route and the host delivers it locally; for every TCP port an
asyncio server listens on VIP:port and relays each connection to a ready endpoint (round robin; a
refused endpoint is skipped), `targetPort` by number or by the container port's name. A Service with no
ready endpoint closes the connection at once (the client sees a reset or EOF, not a hang).

`default/kubernetes` is special: its VIP is the CIDR's first address and it relays to the API server
address given to the proxy (even before any Service object exists for it). UDP and other protocols
are not proxied; neither are NodePorts, session affinity or external IPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.informer import Informer
from eddy.kube.resources import PODS, SERVICES
from sandbox.network_cmd import run_ip
from sandbox.network_endpoints import headless, published, target_port

Obj = dict[str, Any]
Key = tuple[str, str]
log = logging.getLogger("sandbox.network")
KUBERNETES: Key = ("default", "kubernetes")
CONNECT_TIMEOUT = 5.0


@dataclass
class _Port:
    """One listening VIP:port and where its connections go."""

    port: int
    server: asyncio.Server | None = None
    backends: list[tuple[str, int]] = field(default_factory=list)
    turn: int = 0


@dataclass
class _Service:
    vip: str
    ports: dict[int, _Port] = field(default_factory=dict)


class ServiceProxy:
    def __init__(self, bridge: str, service_net: ipaddress.IPv4Network, *,
                 api_server: tuple[str, int] | None = None, kubernetes_port: int = 443) -> None:
        self.bridge = bridge
        self.service_net = service_net
        self.api_server = api_server
        self.kubernetes_port = kubernetes_port
        self.kubernetes_ip = str(service_net[1])
        self._services: dict[Key, _Service] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._informers: list[Informer] = []
        self._dirty = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.listeners: list[Callable[[], None]] = []  # called after a sync that changed the VIPs
        self._last: tuple[list[Obj], list[Obj]] = ([], [])

    def service_ip(self, namespace: str, name: str) -> str | None:
        entry = self._services.get((namespace, name))
        if entry is not None:
            return entry.vip
        return self.kubernetes_ip if (namespace, name) == KUBERNETES and self.api_server else None

    async def start(self) -> None:
        if self.api_server:
            await self.sync([], [])

    def set_api_server(self, host: str, port: int) -> None:
        """Where `default/kubernetes` relays to (takes effect at the next sync)."""
        self.api_server = (host, port)

    # ------------------------------------------------------------------ reconcile
    async def sync(self, services: Iterable[Obj], pods: list[Obj]) -> None:
        async with self._lock:
            self._last = (list(services), list(pods))
            await self._sync(*self._last)

    async def resync(self) -> None:
        """Sync again from the informers (when watching) or from the last lists given."""
        if self._informers:
            self._dirty.set()
        else:
            await self.sync(*self._last)

    async def _sync(self, services: list[Obj], pods: list[Obj]) -> None:
        before = {k: s.vip for k, s in self._services.items()}
        wanted: dict[Key, tuple[Obj, dict[int, list[tuple[str, int]]]]] = {}
        for svc in services:
            meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            if headless(svc) or spec.get("type") == "ExternalName" or key == KUBERNETES:
                continue
            ready = published(svc, pods)
            ports: dict[int, list[tuple[str, int]]] = {}
            for entry in spec.get("ports") or []:
                if (entry.get("protocol") or "TCP") != "TCP" or not entry.get("port"):
                    continue
                backends = []
                for ep in ready:
                    number = target_port(entry, ep.target)
                    if number:
                        backends.append((ep.ip, number))
                ports[int(entry["port"])] = backends
            wanted[key] = (svc, ports)
        if self.api_server:
            kube_svc = next((s for s in services if _key(s) == KUBERNETES), None)
            numbers = [int(p["port"]) for p in ((kube_svc or {}).get("spec") or {}).get("ports") or []
                       if p.get("port") and (p.get("protocol") or "TCP") == "TCP"] or [self.kubernetes_port]
            wanted[KUBERNETES] = ({}, {n: [self.api_server] for n in numbers})
        for key in [k for k in self._services if k not in wanted]:
            await self._remove(key)
        for key, (svc, ports) in wanted.items():
            entry = self._services.get(key)
            if entry is None:
                vip = self._vip_for(key, svc)
                if vip is None:
                    log.warning("service CIDR %s is full: Service %s/%s gets no VIP", self.service_net, *key)
                    continue
                # check=False: an address left from an interrupted sync is fine; a real failure shows
                # as the listener's bind error below, for this Service only.
                await run_ip("addr", "add", f"{vip}/32", "dev", self.bridge, check=False)
                entry = self._services[key] = _Service(vip)
            for number in [n for n in entry.ports if n not in ports]:
                await _close_port(entry.ports.pop(number))
            for number, backends in ports.items():
                port = entry.ports.get(number)
                if port is None:
                    port = entry.ports[number] = _Port(number)
                    try:
                        port.server = await asyncio.start_server(
                            functools.partial(self._relay, port=port), entry.vip, number, reuse_address=True)
                    except OSError as exc:
                        log.warning("cannot listen on %s:%d for %s/%s: %s", entry.vip, number, *key, exc)
                port.backends = backends
        if {k: s.vip for k, s in self._services.items()} != before:
            for listener in list(self.listeners):
                listener()

    def _vip_for(self, key: Key, svc: Obj) -> str | None:
        taken = {s.vip for s in self._services.values()}
        if key == KUBERNETES:
            return self.kubernetes_ip
        asked = str((svc.get("spec") or {}).get("clusterIP") or "")
        with contextlib.suppress(ValueError):
            if asked and ipaddress.IPv4Address(asked) in self.service_net and asked not in taken and (
                asked != self.kubernetes_ip
            ):
                return asked
        for ip in itertools.islice(self.service_net.hosts(), 1, None):  # the first is `kubernetes`'s
            if str(ip) not in taken:
                return str(ip)
        return None

    async def _remove(self, key: Key) -> None:
        entry = self._services.pop(key)
        for port in entry.ports.values():
            await _close_port(port)
        await run_ip("addr", "del", f"{entry.vip}/32", "dev", self.bridge, check=False)

    async def close(self) -> None:
        """Stop watching, close every listener and open connection (the VIPs go with the bridge)."""
        for informer in self._informers:
            await informer.stop()
        self._informers = []
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None
        for entry in self._services.values():
            for port in entry.ports.values():
                await _close_port(port)
        self._services.clear()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ watch
    async def watch(self, kube: Kube) -> None:
        """Services and Pods informers; every change (coalesced) re-syncs the proxy."""
        if self._informers:
            return

        async def changed(_etype: str, _obj: Obj) -> None:
            self._dirty.set()

        self._informers = [Informer(kube, SERVICES, on_event=changed), Informer(kube, PODS, on_event=changed)]
        for informer in self._informers:
            informer.start()
        self._syncer = asyncio.create_task(self._sync_loop(), name="service-proxy-sync")
        for informer in self._informers:
            await informer.wait_synced(30)

    async def _sync_loop(self) -> None:
        services, pods = self._informers
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.02)  # coalesce a burst of events into one sync
            self._dirty.clear()
            try:
                await self.sync(services.items(), pods.items())
            except Exception:
                log.exception("service proxy sync failed")

    # ------------------------------------------------------------------ relay
    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: _Port) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            backends = list(port.backends)
            start = port.turn
            port.turn += 1
            for n in range(len(backends)):
                host, number = backends[(start + n) % len(backends)]
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        up_reader, upstream = await asyncio.open_connection(host, number)
                    break
                except (OSError, TimeoutError):
                    continue
            if upstream is None:
                return  # no endpoint: close the client's connection
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        finally:
            self._connections.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (a client's shutdown(SHUT_WR) passes through)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _close_port(port: _Port) -> None:
    if port.server is not None:
        port.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(port.server.wait_closed(), 1.0)
        port.server = None


def _key(svc: Obj) -> Key:
    meta = svc.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")

