"""The pod network: a Linux bridge on the host, one network namespace per pod, Service VIPs.

Layout (all made with iproute2 through asyncio subprocesses):

- a bridge (`bridge`, unique per instance) holding the gateway, the first address of `pod_cidr`, and
  a link route for `service_cidr` (so the host never sends a VIP address out of its default route);
- per pod a named netns `<bridge>-<12 hex of the pod uid>` with `lo` up and `eth0`, one end of a veth
  pair whose host end sits on the bridge; the pod's IP on `eth0` (the next free address, round robin,
  so a freed one is reused last, and the host's neighbour entry for it flushed), the pod CIDR on-link
  and the service CIDR via the gateway, and NO default route: a pod reaches other pods and the host's
  bridge address, nothing else (`connect()` elsewhere fails with ENETUNREACH before a packet is
  sent). Pod to pod goes through the bridge, which needs no IP forwarding; forwarding stays off on the
  bridge (and `ip_forward` is never touched), and a policy rule sends whatever arrives from the bridge
  and is not for the host to an `unreachable` route, so the host does not route pod traffic anywhere;
- Services: a userspace proxy (kube-proxy's old userspace mode, `network_proxy.py`) listening on each
  VIP (a /32 on the bridge) and relaying every TCP connection to a ready endpoint.

Networks running side by side (tests, demos) need their own bridge names and their own pod and
service CIDRs: `start()` refuses CIDRs that clash with another interface's routes or addresses. One
pod network may nest inside a larger one (a test's /24 inside a demo's /16): the host routes by the
longest prefix, and the larger network's pods skip the smaller one's addresses.
`PodNetwork.start_in_free_range()` picks a free /24 pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eddy.kube.client import Kube
from sandbox.network_cmd import NetworkError, run_ip
from sandbox.network_proxy import ServiceProxy

Obj = dict[str, Any]
NETNS_DIR = Path("/run/netns")
__all__ = ["NetworkError", "PodAddress", "PodNetwork", "run_ip"]


@dataclass(frozen=True)
class PodAddress:
    ip: str  # e.g. "10.244.0.7"
    netns: str  # a path setns() accepts, e.g. "/run/netns/eddy0-0123456789ab"


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


class PodNetwork:
    """One bridge and its pods. `attach`/`detach` per pod; `sync_services` (or `watch_services`) keeps
    the Service VIPs and their proxies current; `stop` removes all of it."""

    def __init__(self, *, bridge: str = "eddy0", pod_cidr: str = "10.244.0.0/16",
                 service_cidr: str = "10.96.0.0/16", api_server: tuple[str, int] | None = None,
                 kubernetes_port: int = 443) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge):
            raise ValueError(f"bridge name {bridge!r}: 1-15 letters, digits, '_', '.', '-'")
        self.bridge = bridge
        self.pod_net = ipaddress.IPv4Network(pod_cidr)
        self.service_net = ipaddress.IPv4Network(service_cidr)
        if self.pod_net.overlaps(self.service_net):
            raise ValueError(f"pod CIDR {pod_cidr} overlaps service CIDR {service_cidr}")
        if self.pod_net.num_addresses < 8 or self.service_net.num_addresses < 8:
            raise ValueError("pod and service CIDRs need at least 8 addresses (/29)")
        self.gateway = str(self.pod_net[1])
        # A routing table and rule priority of this bridge's own (see start()).
        self.rule_table = 10000 + int(_digest(bridge, 8), 16) % 50000
        self.rule_priority = 1000 + int(_digest(bridge, 8), 16) % 30000
        self.proxy = ServiceProxy(bridge, self.service_net, api_server=api_server,
                                  kubernetes_port=kubernetes_port)
        self._pods: dict[str, tuple[PodAddress, str]] = {}  # pod uid -> (address, host veth)
        self._used: set[ipaddress.IPv4Address] = set()
        self._cursor = int(self.pod_net.network_address) + 2
        self._pending: dict[str, asyncio.Future[PodAddress]] = {}
        self._started = False

    @classmethod
    async def start_in_free_range(cls, *, bridge: str, pod_base: str = "10.244.0.0/16",
                                  service_base: str = "10.96.0.0/16", prefix: int = 24, attempts: int = 8,
                                  **kwargs: Any) -> PodNetwork:
        """A started PodNetwork on a random /`prefix` of each base that no other network uses, so runs
        side by side (tests, a demo) do not collide; another pick when `start()` finds an overlap."""
        pods = list(ipaddress.IPv4Network(pod_base).subnets(new_prefix=prefix))
        services = list(ipaddress.IPv4Network(service_base).subnets(new_prefix=prefix))
        last: NetworkError | None = None
        for _ in range(attempts):
            index = random.randrange(1, min(len(pods), len(services)))  # 0 stays for the defaults' gateway
            network = cls(bridge=bridge, pod_cidr=str(pods[index]), service_cidr=str(services[index]),
                          **kwargs)
            try:
                await network.start()
                return network
            except NetworkError as exc:
                if "overlaps" not in str(exc):
                    raise
                last = exc
        raise NetworkError(f"no free /{prefix} in {pod_base} and {service_base} after {attempts} tries: "
                           f"{last}")

    # ------------------------------------------------------------------ names
    def netns_name(self, pod_uid: str) -> str:
        return f"{self.bridge}-{_digest(pod_uid, 12)}"

    def veth_name(self, pod_uid: str) -> str:
        return "ve" + _digest(f"{self.bridge}/{pod_uid}", 13)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Make the bridge (after removing what a crashed run with this bridge name left behind)."""
        if self._started:
            return
        _check_capabilities()
        await self._remove_leftovers()
        await self._check_free()
        prefix = self.pod_net.prefixlen
        try:
            await run_ip("link", "add", self.bridge, "type", "bridge")
            # No IPv6 on the bridge (no link-local chatter) and no IPv4 forwarding from it.
            await asyncio.to_thread(_write_sysctl, f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6", "1")
            await asyncio.to_thread(_write_sysctl, f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding", "0")
            await run_ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
            await run_ip("link", "set", self.bridge, "up")
            await run_ip("route", "add", str(self.service_net), "dev", self.bridge, "src", self.gateway)
            # Belt and braces: should forwarding ever be switched on, whatever arrives from the pods and
            # is not for the host itself finds only an unreachable route (local addresses are looked up
            # first, in the `local` table, so the gateway and the VIPs still work).
            await run_ip("route", "add", "unreachable", "default", "table", str(self.rule_table))
            await run_ip("rule", "add", "iif", self.bridge, "priority", str(self.rule_priority),
                         "table", str(self.rule_table))
        except BaseException:
            await self._remove_leftovers()
            raise
        self._started = True
        await self.proxy.start()

    async def stop(self) -> None:
        """Close the proxies, remove every pod's netns and veth, the VIPs and the bridge."""
        await self.proxy.close()
        for uid in list(self._pods):
            await self.detach(uid)
        await self._remove_leftovers()
        self._started = False

    async def __aenter__(self) -> PodNetwork:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _remove_leftovers(self) -> None:
        """Delete this bridge's veths, its pods' namespaces (by name pattern) and the bridge itself."""
        links = json.loads(await run_ip("-j", "link", "show", "master", self.bridge, check=False) or "[]")
        for link in links:
            await run_ip("link", "del", str(link.get("ifname")), check=False)
        pattern = re.compile(rf"{re.escape(self.bridge)}-[0-9a-f]{{12}}")
        for name in await asyncio.to_thread(_netns_names):
            if pattern.fullmatch(name):
                await run_ip("netns", "delete", name, check=False)
        await run_ip("link", "del", self.bridge, check=False)
        for _ in range(16):  # rules do not go with the device (one, unless a run was interrupted)
            if not await self._has_rule():
                break
            await run_ip("rule", "del", "iif", self.bridge, "priority", str(self.rule_priority),
                         "table", str(self.rule_table), check=False)
        await run_ip("route", "flush", "table", str(self.rule_table), check=False)

    async def _has_rule(self) -> bool:
        rules = json.loads(await run_ip("-j", "rule", "show", check=False) or "[]")
        return any(r.get("iif") == self.bridge and r.get("priority") == self.rule_priority for r in rules)

    async def _check_free(self) -> None:
        """Fail when our CIDRs clash with another interface's routes or addresses. Another pod network
        (a bridge) may hold a larger range around ours or a smaller one inside it (longest prefix wins
        on the host; see `_foreign_subnets`), as long as no address of it falls into our range."""
        routes = json.loads(await run_ip("-j", "route", "show", "table", "all") or "[]")
        bridges = {link.get("ifname") for link in json.loads(
            await run_ip("-j", "link", "show", "type", "bridge") or "[]")}
        parsed = []
        for route in routes:
            dst, dev = route.get("dst", ""), route.get("dev")
            if not dst or dst == "default" or ":" in dst or dev == self.bridge:
                continue
            if route.get("type") == "broadcast":
                continue
            local = route.get("type") == "local"
            with contextlib.suppress(ValueError):
                parsed.append((ipaddress.IPv4Network(dst, strict=False), str(dev), local))
        # Smaller pod networks inside ours (their routes, and their own addresses within them) are fine.
        inside = [(net, dev) for net, dev, local in parsed for mine in (self.pod_net, self.service_net)
                  if not local and dev in bridges and net != mine and net.subnet_of(mine)
                  and mine[1] not in net]
        for net, dev, local in parsed:
            for mine in (self.pod_net, self.service_net):
                if not net.overlaps(mine) or any(net.subnet_of(n) and dev == d for n, d in inside):
                    continue
                nested = dev in bridges and not local and net != mine
                if nested and net.supernet_of(mine) and not await self._neighbours_in(str(dev), mine):
                    continue  # we sit inside a larger pod network that has no pod in our range
                raise NetworkError(
                    f"{mine} overlaps the route {net} on {dev or '?'}: another pod network (or a host "
                    "interface) uses it; give this PodNetwork other pod/service CIDRs")

    async def _neighbours_in(self, dev: str, net: ipaddress.IPv4Network) -> bool:
        entries = json.loads(await run_ip("-j", "neigh", "show", "dev", dev, check=False) or "[]")
        found = False
        for entry in entries:
            with contextlib.suppress(ValueError):
                found = found or ipaddress.IPv4Address(str(entry.get("dst"))) in net
        return found

    async def _foreign_subnets(self) -> list[ipaddress.IPv4Network]:
        """Smaller ranges inside our pod CIDR routed to another interface (another, nested pod network):
        the host would send their addresses there, so our pods must not get them."""
        found = []
        for route in json.loads(await run_ip("-j", "route", "show") or "[]"):
            dst, dev = route.get("dst", ""), route.get("dev")
            if not dst or dst == "default" or dev == self.bridge:
                continue
            with contextlib.suppress(ValueError):
                net = ipaddress.IPv4Network(dst, strict=False)
                if net.prefixlen > self.pod_net.prefixlen and net.subnet_of(self.pod_net):
                    found.append(net)
        return found

    # ------------------------------------------------------------------ pods
    async def attach(self, pod_uid: str) -> PodAddress:
        """The pod's netns (lo up), veth on the bridge, IP and routes; the same address when called
        again for an attached pod."""
        if not self._started:
            raise NetworkError("PodNetwork.attach before start()")
        if pod_uid in self._pods:
            return self._pods[pod_uid][0]
        if pod_uid in self._pending:
            return await asyncio.shield(self._pending[pod_uid])
        future: asyncio.Future[PodAddress] = asyncio.get_running_loop().create_future()
        self._pending[pod_uid] = future
        try:
            address = await self._attach(pod_uid)
            future.set_result(address)
            return address
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else NetworkError("attach cancelled"))
            future.exception()  # mark it retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[pod_uid]

    async def _attach(self, pod_uid: str) -> PodAddress:
        ip = self._allocate(await self._foreign_subnets())
        ns, veth = self.netns_name(pod_uid), self.veth_name(pod_uid)
        address = PodAddress(str(ip), str(NETNS_DIR / ns))
        try:
            await run_ip("netns", "delete", ns, check=False)  # a leftover of the same pod
            await run_ip("netns", "add", ns)
            await run_ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            await run_ip("link", "set", veth, "master", self.bridge, "up")
            await run_ip("-n", ns, "link", "set", "lo", "up")
            await run_ip("-n", ns, "link", "set", "eth0", "addrgenmode", "none")  # no IPv6 link-local
            await run_ip("-n", ns, "addr", "add", f"{ip}/{self.pod_net.prefixlen}", "dev", "eth0")
            await run_ip("-n", ns, "link", "set", "eth0", "up")
            await run_ip("-n", ns, "route", "add", str(self.service_net), "via", self.gateway, "dev", "eth0")
            await run_ip("neigh", "flush", "to", str(ip), "dev", self.bridge, check=False)  # an old pod's MAC
        except BaseException:
            await run_ip("link", "del", veth, check=False)
            await run_ip("netns", "delete", ns, check=False)
            self._used.discard(ip)
            raise
        self._pods[pod_uid] = (address, veth)
        return address

    def _allocate(self, foreign: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Address:
        """The next free address after the last one given, wrapping around (as the host-local IPAM
        plugin does): a freed address is reused only after the others, when no neighbour cache (of
        the host or another pod) still maps it to the old pod's MAC."""
        first = int(self.pod_net.network_address) + 2  # .0 is the network, .1 the gateway
        size = int(self.pod_net.broadcast_address) - first
        for step in range(size):
            ip = ipaddress.IPv4Address(first + (self._cursor - first + step) % size)
            if ip not in self._used and not any(ip in net for net in foreign):
                self._used.add(ip)
                self._cursor = int(ip) + 1
                return ip
        raise NetworkError(f"pod CIDR {self.pod_net} is full ({len(self._used)} pods)")

    async def detach(self, pod_uid: str) -> None:
        """Remove the pod's veth and netns and free its IP (nothing to do for an unknown pod)."""
        entry = self._pods.pop(pod_uid, None)
        if entry is None:
            return
        address, veth = entry
        await run_ip("link", "del", veth, check=False)
        await run_ip("netns", "delete", Path(address.netns).name, check=False)
        self._used.discard(ipaddress.IPv4Address(address.ip))

    def address(self, pod_uid: str) -> PodAddress | None:
        entry = self._pods.get(pod_uid)
        return entry[0] if entry else None

    # ------------------------------------------------------------------ services
    async def sync_services(self, services: list[Obj], pods: list[Obj]) -> None:
        """Make the VIPs and proxies match `services` (all namespaces) with endpoints from `pods`."""
        if not self._started:
            raise NetworkError("PodNetwork.sync_services before start()")
        await self.proxy.sync(services, pods)

    async def watch_services(self, kube: Kube) -> None:
        """Keep the Services current from the API (Services and Pods informers) until `stop()`."""
        if not self._started:
            raise NetworkError("PodNetwork.watch_services before start()")
        await self.proxy.watch(kube)

    def service_ip(self, namespace: str, name: str) -> str | None:
        """The VIP of a ClusterIP Service (None: headless, unknown, or not synced yet)."""
        return self.proxy.service_ip(namespace, name)

    async def set_api_server(self, host: str, port: int) -> None:
        """Where the `default/kubernetes` VIP relays to (e.g. once the API server has its port)."""
        self.proxy.set_api_server(host, port)
        if self._started:
            await self.proxy.resync()

    def add_service_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` runs after every sync that added, moved or removed a VIP (ClusterDns uses it)."""
        self.proxy.listeners.append(listener)

    @property
    def kubernetes_ip(self) -> str:
        """The VIP of `default/kubernetes`: the service CIDR's first address, as in a cluster."""
        return self.proxy.kubernetes_ip


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _check_capabilities() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, veth and bridges need CAP_NET_ADMIN/CAP_SYS_ADMIN)")
    if shutil.which("ip") is None:
        missing.append("the `ip` command (iproute2)")
    if not os.path.exists("/proc/self/ns/net"):
        missing.append("network namespaces (/proc/self/ns/net)")
    if missing:
        raise NetworkError("the pod network needs " + "; ".join(missing))
