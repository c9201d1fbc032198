"""One pod's life on the node, kubelet's pod worker: network, volumes, init containers in order, native
sidecars gated by their startup, main containers, completion, deletion, and the status write-back.

Ordering: each init container runs to completion (restarted unless the pod's restartPolicy is Never);
a native sidecar (init container with `restartPolicy: Always`) starts and the next init container
waits until it has started (its startupProbe succeeded, or it runs without one). Main containers then
start together. A pod whose main containers have all terminated for good completes: its sidecars stop
in reverse order, its phase is Succeeded if every main container exited 0, else Failed; its volumes and
network are released. Deletion: preStop + SIGTERM + grace + SIGKILL, main containers first, then the
sidecars in reverse order, then volumes and network, then the pod object goes (gracePeriodSeconds=0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

from eddy.kube import PODS, Kube, KubeError, NotFound
from sandbox.kubelet.container import Container, now
from sandbox.kubelet.envs import ConfigError, PodFacts, container_env, service_links
from sandbox.kubelet.images import ImageCatalog, ImageError
from sandbox.kubelet.process import ProcessSpec
from sandbox.kubelet.specs import process_spec
from sandbox.kubelet.status import Conditions, pod_status, qos_class
from sandbox.kubelet.volumes import PodVolumes, VolumeError, VolumeLookup

log = logging.getLogger("sandbox.kubelet")
Obj = dict[str, Any]
MIN_GRACE = 2.0  # kubelet's minimumGracePeriodInSeconds
VOLUME_SYNC = 1.0  # kubelet re-syncs volumes every minute; the sandbox does it every second


class Address(Protocol):
    ip: str
    netns: str


class Network(Protocol):
    async def attach(self, pod_uid: str) -> Any: ...

    async def detach(self, pod_uid: str) -> None: ...


class Dns(Protocol):
    def register(self, pod: Obj, ip: str, hosts_path: Path) -> None: ...

    def unregister(self, pod_uid: str) -> None: ...


class Node(Protocol):
    """What a pod worker uses of its runner."""

    kube: Kube
    network: Network
    dns: Dns
    images: ImageCatalog
    root: Path
    node_name: str
    host_ip: str
    service_env: dict[str, str]

    def services(self) -> list[Obj]: ...

    @property
    def lookup(self) -> VolumeLookup: ...


class PodWorker:
    def __init__(self, node: Node, pod: Obj) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid, self.namespace, self.name = str(meta["uid"]), str(meta.get("namespace")), str(meta["name"])
        self.state_dir = node.root / "pods" / self.uid
        self.hosts_path = self.state_dir / "etc-hosts"
        self.volumes = PodVolumes(self.state_dir, node.lookup)
        self.pod_ip = ""
        self.netns: str | None = None
        self.phase = "Pending"
        self.initialized = False
        self.network_ready = False
        self.attached = False
        self.schedule_error = ""
        self.start_time = now()
        self.conditions = Conditions()
        spec = pod.get("spec") or {}
        policy = str(spec.get("restartPolicy") or "Always")
        has_init = bool(spec.get("initContainers"))
        self.init: list[Container] = []
        for c in spec.get("initContainers") or []:
            if c.get("restartPolicy") == "Always":
                self.init.append(Container(self, c, "sidecar", lambda code: True))
            else:
                self.init.append(Container(self, c, "init", lambda code: code != 0 and policy != "Never"))
        rule = {"Always": lambda code: True, "OnFailure": lambda code: code != 0}.get(policy,
                                                                                     lambda code: False)
        self.main = [Container(self, c, "main", rule) for c in spec.get("containers") or []]
        for c in self.main:
            c.waiting = ("PodInitializing", "") if has_init else ("ContainerCreating", "")
        for c in self.init:
            c.waiting = ("PodInitializing", "")
        self.finished = asyncio.Event()  # terminal phase reached and resources released
        self.removed = asyncio.Event()  # torn down after deletion (or runner stop)
        self._dirty = asyncio.Event()
        self._resync = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._life: asyncio.Task[None] | None = None
        self._teardown: asyncio.Task[None] | None = None
        self._events: set[asyncio.Task[Any]] = set()
        self._release_task: asyncio.Task[None] | None = None
        self._last_status: Obj | None = None

    # ------------------------------------------------------------------ PodContext (for containers)
    def facts(self) -> PodFacts:
        return PodFacts(self.node.node_name, self.pod_ip, self.node.host_ip)

    def build_spec(self, container: Obj) -> ProcessSpec:
        try:
            image = self.node.images.resolve(str(container.get("image", "")))
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
        links: dict[str, str] = {}
        if (self.pod.get("spec") or {}).get("enableServiceLinks", True):
            links = service_links(self.node.services(), self.namespace)
        env = container_env(self.pod, container, image_env=image.env,
                            service_env={**links, **self.node.service_env},
                            lookup=self.node.lookup, facts=self.facts())
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return process_spec(self.pod, container, image=image, env=env, volumes=self.volumes.volumes,
                            log_path=logs / f"{container.get('name')}.log", netns=self.netns,
                            hosts_file=self.hosts_path if self.hosts_path.exists() else None)

    def changed(self) -> None:
        self._dirty.set()

    async def event(self, reason: str, message: str, type: str = "Normal") -> None:
        """Record an Event in the background (a failed Event never holds a pod up)."""
        async def send() -> None:
            with contextlib.suppress(Exception):  # best effort, also while the client closes
                await self.node.kube.create_event(self.pod, reason, message, type, component="kubelet",
                                                  instance=self.node.node_name)
        task = asyncio.get_running_loop().create_task(send())
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    # ------------------------------------------------------------------ driving
    def start(self) -> None:
        self._life = asyncio.create_task(self._live(), name=f"pod-{self.namespace}/{self.name}")
        self._life.add_done_callback(self._crashed)
        self._tasks = [asyncio.create_task(self._write_status()), asyncio.create_task(self._sync_volumes())]
        self.changed()

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("pod %s/%s: the pod worker failed", self.namespace, self.name,
                      exc_info=task.exception())

    def update(self, pod: Obj) -> None:
        """A newer copy of the pod from the watch (labels/annotations feed downwardAPI volumes)."""
        before, self.pod = self.pod["metadata"], pod
        meta = pod["metadata"]
        if before.get("labels") != meta.get("labels") or before.get("annotations") != meta.get("annotations"):
            self._resync.set()
        if meta.get("deletionTimestamp"):
            self.delete()

    @property
    def deleting(self) -> bool:
        return self._teardown is not None

    def resync(self) -> None:
        self._resync.set()

    def container(self, name: str) -> Container | None:
        return next((c for c in [*self.main, *self.init] if c.name == name), None)

    def grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod.get("spec") or {}
        value = meta.get("deletionGracePeriodSeconds")
        if value is None:
            value = spec.get("terminationGracePeriodSeconds", 30)
        return max(MIN_GRACE, float(value))

    def delete(self, *, remove_object: bool = True) -> asyncio.Task[None]:
        """Start (once) the teardown of a deleted pod; `remove_object=False` on runner stop."""
        if self._teardown is None:
            self._teardown = asyncio.create_task(self._terminate(remove_object))
        return self._teardown

    # ------------------------------------------------------------------ the pod's life
    async def _attach(self) -> None:
        """The pod's sandbox: its network namespace and address (the host's with hostNetwork),
        retried as kubelet retries a failed sandbox."""
        if (self.pod.get("spec") or {}).get("hostNetwork"):
            self.pod_ip, self.netns = self.node.host_ip, None
            return
        reported = ""
        while True:
            try:
                address = await self.node.network.attach(self.uid)
                self.pod_ip, self.netns = address.ip, address.netns or None
                self.attached = True
                return
            except Exception as exc:
                message = f"Failed to create pod sandbox: {exc}"
                if message != reported:
                    reported = message
                    log.warning("pod %s/%s: %s", self.namespace, self.name, message)
                    await self.event("FailedCreatePodSandBox", message, "Warning")
                await asyncio.sleep(2)

    async def _live(self) -> None:
        await self._attach()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.node.dns.register(self.pod, self.pod_ip, self.hosts_path)
        self.network_ready = True
        self.changed()
        reported = ""
        while True:
            try:
                await self.volumes.setup(self.pod, self.facts())
                break
            except (VolumeError, OSError, ValueError) as exc:
                message = str(exc)
                reason = exc.reason if isinstance(exc, VolumeError) else "FailedMount"
                self.schedule_error = message if reason == "FailedScheduling" else ""
                for c in [*self.init, *self.main]:
                    c.waiting = ("PodInitializing" if c.role == "main" and self.init else "ContainerCreating",
                                 "" if reason == "FailedScheduling" else message)
                self.changed()
                if message != reported:
                    reported = message
                    await self.event(reason, message, "Warning")
                await asyncio.sleep(VOLUME_SYNC)
        if reported:
            self.schedule_error = ""
            for c in [*self.init, *self.main]:
                if c.waiting is not None:
                    c.waiting = (c.waiting[0], "")
        for c in self.init:
            c.start()
            if c.role == "sidecar":
                await c.started_event.wait()
                continue
            await c.done.wait()
            if c.terminated is None or c.terminated.exit_code != 0:
                await self._complete(failed=True)
                return
        self.initialized = True
        self.changed()
        for c in self.main:  # in order, each after the previous one's postStart hook (as kubelet)
            c.start()
            await c.launched.wait()
        for c in self.main:
            await c.done.wait()
        await self._complete(failed=False)

    async def _complete(self, *, failed: bool) -> None:
        """All main containers are done for good (or an init container failed): stop the sidecars in
        reverse order and settle the phase."""
        for c in reversed(self.init):
            await c.stop(self.grace())
        ok = not failed and all(c.terminated is not None and c.terminated.exit_code == 0 for c in self.main)
        self.phase = "Succeeded" if ok else "Failed"
        self.changed()
        await self._release()
        self.finished.set()

    @property
    def _released(self) -> bool:
        return self._release_task is not None

    async def _release(self) -> None:
        """Give back (once, even if the caller is cancelled) what a pod that runs no more holds."""
        if self._release_task is None:
            self._release_task = asyncio.create_task(self._do_release())
        await asyncio.shield(self._release_task)

    async def _do_release(self) -> None:
        left = await self.volumes.teardown()
        if left:
            log.error("pod %s/%s: mounts left after teardown: %s", self.namespace, self.name, left)
        self.node.dns.unregister(self.uid)
        if self.attached:
            await self.node.network.detach(self.uid)
            self.attached = False
        self.network_ready = False

    async def _terminate(self, remove_object: bool) -> None:
        grace = self.grace()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._life is not None and not self._life.done():
            self._life.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._life
        await asyncio.gather(*(c.stop(max(0.0, deadline - loop.time())) for c in self.main),
                             return_exceptions=True)
        for c in reversed(self.init):
            await c.stop(max(0.0, deadline - loop.time()))
        for c in [*self.main, *self.init]:
            c.kill()
        if remove_object and self.phase not in ("Succeeded", "Failed"):
            ran = [c for c in self.main if c.terminated is not None]
            ok = ran and len(ran) == len(self.main) and all(
                c.terminated is not None and c.terminated.exit_code == 0 for c in ran)
            self.phase = "Succeeded" if ok else "Failed"
        self.changed()
        await self._release()
        if remove_object:  # a stopping runner leaves the pods as they were (a node going down)
            with contextlib.suppress(KubeError):
                await self._flush_status()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if remove_object:
            await self._remove_object()
            await asyncio.to_thread(shutil.rmtree, self.state_dir, True)
        if self._events:
            await asyncio.wait(list(self._events), timeout=2)
        self.finished.set()
        self.removed.set()

    async def _remove_object(self) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}}
        with contextlib.suppress(NotFound):
            await self.node.kube.request("DELETE", PODS.path(self.namespace, self.name), body=body)

    # ------------------------------------------------------------------ background loops
    async def _sync_volumes(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), VOLUME_SYNC)
            self._resync.clear()
            if self._released or not self.volumes.volumes:
                continue
            try:
                await self.volumes.refresh(self.pod, self.facts())
            except OSError as exc:
                log.warning("pod %s/%s: volume refresh failed: %s", self.namespace, self.name, exc)

    def status(self) -> Obj:
        if self.phase == "Pending" and self.initialized and all(
                c.proc is not None or c.terminated is not None for c in self.main):
            self.phase = "Running"
        return pod_status(phase=self.phase, conditions=self.conditions, init=self.init, main=self.main,
                          initialized=self.initialized, network_ready=self.network_ready,
                          schedule_error=self.schedule_error, host_ip=self.node.host_ip,
                          pod_ip=self.pod_ip, start_time=self.start_time, qos=qos_class(self.pod))

    async def _write_status(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.05)  # coalesce a burst of changes into one write
            self._dirty.clear()
            try:
                await self._flush_status()
            except NotFound:
                return
            except KubeError as exc:
                log.warning("pod %s/%s: status write failed: %s", self.namespace, self.name, exc)
                await asyncio.sleep(0.5)
                self._dirty.set()

    async def _flush_status(self) -> None:
        status = self.status()
        if status == self._last_status:
            return
        patch = [{"op": "add", "path": "/status", "value": status}]
        with contextlib.suppress(NotFound):
            await self.node.kube.patch_status(PODS, self.name, patch, self.namespace, "json")
        self._last_status = status
