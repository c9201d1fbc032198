"""`Kube`: generic get/list/create/replace/patch/delete/watch over a kubernetes-asyncio ApiClient.

Objects stay plain dicts, exactly the JSON the API returns: no model classes on the hot path, and the
same code serves core kinds and the Fluid custom kinds. Requests go through `ApiClient.call_api` (so
authentication, TLS and token refresh are kubernetes-asyncio's) with `_preload_content=False`; this
module reads the body, and turns error statuses into the `errors` hierarchy. Every request, once it
ends, goes to the request hooks (`add_request_hook`: verb, path, status, duration; eddy/kube/hooks.py),
which is how the parts count and time their API traffic.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from eddy.kube.errors import KubeError, NotFound, Unavailable, error_for, error_from_status
from eddy.kube.events import build_event
from eddy.kube.hooks import ApiRequest, RequestHook, api_verb
from eddy.kube.resources import EVENTS, Resource

log = logging.getLogger("eddy.kube")

Obj = dict[str, Any]
PatchType = Literal["merge", "json", "strategic"]
Query = list[tuple[str, str]]
PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
_IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


async def make_api_client(
    url: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> k8s.ApiClient:
    """An ApiClient for `url` (plain, no auth: tests and `kubectl proxy`), else the in-cluster service
    account, else `kubeconfig` (or `$KUBECONFIG` / `~/.kube/config`) at `context` (default: its
    current-context). Naming a kubeconfig or a context skips the in-cluster account. The caller closes it."""
    configuration = k8s.Configuration()
    if url:
        configuration.host = url.rstrip("/")
    elif kubeconfig is None and context is None and _in_cluster():
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        _check_kubeconfig(kubeconfig)
        await k8s_config.load_kube_config(config_file=kubeconfig, context=context,
                                          client_configuration=configuration)
    return k8s.ApiClient(configuration)


def _check_kubeconfig(kubeconfig: str | None) -> None:
    """A clear error for a missing kubeconfig (the client library's is about a missing YAML key)."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not os.path.exists(path.split(os.pathsep)[0]):
        raise FileNotFoundError(f"no kubeconfig at {path} and not running in a pod (give --kubeconfig, "
                                "set KUBECONFIG, or run in-cluster)")


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(_IN_CLUSTER_TOKEN)


def _decode(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


class Kube:
    """The API calls Eddy makes. Every method raises `KubeError` subclasses, never ApiException."""

    def __init__(
        self, api: k8s.ApiClient, *, request_timeout: float = 30.0, request_hooks: Iterable[RequestHook] = ()
    ) -> None:
        self.api = api
        self.request_timeout = request_timeout
        self.request_hooks: list[RequestHook] = list(request_hooks)

    @classmethod
    async def connect(
        cls, url: str | None = None, kubeconfig: str | None = None, context: str | None = None
    ) -> Kube:
        return cls(await make_api_client(url, kubeconfig, context))

    def add_request_hook(self, hook: RequestHook) -> None:
        """Call `hook(ApiRequest)` after every request ends (answered or not). A hook runs on the event
        loop once per request, so it must be cheap; one that raises is logged and the request's outcome
        stands."""
        self.request_hooks.append(hook)

    def _report(self, method: str, path: str, status: int, started: float, watch: bool = False) -> None:
        if not self.request_hooks:
            return
        record = ApiRequest(api_verb(method, path, watch), method, path, status, time.monotonic() - started)
        for hook in self.request_hooks:
            try:
                hook(record)
            except Exception:
                log.exception("request hook %r failed on %s %s", hook, method, path)

    async def close(self) -> None:
        await self.api.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ transport
    async def _send(self, method: str, path: str, query: Query, body: Any, content_type: str,
                    timeout: Any) -> Any:
        """Start a request and return the (unread) aiohttp response; connection errors -> Unavailable."""
        try:
            return await self.api.call_api(
                path,
                method,
                query_params=query,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(0, type(exc).__name__, str(exc)) from exc
        except KubeError:
            raise
        except Exception as exc:  # ApiException from kubernetes-asyncio's own checks
            status = int(getattr(exc, "status", 0) or 0)
            raise error_for(status, type(exc).__name__, str(getattr(exc, "reason", exc))) from exc

    async def request(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; returns the decoded JSON body, raises KubeError on a status >= 400."""
        started, status = time.monotonic(), 0
        try:
            response = await self._send(method, path, query or [], body, content_type, self.request_timeout)
            try:
                data = await response.read()
                status = int(response.status)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise Unavailable(0, type(exc).__name__, str(exc)) from exc
            finally:
                response.release()
        except KubeError as exc:
            status = exc.status
            raise
        finally:
            self._report(method, path, status, started)
        doc = _decode(data)
        if status >= 400:
            raise error_from_status(doc, status)
        return doc

    async def _object(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      query: Query | None = None) -> Obj:
        doc = await self.request(method, path, query, body, content_type)
        if not isinstance(doc, dict):
            raise KubeError(500, "BadResponse", f"expected a JSON object from {method} {path}")
        return doc

    # ------------------------------------------------------------------ verbs
    async def version(self) -> Obj:
        """`/version` (`gitVersion`, `major`, `minor`, ...)."""
        return await self._object("GET", "/version")

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj:
        return await self._object("GET", resource.path(namespace, name))

    async def get_or_none(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self.get(resource, name, namespace)
        except NotFound:
            return None

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        """All objects (of one namespace, or all) and the List's resourceVersion to watch from."""
        query = _selectors(label_selector, field_selector)
        doc = await self._object("GET", resource.path(namespace), query=query)
        items = doc.get("items") or []
        for item in items:  # list items come without apiVersion/kind; make them self-describing
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return items, str((doc.get("metadata") or {}).get("resourceVersion") or "")

    async def create(self, resource: Resource, body: Obj, namespace: str | None = None) -> Obj:
        """POST; `namespace` defaults to the body's `metadata.namespace`. AlreadyExists on a taken name."""
        ns = namespace or (body.get("metadata") or {}).get("namespace")
        doc = dict(body)
        doc.setdefault("apiVersion", resource.api_version)
        doc.setdefault("kind", resource.kind)
        return await self._object("POST", resource.path(ns), doc)

    async def replace(self, resource: Resource, name: str, body: Obj, namespace: str | None = None) -> Obj:
        """PUT the whole object; Conflict when `metadata.resourceVersion` is stale."""
        return await self._object("PUT", resource.path(namespace, name), body)

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Obj:
        """PATCH the main resource (or `subresource`): `patch` is a dict (merge/strategic) or a list of
        ops (json)."""
        return await self._object(
            "PATCH", resource.path(namespace, name, subresource), patch, PATCH_CONTENT_TYPES[patch_type]
        )

    async def patch_status(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
    ) -> Obj:
        """PATCH the `status` subresource, e.g. `{"status": {"phase": "Executing"}}`."""
        return await self.patch(resource, name, patch, namespace, patch_type, "status")

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str | None = None,
        missing_ok: bool = False,
    ) -> Obj | None:
        """DELETE; returns what the server answers (the object, or a Status). With `missing_ok`, a
        NotFound returns None. An object with finalizers only gets a deletionTimestamp."""
        body = None
        if propagation:
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            doc = await self.request("DELETE", resource.path(namespace, name), body=body)
        except NotFound:
            if missing_ok:
                return None
            raise
        return doc if isinstance(doc, dict) else None

    async def create_event(
        self,
        involved_object: Obj,
        reason: str,
        message: str,
        type: str = "Normal",
        *,
        component: str = "eddy",
        instance: str = "",
    ) -> Obj:
        """Create a core/v1 Event about `involved_object` (shown by `kubectl describe`)."""
        event = build_event(involved_object, reason, message, type, component=component, instance=instance)
        return await self.create(EVENTS, event, event["metadata"]["namespace"])

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        resource_version: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Yield `(type, object)` events (ADDED, MODIFIED, DELETED, BOOKMARK) from `resource_version`
        until the server ends the stream. An ERROR event raises its KubeError (Gone for 410)."""
        query = [("watch", "true"), ("timeoutSeconds", str(timeout_seconds))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        query += _selectors(label_selector, field_selector)
        # No total timeout; a read timeout a little past the server-side one catches a dead connection.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.request_timeout, sock_read=timeout_seconds + 30
        )
        path, started = resource.path(namespace), time.monotonic()
        try:
            response = await self._send("GET", path, query, None, "application/json", timeout)
        except KubeError as exc:
            self._report("GET", path, exc.status, started, watch=True)
            raise
        self._report("GET", path, int(response.status), started, watch=True)
        try:
            if response.status >= 400:
                raise error_from_status(_decode(await response.read()), int(response.status))
            async for line in _lines(response.content):
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise KubeError(500, "BadResponse", f"undecodable watch event: {line[:200]!r}") from exc
                etype, obj = event.get("type"), event.get("object")
                if not isinstance(etype, str) or not isinstance(obj, dict):
                    raise KubeError(500, "BadResponse", f"malformed watch event: {line[:200]!r}")
                if etype == "ERROR":
                    raise error_from_status(obj, int(obj.get("code") or 500))
                yield etype, obj
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(0, type(exc).__name__, str(exc)) from exc
        finally:
            response.close()


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited records of any length (aiohttp's readline caps a line at its buffer size)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while (cut := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:cut], buffer[cut + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _selectors(label_selector: str | None, field_selector: str | None) -> Query:
    query = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query
