"""The sandbox's pod network (sandbox/network*.py) and cluster DNS (sandbox/dns.py), for real.

Real network namespaces, veths and a bridge (each test run has its own bridge name and its own /24s
inside 10.244.0.0/16 and 10.96.0.0/16); real processes (`nsenter --net`) serve and connect. Traffic
goes only to addresses inside those namespaces: the "unreachable" checks connect to addresses outside
and expect ENETUNREACH, which the kernel returns before sending anything. Needs root and `ip`; fails
(never skips) with what is missing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import pytest_asyncio

from eddy.kube import DEPLOYMENTS, PODS, PVCS, SERVICES, STATEFULSETS, Kube
from sandbox.apiserver import KubeApiServer
from sandbox.dns import ClusterDns, NoEndpoints
from sandbox.network import NetworkError, PodAddress, PodNetwork, run_ip

Obj = dict[str, Any]
NS = "default"
ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
while True:
    c, peer = s.accept()
    data = c.recv(1000)
    c.sendall(b"pong " + data)
    c.close()
"""
CLIENT = """
import errno, json, socket, sys
out = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    try:
        c = socket.create_connection((host, int(port)), timeout=3)
        c.sendall(b"ping")
        c.shutdown(socket.SHUT_WR)
        out[target] = c.recv(1000).decode()
        c.close()
    except OSError as exc:
        out[target] = errno.errorcode.get(exc.errno or 0, str(exc))
print(json.dumps(out))
"""
HTTP_GET = """
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((host, port), timeout=3)
c.sendall(f"GET /version HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n".encode())
data = b""
while chunk := c.recv(65536):
    data += chunk
print(json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])["gitVersion"])
"""


def _require_capabilities() -> None:
    missing = [what for ok, what in [
        (os.geteuid() == 0, "root"),
        (shutil.which("ip") is not None, "iproute2 (`ip`)"),
        (shutil.which("unshare") is not None, "util-linux `unshare`"),
        (os.path.exists("/proc/self/ns/net"), "network namespaces"),
    ] if not ok]
    if missing:
        pytest.fail("the pod network tests need " + ", ".join(missing))


def _netns_names() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


async def _leftovers(bridge: str, uids: list[str], network: PodNetwork) -> list[str]:
    """Every trace of `bridge` and the pods' netns/veths still on the host."""
    found = []
    if (await run_ip("link", "show", bridge, check=False)).strip():
        found.append(f"bridge {bridge}")
    found += [f"netns {n}" for n in _netns_names() if n.startswith(f"{bridge}-")]
    links = {link["ifname"] for link in json.loads(await run_ip("-j", "link", "show") or "[]")}
    found += [f"veth {network.veth_name(u)}" for u in uids if network.veth_name(u) in links]
    return found


async def _new_network(**kwargs: Any) -> PodNetwork:
    """A started PodNetwork on a bridge and /24s of its own (another run may hold the first pick)."""
    _require_capabilities()
    return await PodNetwork.start_in_free_range(bridge=f"etn{secrets.token_hex(4)}", **kwargs)


async def _stop_all(*parts: Any) -> None:
    """`stop()` every part, newest first as given, even when one fails (then raise the first error):
    a failing stop must not leave the next network's bridge behind."""
    errors: list[BaseException] = []
    for part in parts:
        try:
            await part.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest_asyncio.fixture
async def kube(kube_api: KubeApiServer) -> AsyncIterator[Kube]:
    client = await Kube.connect(url=kube_api.url)
    try:
        yield client
    finally:
        await client.close()


async def _spawn(netns: PodAddress, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns.netns}", *argv,  # not `ip netns exec`: it remounts / (fails in a chroot)
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _run_in(pod: PodAddress, *argv: str, hosts: Path | None = None) -> str:
    """Run argv in the pod's netns; with `hosts`, in a container of the sandbox's own runtime (its own
    mount namespace, `hosts` bind-mounted on /etc/hosts, as the kubelet does), which also works where
    `/` is not a mount point (a chroot such as the fresh-Debian check's)."""
    if hosts is None:
        proc = await _spawn(pod, *argv)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, f"{argv}: {err.decode()}"
        return out.decode()
    from sandbox.kubelet.process import ContainerProcess, ProcessSpec

    state = hosts.parent / f"ctr-{hosts.stem}-{time.monotonic_ns()}"
    log = state.with_suffix(".log")
    spec = ProcessSpec(argv=list(argv), env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, log_path=log,
                       netns=pod.netns, hosts_file=hosts)
    container = await ContainerProcess.start(spec, state)
    try:
        code = await asyncio.wait_for(container.wait(), 30)
    finally:
        await container.cleanup()
    text = log.read_text()
    assert code == 0, f"{argv}: {text}"
    return text


def _pod(name: str, ip: str, labels: dict[str, str], **spec: Any) -> Obj:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "ports": [{"name": "http", "containerPort": 8080}]}], **spec},
            "_ip": ip}


async def _create_running(kube: Kube, pod: Obj, ready: bool = True) -> Obj:
    ip = pod.pop("_ip")
    made = await kube.create(PODS, pod, NS)
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return await kube.patch_status(PODS, made["metadata"]["name"], {"status": status}, NS)


async def test_pods_talk_by_ip_name_and_vip_and_reach_nothing_else(kube_api: KubeApiServer, kube: Kube,
                                                                   tmp_path: Path) -> None:
    api = urlparse(kube_api.url)
    assert api.hostname and api.port
    network = await _new_network(api_server=(api.hostname, api.port))
    dns = ClusterDns(kube, api_server_ip=network.kubernetes_ip, network=network)
    server_proc: asyncio.subprocess.Process | None = None
    try:
        server_addr = await network.attach("uid-server")
        client_addr = await network.attach("uid-client")
        assert server_addr.ip == str(network.pod_net[2]) and client_addr.ip == str(network.pod_net[3])
        assert network.gateway == str(network.pod_net[1])
        assert await network.attach("uid-server") == server_addr  # idempotent
        rules = json.loads(await run_ip("-j", "rule", "show"))
        assert {"iif": network.bridge, "table": str(network.rule_table)}.items() <= next(
            r for r in rules if r.get("iif") == network.bridge).items()
        for addr in (server_addr, client_addr):
            routes = await run_ip("-n", Path(addr.netns).name, "route", "show")
            assert "default" not in routes, routes
            assert str(network.service_net) in routes and str(network.pod_net) in routes

        server = await _create_running(kube, _pod("echo-0", server_addr.ip, {"app": "echo"},
                                                  hostname="echo-0", subdomain="echo-hl"))
        client = await _create_running(kube, _pod("client", client_addr.ip, {"app": "client"}))
        await kube.create(SERVICES, {"metadata": {"name": "echo"}, "spec": {
            "selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": "http"}]}}, NS)
        await kube.create(SERVICES, {"metadata": {"name": "echo-hl"}, "spec": {
            "clusterIP": "None", "selector": {"app": "echo"}, "ports": [{"port": 8080}]}}, NS)
        await kube.create(SERVICES, {"metadata": {"name": "idle", "namespace": "other"}, "spec": {
            "selector": {"app": "none"}, "ports": [{"port": 81}]}}, "other")
        await network.watch_services(kube)
        await dns.start()
        hosts = tmp_path / "hosts-client"
        dns.register(client, client_addr.ip, hosts)
        inode = hosts.stat().st_ino

        async def vip_ready() -> str:
            for _ in range(200):
                vip, idle = network.service_ip(NS, "echo"), network.service_ip("other", "idle")
                text = hosts.read_text()
                if vip and idle and f"{vip}\techo.default" in text and f"{idle}\tidle.other" in text:
                    return vip
                await asyncio.sleep(0.05)
            raise AssertionError(f"no VIP / hosts line for echo or idle:\n{hosts.read_text()}")

        vip = await vip_ready()
        assert ipaddress.IPv4Address(vip) in network.service_net
        text = hosts.read_text()
        assert "127.0.0.1\tlocalhost" in text
        assert f"{client_addr.ip}\tclient\n" in text
        assert f"{vip}\techo.default.svc.cluster.local echo.default.svc echo.default echo\n" in text
        assert f"{server_addr.ip}\techo-hl.default.svc.cluster.local echo-hl.default.svc" in text
        stable = "echo-0.echo-hl.default.svc"
        assert f"{server_addr.ip}\t{stable}.cluster.local {stable}\n" in text
        assert (f"{network.kubernetes_ip}\tkubernetes.default.svc.cluster.local kubernetes.default.svc "
                "kubernetes.default kubernetes\n") in text
        idle_vip = network.service_ip("other", "idle")
        # Another namespace's Service: no short form.
        assert f"{idle_vip}\tidle.other.svc.cluster.local idle.other.svc idle.other\n" in text

        server_proc = await _spawn(server_addr, sys.executable, "-c", ECHO_SERVER, "8080")
        assert server_proc.stdout is not None
        assert await asyncio.wait_for(server_proc.stdout.readline(), 10) == b"listening\n"

        targets = [f"{server_addr.ip}:8080", "echo-0.echo-hl.default.svc.cluster.local:8080",
                   "echo-hl:8080", "echo:80", "echo.default.svc:80", f"{vip}:80", "idle.other:81",
                   "192.0.2.1:80", "8.8.8.8:53"]
        result = json.loads(await _run_in(client_addr, sys.executable, "-c", CLIENT, json.dumps(targets),
                                          hosts=hosts))
        for target in targets[:6]:
            assert result[target] == "pong ping", (target, result)
        # A Service without a ready endpoint: the proxy closes the connection at once.
        assert result["idle.other:81"] in ("", "ECONNRESET", "ENOTCONN", "EPIPE"), result
        # Nothing outside the pod network is routable from a pod: no packet ever leaves.
        assert result["192.0.2.1:80"] == result["8.8.8.8:53"] == "ENETUNREACH", result

        # The API server through the `kubernetes` VIP (the userspace proxy relays to 127.0.0.1).
        version = await _run_in(client_addr, sys.executable, "-c", HTTP_GET, "kubernetes.default.svc", "443",
                                hosts=hosts)
        assert version.strip() == kube_api.git_version

        # A change to the Services rewrites the file in place (the bind mount keeps its inode).
        await kube.create(SERVICES, {"metadata": {"name": "late"}, "spec": {
            "selector": {"app": "echo"}, "ports": [{"port": 82, "targetPort": 8080}]}}, NS)
        for _ in range(200):
            if "late.default.svc" in hosts.read_text():
                break
            await asyncio.sleep(0.05)
        assert "late.default.svc" in hosts.read_text() and hosts.stat().st_ino == inode
        late = json.loads(await _run_in(client_addr, sys.executable, "-c", CLIENT, '["late:82"]',
                                        hosts=hosts))
        assert late == {"late:82": "pong ping"}

        # Webhook-style resolution: a ready endpoint's pod IP and target port.
        assert await dns.resolve_service(NS, "echo", 80) == (server_addr.ip, 8080)
        await kube.patch_status(PODS, "echo-0", {"status": {"conditions": [
            {"type": "Ready", "status": "False"}]}}, NS)
        with pytest.raises(NoEndpoints, match="no endpoints available"):
            for _ in range(100):
                await dns.resolve_service(NS, "echo", 80)
                await asyncio.sleep(0.05)
        with pytest.raises(NoEndpoints, match="not found"):
            await dns.resolve_service(NS, "missing", 443)
        assert server["metadata"]["uid"]
    finally:
        if server_proc is not None and server_proc.returncode is None:
            server_proc.kill()
            await server_proc.wait()
        await _stop_all(dns, network)
    left = await _leftovers(network.bridge, ["uid-server", "uid-client"], network)
    assert not left, f"stop() left {left}"
    assert not (await run_ip("-o", "addr", "show", "to", str(network.service_net))).strip()
    assert not [r for r in json.loads(await run_ip("-j", "rule", "show")) if r.get("iif") == network.bridge]
    assert not (await run_ip("route", "show", "table", str(network.rule_table), check=False)).strip()


async def test_detach_frees_and_reuses_addresses() -> None:
    outer = await _new_network()  # a /29 (5 pod addresses) inside a /24 of our own
    network = PodNetwork(bridge=f"etn{secrets.token_hex(4)}", pod_cidr=f"{outer.pod_net[32]}/29",
                         service_cidr=f"{outer.service_net[32]}/29")
    uids = [f"pod-{n}" for n in range(6)]
    try:
        await network.start()
        first = [await network.attach(uid) for uid in uids[:3]]
        assert [a.ip for a in first] == [str(network.pod_net[n]) for n in (2, 3, 4)]
        await network.detach("pod-1")
        assert Path(first[1].netns).name not in _netns_names()
        # Round robin: the next addresses first, the freed one only after the range wrapped.
        later = [await network.attach(uid) for uid in uids[3:]]
        assert [a.ip for a in later] == [str(network.pod_net[n]) for n in (5, 6, 3)]
        with pytest.raises(NetworkError, match="full"):
            await network.attach("pod-9")
        await network.detach("unknown")  # nothing to do
    finally:
        await _stop_all(network, outer)
    assert not await _leftovers(network.bridge, uids, network)


async def test_start_removes_what_a_crashed_run_left() -> None:
    crashed = await _new_network()
    await crashed.attach("pod-a")
    await crashed.attach("pod-b")
    # No stop(): the process "died". A new instance with the same bridge name and CIDRs cleans up.
    network = PodNetwork(bridge=crashed.bridge, pod_cidr=str(crashed.pod_net),
                         service_cidr=str(crashed.service_net))
    try:
        await network.start()
        assert not [n for n in _netns_names() if n.startswith(f"{crashed.bridge}-")]
        address = await network.attach("pod-c")
        assert address.ip == str(network.pod_net[2])
    finally:
        await network.stop()
    assert not await _leftovers(network.bridge, ["pod-a", "pod-b", "pod-c"], network)


async def test_overlapping_cidr_is_refused() -> None:
    first = await _new_network()
    other = PodNetwork(bridge=f"etn{secrets.token_hex(4)}", pod_cidr=str(first.pod_net),
                       service_cidr="10.96.251.0/24")
    try:
        with pytest.raises(NetworkError, match="overlaps"):
            await other.start()
    finally:
        await _stop_all(other, first)
    assert not await _leftovers(other.bridge, [], other)


async def test_hosts_files_follow_services_and_pods(kube: Kube, tmp_path: Path) -> None:
    """ClusterDns alone (no network): which names a pod's hosts file holds, and that it follows changes."""
    dns = ClusterDns(kube, api_server_ip="10.96.0.1", resync=0.2)
    await kube.create(SERVICES, {"metadata": {"name": "api"}, "spec": {
        "clusterIP": "10.96.0.50", "selector": {"app": "api"}, "ports": [{"port": 80}]}}, NS)
    await kube.create(SERVICES, {"metadata": {"name": "workers", "namespace": "data"}, "spec": {
        "clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "worker"},
        "ports": [{"port": 8000}]}}, "data")
    await kube.create(SERVICES, {"metadata": {"name": "outside"}, "spec": {
        "type": "ExternalName", "externalName": "example.org"}}, NS)
    worker = {"metadata": {"name": "w-0", "labels": {"app": "worker"}},
              "spec": {"hostname": "w-0", "subdomain": "workers",
                       "containers": [{"name": "c", "image": "x"}]}}
    made = await kube.create(PODS, worker, "data")
    await kube.patch_status(PODS, "w-0", {"status": {"phase": "Running", "podIP": "10.244.0.20"}}, "data")
    await dns.start()
    try:
        me = await kube.create(PODS, _pod("me", "10.244.0.30", {"app": "me"}, hostname="box",
                                          subdomain="workers"), "data")
        hosts = tmp_path / "hosts"
        hosts.write_text("#" * 10000)  # longer than the content: truncated, not left behind
        inode = hosts.stat().st_ino
        dns.register(me, "10.244.0.30", hosts)
        text = hosts.read_text()
        assert "#" * 100 not in text and hosts.stat().st_ino == inode
        assert "10.244.0.30\tbox.workers.data.svc.cluster.local box\n" in text
        # Another namespace's Service: no short name. Not-ready endpoints are published when asked.
        assert "10.96.0.50\tapi.default.svc.cluster.local api.default.svc api.default\n" in text
        assert "10.244.0.20\tworkers.data.svc.cluster.local workers.data.svc workers.data workers\n" in text
        assert "10.244.0.20\tw-0.workers.data.svc.cluster.local w-0.workers.data.svc\n" in text
        assert "outside" not in text  # a CNAME has no place in a hosts file
        kubernetes = "kubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default"
        assert f"10.96.0.1\t{kubernetes}\n" in text

        # The worker stops: its names go; the Service goes: its names go.
        await kube.patch_status(PODS, "w-0", {"status": {"phase": "Succeeded"}}, "data")
        await kube.delete(SERVICES, "api", NS)
        for _ in range(100):
            text = hosts.read_text()
            if "10.244.0.20" not in text and "api.default" not in text:
                break
            await asyncio.sleep(0.05)
        assert "10.244.0.20" not in text and "api.default" not in text, text
        assert hosts.stat().st_ino == inode
        dns.unregister(me["metadata"]["uid"])
        with pytest.raises(NoEndpoints, match="no endpoints available"):
            await dns.resolve_service("data", "workers", 8000)
        assert made["metadata"]["uid"]
    finally:
        await dns.stop()


async def test_a_smaller_network_nests_inside_a_larger_one() -> None:
    outer = await _new_network()
    pods, services = outer.pod_net, outer.service_net
    inner = PodNetwork(bridge=f"etn{secrets.token_hex(4)}", pod_cidr=f"{pods[16]}/29",
                       service_cidr=f"{services[16]}/29")
    try:
        await inner.start()
        assert (await inner.attach("in-a")).ip == str(pods[18])
        addresses = [await outer.attach(f"out-{n}") for n in range(15)]
        # .2 to .15, then past the inner network's .16/29: the host routes those to the inner bridge.
        assert [a.ip for a in addresses] == [str(pods[n]) for n in [*range(2, 16), 24]]
        with pytest.raises(NetworkError, match="overlaps"):  # the same range twice is refused
            await PodNetwork(bridge=f"etn{secrets.token_hex(4)}", pod_cidr=str(inner.pod_net),
                             service_cidr=f"{services[32]}/29").start()
        # The other order: the larger network starts while the smaller one is there.
        await outer.stop()
        outer = PodNetwork(bridge=outer.bridge, pod_cidr=str(pods), service_cidr=str(services))
        await outer.start()
        assert (await outer.attach("out-0")).ip == str(pods[2])
    finally:
        await _stop_all(inner, outer)
    assert not await _leftovers(inner.bridge, ["in-a"], inner)
    assert not await _leftovers(outer.bridge, [f"out-{n}" for n in range(15)], outer)


WEB = ["python3", "-m", "http.server", "8080"]
FETCH = ("import urllib.request as u\n"
         "for url in ('http://web/', 'http://web.default.svc.cluster.local/'):\n"
         "    assert u.urlopen(url, timeout=5).status == 200, url\n")


async def test_rollouts_with_the_pod_runner_reusing_addresses(kube: Kube, tmp_path: Path) -> None:
    """The whole path with the real pod runner: a Deployment rolled out three times on a pod network of
    five addresses (so addresses are reused and the kubelet's readiness probes must reach the new pod
    behind an old address), a StatefulSet whose claim is provisioned, bound and written to, then a Job
    that fetches through the Service's names."""
    from sandbox.kubelet import PodRunner
    from sandbox.workloads import WorkloadControllers
    from sandbox.workloads_job import JOBS

    outer = await _new_network()  # a /24 of our own; the pods get a /29 inside it
    network = PodNetwork(bridge=f"etn{secrets.token_hex(4)}", pod_cidr=f"{outer.pod_net[64]}/29",
                         service_cidr=f"{outer.service_net[64]}/29")
    dns = ClusterDns(kube, api_server_ip=network.gateway, network=network)
    controllers = WorkloadControllers(kube, job_backoff=0.1, volume_root=tmp_path / "volumes")
    runner = PodRunner(kube, network, dns, root=tmp_path / "kubelet")
    try:
        await network.start()
        await network.watch_services(kube)
        await dns.start()
        await controllers.start()
        await runner.start()
        container = {"name": "web", "image": "python:3.11", "command": WEB,
                     "ports": [{"name": "http", "containerPort": 8080}],
                     "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}}
        await kube.create(DEPLOYMENTS, {"metadata": {"name": "web"}, "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "automountServiceAccountToken": False, "containers": [container]}}}}, NS)
        await kube.create(SERVICES, {"metadata": {"name": "web"}, "spec": {
            "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}, NS)
        seen: set[str] = set()
        for generation in (1, 2, 3):
            if generation > 1:
                await kube.patch(DEPLOYMENTS, "web", {"spec": {"template": {"metadata": {
                    "annotations": {"rollout": str(generation)}}}}}, NS)
            status: Obj = {}
            for _ in range(400):
                status = (await kube.get(DEPLOYMENTS, "web", NS)).get("status") or {}
                pods, _ = await kube.list(PODS, NS, label_selector="app=web")
                seen |= {p["status"]["podIP"] for p in pods if (p.get("status") or {}).get("podIP")}
                if status.get("observedGeneration") == generation and all(
                        status.get(k) == 2 for k in ("replicas", "updatedReplicas", "availableReplicas")):
                    break
                await asyncio.sleep(0.05)
            else:
                pods, _ = await kube.list(PODS, NS, label_selector="app=web")
                raise AssertionError(f"rollout {generation} did not finish: {status}\n"
                                     f"{[(p['metadata']['name'], p.get('status')) for p in pods]}")
        assert len(seen) <= 5 and seen <= {str(ip) for ip in network.pod_net.hosts()}
        # A StatefulSet's claim is provisioned and bound; its pod writes into the volume.
        writer = {"name": "db", "image": "python:3.11",
                  "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                  "command": ["python3", "-c", "open('/data/hello', 'w').write('hi'); import time; "
                              "time.sleep(3600)"],
                  "readinessProbe": {"exec": {"command": ["cat", "/data/hello"]}, "periodSeconds": 1}}
        await kube.create(STATEFULSETS, {"metadata": {"name": "db"}, "spec": {
            "replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {
                "automountServiceAccountToken": False, "containers": [writer]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}, NS)
        sts: Obj = {}
        for _ in range(400):
            sts = (await kube.get(STATEFULSETS, "db", NS)).get("status") or {}
            if sts.get("readyReplicas") == 1:
                break
            await asyncio.sleep(0.05)
        assert sts.get("readyReplicas") == 1, sts
        claim = await kube.get(PVCS, "data-db-0", NS)
        volume = tmp_path / "volumes" / claim["spec"]["volumeName"] / "hello"
        assert claim["status"]["phase"] == "Bound" and await asyncio.to_thread(volume.read_text) == "hi"
        await kube.create(JOBS, {"metadata": {"name": "fetch"}, "spec": {"backoffLimit": 0, "template": {
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [
                {"name": "fetch", "image": "python:3.11", "command": ["python3", "-c", FETCH]}]}}}}, NS)
        conditions: dict[str, str] = {}
        for _ in range(400):
            job = await kube.get(JOBS, "fetch", NS)
            conditions = {c["type"]: c["status"] for c in (job.get("status") or {}).get("conditions") or []}
            if "Complete" in conditions or "Failed" in conditions:
                break
            await asyncio.sleep(0.05)
        assert conditions.get("Complete") == "True", job.get("status")
    finally:
        await _stop_all(runner, controllers, dns, network, outer)
    assert not await _leftovers(network.bridge, [], network)
