"""The one-machine cluster, composed: API server with admission, pod network and DNS, workload
controllers and the pod runner (docs/sandbox.md).

`async with Sandbox(root) as cluster:` gives a cluster whose API answers on `cluster.url` (plain HTTP on
127.0.0.1, for tests and kubectl, through `cluster.kubeconfig`) and, for pods, with TLS on the pod
network's gateway (in-cluster config: `KUBERNETES_SERVICE_HOST`, the service account files). What it
starts it stops, in reverse order, also when starting fails half-way.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import yaml

from eddy.kube import Kube
from sandbox.admission import MutatingWebhooks
from sandbox.apiserver import KubeApiServer
from sandbox.dns import ClusterDns
from sandbox.kubelet.runner import PodRunner
from sandbox.network import PodNetwork
from sandbox.network_cmd import NetworkError
from sandbox.policy import ValidatingPolicies
from sandbox.workloads import WorkloadControllers

log = logging.getLogger("sandbox.cluster")


def short_id() -> str:
    """A suffix that keeps concurrent sandboxes (parallel test runs) apart: bridge, netns, cgroups."""
    return secrets.token_hex(3)


class Sandbox:
    def __init__(self, root: Path, *, git_version: str = "v1.30.0", name: str = "",
                 pod_cidr: str = "", service_cidr: str = "") -> None:
        """`pod_cidr`/`service_cidr` default to Kubernetes' usual 10.244.0.0/16 and 10.96.0.0/16, or the
        next free pair (10.245/10.97, ...) when another sandbox on this machine holds them."""
        self.root = root
        self.name = name or f"eddy{short_id()}"
        self.git_version = git_version
        self.api = KubeApiServer(git_version=git_version)  # replaced in start() once the CIDRs are chosen
        # Pods reach the API server's TLS listener on the gateway, directly (in-cluster config from the
        # environment) or through the `kubernetes` Service's VIP; its port is chosen before either exists.
        self.tls_port = free_port()
        self.cidrs = [(pod_cidr, service_cidr)] if pod_cidr and service_cidr else [
            (f"10.{244 + i}.0.0/16", f"10.{96 + i}.0.0/16") for i in range(8)]
        self.network = self._network(*self.cidrs[0])
        self.kube: Kube | None = None
        self.dns: ClusterDns | None = None
        self.workloads: WorkloadControllers | None = None
        self.runner: PodRunner | None = None
        self.webhooks: MutatingWebhooks | None = None
        self._stops: list[Callable[[], Awaitable[None]]] = []

    def _network(self, pod_cidr: str, service_cidr: str) -> PodNetwork:
        gateway = str(ipaddress.IPv4Network(pod_cidr)[1])
        return PodNetwork(bridge=self.name[:15], pod_cidr=pod_cidr, service_cidr=service_cidr,
                          api_server=(gateway, self.tls_port))

    async def _start_network(self) -> None:
        for pod_cidr, service_cidr in self.cidrs:
            self.network = self._network(pod_cidr, service_cidr)
            try:
                await self.network.start()
                return
            except NetworkError as exc:
                if "overlaps" not in str(exc) or (pod_cidr, service_cidr) == self.cidrs[-1]:
                    raise
                log.info("sandbox: %s and %s are taken, trying the next pair", pod_cidr, service_cidr)

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def gateway(self) -> str:
        """The host's address on the pod network: what pods reach host-side services (S3, links) at."""
        return self.network.gateway

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    async def start(self) -> Sandbox:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await self._start_network()
        self._stops.append(self.network.stop)
        # Strict: namespaces and ServiceAccounts must exist, pods are validated, as in a cluster; the
        # Service CIDR is the network's, so spec.clusterIP, the proxy's VIPs and the hosts files agree.
        self.api = KubeApiServer(git_version=self.git_version, strict=True,
                                 service_cidr=str(self.network.service_net))
        await self.api.start()
        self._stops.append(self.api.stop)
        self.kube = await Kube.connect(url=self.api.url)
        self._stops.append(self.kube.close)
        await self.api.serve_tls(self.network.gateway, self.tls_port)
        await self.network.watch_services(self.kube)
        self._stops.append(self.network.proxy.close)  # before the client closes; idempotent
        self.dns = ClusterDns(self.kube, api_server_ip=self.network.gateway, network=self.network)
        await self.dns.start()
        self._stops.append(self.dns.stop)
        self.webhooks = MutatingWebhooks(self.api, resolve_service=self.dns.resolve_service)
        self.api.admission.extend([self.webhooks, ValidatingPolicies(self.api)])
        self._stops.append(self.webhooks.close)
        # volume_root: a hostPath provisioner, so StatefulSet claims bind (and the runner can mount them).
        self.workloads = WorkloadControllers(self.kube, volume_root=self.root / "volumes")
        await self.workloads.start()
        self._stops.append(self.workloads.stop)
        self.runner = PodRunner(
            self.kube, self.network, self.dns, root=self.root / "kubelet",
            api_server_host=self.network.gateway, api_server_port=self.tls_port,
        )
        await self.runner.start()
        self._stops.append(self.runner.stop)
        self.api.log_source = self.runner.log_file  # kubectl logs
        self.api.exec_handler = self.runner.exec  # kubectl exec (kubectl >= 1.30: WebSocket streams)
        self.write_kubeconfig()
        log.info("sandbox %s up: API %s, pods on %s", self.name, self.api.url, self.network.gateway)

    async def stop(self) -> None:
        """Stop everything started, newest first; every step runs even when an earlier one fails."""
        while self._stops:
            step = self._stops.pop()
            try:
                await step()
            except Exception:
                log.exception("sandbox: stopping %s failed", getattr(step, "__qualname__", step))

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sandbox", "cluster": {"server": self.api.url}}],
            "users": [{"name": "admin", "user": {}}],
            "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "admin",
                                                          "namespace": "default"}}],
            "current-context": "sandbox",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))

    def kubectl_env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubectl_path() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl is not installed (make installs Debian's kubernetes-client)")
    return path
