"""The few Kubernetes API calls the webhook makes, as raw JSON over kubernetes-asyncio, and an Informer.

A stand-in for `eddy/kube.py` (not in the tree when this part was built): same ideas - Resource
descriptors, get/create/replace/patch/list/watch, an Informer that lists, then watches from the
resourceVersion, re-lists on 410 Gone and backs off on errors - kept small and local to the webhook.
Objects stay plain dicts: no model deserialisation on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

log = logging.getLogger("eddy.webhook.kube")


@dataclass(frozen=True)
class Resource:
    prefix: str  # /api/v1 or /apis/<group>/<version>
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        path = self.prefix
        if self.namespaced and namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{self.plural}"
        return f"{path}/{quote(name, safe='')}" if name else path


PVCS = Resource("/api/v1", "persistentvolumeclaims")
SECRETS = Resource("/api/v1", "secrets")
NODES = Resource("/api/v1", "nodes", namespaced=False)
DATASETS = Resource("/apis/data.fluid.io/v1alpha1", "datasets")
JINDORUNTIMES = Resource("/apis/data.fluid.io/v1alpha1", "jindoruntimes")
MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    "/apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", namespaced=False
)

PATCH_TYPES = {
    "json": "application/json-patch+json",
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Conflict(ApiError):
    """409: already exists, or the resourceVersion moved on."""


class Gone(ApiError):
    """410: the watch's resourceVersion is too old; list again."""


class KubeApi:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client

    @classmethod
    async def connect(cls, url: str | None = None, kubeconfig: str | None = None) -> KubeApi:
        configuration = k8s.Configuration()
        if url:
            configuration.host = url.rstrip("/")
        elif kubeconfig:
            await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(k8s.ApiClient(configuration))

    async def close(self) -> None:
        await self.api_client.close()

    async def _raw(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = 30.0,
    ) -> Any:
        return await self.api_client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )

    async def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        response = await self._raw(method, path, query, body, content_type)
        async with response:
            data = await response.read()
            status = response.status
        doc = json.loads(data) if data else None
        if status >= 400:
            message = (doc or {}).get("message", "") if isinstance(doc, dict) else str(data[:200])
            error = {409: Conflict, 410: Gone}.get(status, ApiError)
            raise error(status, message)
        return doc

    async def version(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request("GET", "/version")
        return doc

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = await self.request("GET", resource.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return doc

    async def create(
        self, resource: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request("POST", resource.path(namespace), body=body)
        return doc

    async def replace(
        self, resource: Resource, name: str, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request("PUT", resource.path(namespace, name), body=body)
        return doc

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        path = resource.path(namespace, name)
        doc: dict[str, Any] = await self.request(
            "PATCH", path, body=patch, content_type=PATCH_TYPES[patch_type]
        )
        return doc

    async def list(self, resource: Resource, label_selector: str = "") -> dict[str, Any]:
        query = [("labelSelector", label_selector)] if label_selector else []
        doc: dict[str, Any] = await self.request("GET", resource.path(), query)
        return doc

    async def watch(
        self, resource: Resource, resource_version: str, label_selector: str = "", timeout_s: int = 300
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (`{"type", "object"}`) from `resource_version` until the server ends the stream."""
        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true")]
        query.append(("timeoutSeconds", str(timeout_s)))
        if label_selector:
            query.append(("labelSelector", label_selector))
        response = await self._raw("GET", resource.path(), query, timeout=None)
        async with response:
            if response.status >= 400:
                data = await response.read()
                raise {410: Gone}.get(response.status, ApiError)(
                    response.status, data[:200].decode(errors="replace")
                )
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


class Informer:
    """List, then watch from the list's resourceVersion; re-list on 410 Gone; back off on errors."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        *,
        label_selector: str = "",
        on_change: Callable[[], None] | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.api = api
        self.resource = resource
        self.label_selector = label_selector
        self.on_change = on_change
        self.max_backoff = max_backoff
        self.store: dict[Key, dict[str, Any]] = {}
        self.synced = False
        self._synced_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _key(obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.get((namespace if self.resource.namespaced else "", name))

    def items(self) -> list[dict[str, Any]]:
        return list(self.store.values())

    async def start(self, wait: float | None = 30.0) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer-{self.resource.plural}")
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced_event.wait(), wait)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _run(self) -> None:
        backoff = 0.2
        version = ""
        while True:
            try:
                if not version:
                    listing = await self.api.list(self.resource, self.label_selector)
                    self.store = {self._key(o): o for o in listing.get("items") or []}
                    version = str((listing.get("metadata") or {}).get("resourceVersion") or "0")
                    self.synced = True
                    self._synced_event.set()
                    self._changed()
                log.debug("watching %s from resourceVersion %s", self.resource.plural, version)
                async for event in self.api.watch(self.resource, version, self.label_selector):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(410, str(obj.get("message", "")))
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "")))
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind in ("ADDED", "MODIFIED"):
                        self.store[self._key(obj)] = obj
                    elif kind == "DELETED":
                        self.store.pop(self._key(obj), None)
                    if kind != "BOOKMARK":
                        self._changed()
                log.info("watch of %s ended; watching again", self.resource.plural)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Gone:
                log.info("watch of %s: version %s is gone; listing again", self.resource.plural, version)
                version = ""  # re-list
            except Exception as exc:
                log.warning("watch of %s failed (%s); retrying in %.1fs", self.resource.plural, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
