"""`PodRunner`: the sandbox's kubelet (and its one-node scheduler) as an API client over HTTP.

It lists and watches pods in all namespaces; a pod with no `spec.nodeName` is bound to this node
(`pods/<name>/binding` where the server has it, else a patch of `spec.nodeName`), and every pod bound
here is run by a `PodWorker` (pod.py) that writes its status through the status subresource.
ConfigMaps, Secrets, PersistentVolumeClaims and PersistentVolumes are watched into caches: container
env and volume contents come from them, and a change re-renders the volumes that use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from eddy.kube import (
    CONFIGMAPS,
    NODES,
    PODS,
    PVCS,
    PVS,
    SECRETS,
    SERVICES,
    AlreadyExists,
    Informer,
    Kube,
    KubeError,
    NotFound,
)
from sandbox.kubelet.envs import service_env
from sandbox.kubelet.images import ImageCatalog
from sandbox.kubelet.mounts import unmount_all
from sandbox.kubelet.node import node_object
from sandbox.kubelet.pod import Dns, Network, PodWorker
from sandbox.kubelet.process import ContainerError, ExecResult, make_shared_root, release_shared_root

log = logging.getLogger("sandbox.kubelet")
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
Obj = dict[str, Any]


class PodNotFound(LookupError):
    """No such pod on this node, or no such container in it, or the container is not running."""


class Caches:
    """ConfigMaps, Secrets, PVCs, PVs and Services as last seen (the VolumeLookup of the pods)."""

    def __init__(self, kube: Kube) -> None:
        self.configmaps = Informer(kube, CONFIGMAPS)
        self.secrets = Informer(kube, SECRETS)
        self.pvcs = Informer(kube, PVCS)
        self.pvs = Informer(kube, PVS)
        self.services = Informer(kube, SERVICES)
        self.all = (self.configmaps, self.secrets, self.pvcs, self.pvs, self.services)

    def configmap(self, namespace: str, name: str) -> Obj | None:
        return self.configmaps.get(namespace, name)

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self.secrets.get(namespace, name)

    def pvc(self, namespace: str, name: str) -> Obj | None:
        return self.pvcs.get(namespace, name)

    def pv(self, name: str) -> Obj | None:
        return self.pvs.get(None, name)


class PodRunner:
    def __init__(self, kube: Kube, network: Network, dns: Dns, *, root: Path, node_name: str = "sandbox",
                 images: ImageCatalog | None = None, api_server_host: str = "",
                 api_server_port: int = 0) -> None:
        self.kube = kube
        self.network = network
        self.dns = dns
        self.root = Path(root).absolute()
        self.node_name = node_name
        self.images = images or ImageCatalog()
        self.host_ip = str(getattr(network, "gateway", "") or "127.0.0.1")
        self.service_env = service_env(api_server_host, api_server_port)
        self.caches = Caches(kube)
        self.workers: dict[str, PodWorker] = {}  # pod uid -> worker
        self._pods = Informer(kube, PODS, on_event=self._on_pod)
        self._reapers: set[asyncio.Task[None]] = set()
        self._started = False

    def services(self) -> list[Obj]:
        """The Services as last seen (for the service link variables of new containers)."""
        return self.caches.services.items()

    @property
    def lookup(self) -> Caches:
        return self.caches

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Make the shared root, fill the caches, then take pods."""
        await asyncio.to_thread(make_shared_root, self.root)
        await self._remove_orphans()
        for informer in self.caches.all:
            informer.add_handler(self._on_source)
            informer.start()
        for informer in self.caches.all:
            await informer.wait_synced(30)
        await self._register_node()
        self._pods.start()
        await self._pods.wait_synced(30)
        self._started = True

    async def _remove_orphans(self) -> None:
        """A runner that crashed left pod directories (and perhaps mounts) behind; their processes died
        with it. Nothing runs yet, so every pod directory is an orphan: unmount and remove it."""
        pods = self.root / "pods"
        left = await unmount_all(pods)
        if left:
            raise RuntimeError(f"cannot unmount what a previous runner left: {left}")
        await asyncio.to_thread(shutil.rmtree, pods, True)
        pods.mkdir()

    async def _register_node(self) -> None:
        """Create (or refresh) this node's Node object, Ready."""
        node = node_object(self.node_name, self.host_ip)
        try:
            with contextlib.suppress(AlreadyExists):
                await self.kube.create(NODES, {k: v for k, v in node.items() if k != "status"})
            await self.kube.patch_status(NODES, self.node_name, {"status": node["status"]})
        except KubeError as exc:  # a server without Nodes still runs pods
            log.warning("node %s: not registered: %s", self.node_name, exc)

    async def stop(self) -> None:
        """Stop every pod (preStop, SIGTERM, grace, SIGKILL), unmount everything; pod objects stay."""
        await self._pods.stop()
        workers = list(self.workers.values())
        await asyncio.gather(*(w.delete(remove_object=False) for w in workers), return_exceptions=True)
        for task in list(self._reapers):
            task.cancel()
        for informer in self.caches.all:
            await informer.stop()
        self.workers.clear()
        await asyncio.to_thread(release_shared_root, self.root)
        self._started = False

    async def __aenter__(self) -> PodRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ pods
    async def _on_pod(self, etype: str, pod: Obj) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid = str(meta.get("uid", ""))
        worker = self.workers.get(uid)
        if etype == "DELETED":
            if worker is not None:
                worker.update(pod)
                worker.delete()
            return
        node = spec.get("nodeName") or ""
        if not node:
            if not meta.get("deletionTimestamp"):
                await self._bind(pod)
            return
        if node != self.node_name:
            return
        if worker is not None:
            worker.update(pod)
            return
        if meta.get("deletionTimestamp"):  # bound here, nothing runs: the kubelet lets it go at once
            with contextlib.suppress(NotFound):
                await self.kube.request("DELETE", PODS.path(meta.get("namespace"), meta.get("name")),
                                        body={"kind": "DeleteOptions", "apiVersion": "v1",
                                              "gracePeriodSeconds": 0})
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        worker = PodWorker(self, pod)
        self.workers[uid] = worker
        worker.start()
        reaper = asyncio.create_task(self._reap(worker))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def _reap(self, worker: PodWorker) -> None:
        await worker.removed.wait()
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]

    async def _bind(self, pod: Obj) -> None:
        """The one-node scheduler: bind an unscheduled pod to this node. nodeSelector, affinity and
        tolerations are ignored (docs/sandbox.md): on one node a mismatch says nothing about a cluster."""
        meta = pod["metadata"]
        ns, name = str(meta.get("namespace") or "default"), str(meta["name"])
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": name, "namespace": ns, "uid": meta.get("uid")},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            await self.kube.request("POST", PODS.path(ns, name, "binding"), body=binding)
            return
        except NotFound:
            pass  # no binding subresource on this server (or the pod is gone: the patch says which)
        except KubeError as exc:
            if exc.status != 405:
                log.warning("binding %s/%s failed: %s", ns, name, exc)
                return
        try:
            await self.kube.patch(PODS, name, {"metadata": {"uid": meta.get("uid")},
                                               "spec": {"nodeName": self.node_name}}, ns)
        except KubeError as exc:
            log.warning("binding %s/%s by patch failed: %s", ns, name, exc)

    async def _on_source(self, etype: str, obj: Obj) -> None:
        """A ConfigMap/Secret/PVC/PV changed: pods of its namespace re-sync their volumes now."""
        ns = (obj.get("metadata") or {}).get("namespace")
        for worker in self.workers.values():
            if ns is None or worker.namespace == ns:
                worker.resync()

    # ------------------------------------------------------------------ exec and logs
    def worker(self, namespace: str, pod: str) -> PodWorker:
        found = [w for w in self.workers.values()
                 if w.namespace == namespace and w.name == pod and not w.removed.is_set()]
        if found:  # a pod re-created under the same name may meet its predecessor still going away
            return next((w for w in reversed(found) if not w.deleting), found[-1])
        raise PodNotFound(f'pod "{pod}" not found in namespace "{namespace}" on node {self.node_name}')

    async def exec(self, namespace: str, pod: str, container: str, argv: list[str], *,
                   stdin: bytes | None = None, timeout: float | None = None) -> ExecResult:
        """Run `argv` inside a running container's namespaces, as its user (`kubectl exec`)."""
        worker = self.worker(namespace, pod)
        if not container:  # kubectl's choice: the annotated default container, else the first one
            annotations = worker.pod["metadata"].get("annotations") or {}
            container = annotations.get(DEFAULT_CONTAINER) or (worker.main[0].name if worker.main else "")
        target = worker.container(container)
        if target is None:
            raise PodNotFound(f'container "{container}" not found in pod {namespace}/{pod}')
        proc = target.proc
        if proc is None or proc.returncode is not None:
            raise PodNotFound(f'container "{target.name}" in pod {namespace}/{pod} is not running')
        try:
            return await proc.exec(argv, stdin=stdin, timeout=timeout)
        except ContainerError as exc:
            raise PodNotFound(str(exc)) from exc

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        worker = self.worker(namespace, pod)
        return worker.state_dir / "logs" / f"{container}.log"

    def log_file(self, namespace: str, pod: str, container: str) -> Path | None:
        """The container's log file, None while it has none: `KubeApiServer.log_source` (pods/log)."""
        try:
            path = self.log_path(namespace, pod, container)
        except PodNotFound:
            return None
        return path if path.exists() else None

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """What the container wrote to stdout and stderr (all its runs)."""
        path = self.log_path(namespace, pod, container)
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
