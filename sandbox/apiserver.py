"""An in-memory Kubernetes API server on 127.0.0.1 for kubernetes-asyncio clients (see docs/kube.md).

One process, one aiohttp app, no etcd: objects live in a dict, every change gets the next integer
resourceVersion and is appended to a bounded history that watch streams replay from. What it speaks:
discovery (`/version`, `/api`, `/apis`, group versions), list (resourceVersion, labelSelector,
fieldSelector), watch (ADDED/MODIFIED/DELETED, ERROR 410 for a compacted resourceVersion, BOOKMARK,
timeoutSeconds), get, create (201, 409, generateName), update (409 on a stale resourceVersion), delete
(finalizers, deletionTimestamp, owner garbage collection), merge / JSON / strategic (as merge) patch,
and the `status` subresource with spec/status isolation. Errors are real `Status` objects.

Importable without pytest: `KubeApiServer().start()` / `.stop()`; the fixtures live in `kube.py`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import random
import re
import string
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import jsonpatch
from aiohttp import web

Obj = dict[str, Any]
log = logging.getLogger("sandbox.apiserver")
COUNTED = web.RequestKey("eddy_counted", bool)


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The resource's name in counters and `get_object`: `pods`, `leases`, `events.events.k8s.io`."""
        return self.plural if self.group != "events.k8s.io" else "events.events.k8s.io"


KINDS: tuple[Kind, ...] = (
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, has_status=True),
    Kind("", "v1", "nodes", "Node", namespaced=False, has_status=True),
    Kind("", "v1", "pods", "Pod", has_status=True),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", has_status=True),
    Kind("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False, has_status=True),
    Kind("", "v1", "services", "Service", has_status=True),
    Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "events", "Event"),
    Kind("", "v1", "serviceaccounts", "ServiceAccount"),
    Kind("events.k8s.io", "v1", "events", "Event"),
    Kind("apps", "v1", "statefulsets", "StatefulSet", has_status=True),
    Kind("apps", "v1", "deployments", "Deployment", has_status=True),
    Kind("apps", "v1", "daemonsets", "DaemonSet", has_status=True),
    Kind("batch", "v1", "jobs", "Job", has_status=True),
    Kind("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
         "MutatingWebhookConfiguration", namespaced=False),
    Kind("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
         "ValidatingAdmissionPolicy", namespaced=False, has_status=True),
    Kind("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
         "ValidatingAdmissionPolicyBinding", namespaced=False),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind("data.fluid.io", "v1alpha1", "datasets", "Dataset", has_status=True),
    Kind("data.fluid.io", "v1alpha1", "jindoruntimes", "JindoRuntime", has_status=True),
    Kind("data.fluid.io", "v1alpha1", "dataloads", "DataLoad", has_status=True),
)
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
BY_KEY = {k.key: k for k in KINDS} | {f"{k.plural}.{k.group}": k for k in KINDS if k.group}
BY_KIND = {(k.api_version, k.kind): k for k in KINDS}


@dataclass
class AdmissionAttributes:
    """One write as admission sees it, before it is stored (kube-apiserver's admission.Attributes).

    `obj` is the object as the client sent it (patches applied, for UPDATE): a mutating step replaces
    it; a validating step reads it. For CREATE the name may still be empty (generateName is resolved
    after admission, as in kube-apiserver) and `metadata.namespace` may be missing: `namespace` is the
    request's.
    """

    operation: str  # CREATE | UPDATE
    kind: Kind
    namespace: str
    name: str
    obj: Obj
    old: Obj | None
    sub_resource: str = ""
    dry_run: bool = False
    user: str = "system:admin"


class AdmissionStep(Protocol):
    """A mutating or validating admission step; raises ApiError to deny, returns the object to store."""

    async def __call__(self, attrs: AdmissionAttributes) -> Obj: ...


class ApiError(Exception):
    """Answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


MERGE_KEYS = ("name", "uid", "containerPort", "mountPath", "devicePath")


def _merge_key(old: list[Any], new: list[Any]) -> str | None:
    """The key a strategic merge patch merges two lists by: the first of MERGE_KEYS that every element
    of both lists (all objects) carries. None: the list is replaced, like a merge patch."""
    items = [*old, *new]
    if not new or not all(isinstance(i, dict) for i in items):
        return None
    for key in MERGE_KEYS:
        if all(key in i for i in items):
            return key
    return None


def strategic_merge(target: Any, patch: Any) -> Any:
    """A simplified strategic merge patch: a merge patch, except that lists of objects keyed by one of
    MERGE_KEYS (containers, volumes, env, ports, ownerReferences...) merge element by element, and the
    `$patch: delete|replace` directives work. Lists of scalars are replaced (real SMP merges a few, such
    as `finalizers`, by value; that is not modelled)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        current = out.get(key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and isinstance(current, list) and (mk := _merge_key(current, value)):
            merged = [copy.deepcopy(i) for i in current]
            for item in value:
                at = next((n for n, i in enumerate(merged) if i.get(mk) == item.get(mk)), None)
                if item.get("$patch") == "delete":
                    if at is not None:
                        del merged[at]
                elif at is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[at] = strategic_merge(merged[at], item)
            out[key] = merged
        else:
            out[key] = strategic_merge(current, value)
    return out


# ---------------------------------------------------------------------------------------------- selectors
_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def label_match(labels: dict[str, str], selector: str) -> bool:
    """Equality (`=`, `==`, `!=`), set (`in`, `notin`) and existence (`k`, `!k`) terms, ANDed."""
    for term in _split_terms(selector):
        if m := _SET_TERM.match(term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (key in labels and labels[key] in values):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_match(obj: Obj, selector: str) -> bool:
    """`metadata.name`, `metadata.namespace` and any dotted path to a scalar (`status.phase`)."""
    for term in _split_terms(selector):
        negate = "!=" in term
        path, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        actual = "" if cur is None else str(cur)
        if (actual == value) == negate:
            return False
    return True


# ---------------------------------------------------------------------------------------------- store
class CallCounter(Counter[Any]):
    """Requests by `(verb, resource)`. `calls["total"]` is the sum of all of them, computed, not stored,
    so `sum(calls.values())` counts each request once."""

    def __getitem__(self, key: Any) -> int:
        if key == "total":
            return sum(self.values())
        return super().__getitem__(key)


@dataclass
class Change:
    rv: int
    kind: Kind
    type: str  # ADDED / MODIFIED / DELETED
    obj: Obj
    old: Obj | None  # the previous state, for selector transitions


@dataclass(eq=False)
class Watcher:
    kind: Kind
    namespace: str | None
    labels: str
    fields: str
    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)


@dataclass
class Fault:
    remaining: int
    status: int
    method: str | None
    path: str | None  # substring of the request path and query (`watch=true` matches watches)


class KubeApiServer:
    """The in-memory API server. `start()` binds 127.0.0.1 on a free port and sets `.url`."""

    def __init__(self, git_version: str = "v1.30.0", history_limit: int = 1000) -> None:
        self.git_version = git_version
        self.history_limit = history_limit
        self.gc = True  # delete dependents whose owners are all gone
        self.url = ""
        self.calls = CallCounter()
        self.requests: list[tuple[str, str]] = []  # (method, path?query), for debugging tests
        self.last_headers: dict[str, str] = {}
        self._store: dict[tuple[Kind, str, str], Obj] = {}
        self._rv = 0
        self._history: list[Change] = []
        self._compacted = 0  # watches/lists from a resourceVersion below this answer 410
        self._watchers: set[Watcher] = set()
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._closing = False
        # Run in order on every CREATE/UPDATE of a main resource: mutating steps, then validating ones.
        self.admission: list[AdmissionStep] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> KubeApiServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._closing = True
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ direct access for tests
    @property
    def resource_version(self) -> int:
        return self._rv

    def reset_calls(self) -> None:
        self.calls.clear()
        self.requests.clear()

    def put(self, obj: Obj) -> Obj:
        """Seed or overwrite an object as is (status included), with an ADDED/MODIFIED event."""
        kind = BY_KIND.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if kind is None:
            raise ValueError(f"unknown apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')}")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ns = (meta.get("namespace") or "default") if kind.namespaced else ""
        if kind.namespaced:
            meta["namespace"] = ns
        old = self._store.get((kind, ns, meta["name"]))
        if old is None:
            self._fill_new_meta(meta)
        else:
            for k in ("uid", "creationTimestamp"):
                meta.setdefault(k, old["metadata"].get(k))
            meta.setdefault("generation", old["metadata"].get("generation", 1))
        return copy.deepcopy(self._commit(kind, ns, meta["name"], obj, old))

    def get_object(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        kind = self._kind_by_key(resource)
        obj = self._store.get((kind, namespace or "" if kind.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        kind = self._kind_by_key(resource)
        return [copy.deepcopy(o) for (k, ns, _), o in sorted(self._store.items(), key=lambda i: i[0][1:])
                if k == kind and (namespace is None or ns == namespace)]

    def remove(self, resource: str, namespace: str | None, name: str) -> None:
        """Delete an object outright (ignoring finalizers), with a DELETED event."""
        kind = self._kind_by_key(resource)
        ns = namespace or "" if kind.namespaced else ""
        if (kind, ns, name) in self._store:
            self._remove(kind, ns, name)

    def compact(self) -> None:
        """Forget all history: every watch/list from an older resourceVersion now gets 410 Gone."""
        self._history.clear()
        self._compacted = self._rv

    def close_watches(self) -> None:
        """End every open watch stream (clients see the stream end and re-watch)."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)

    def fail_next(self, count: int = 1, status: int = 500, *, method: str | None = None,
                  path: str | None = None) -> None:
        """The next `count` requests matching `method` and `path` (a substring of path and query) answer
        `status` with a Status body. `fail_next(10**9, path="watch=true")` holds every watch off until
        `clear_faults()`."""
        self._faults.append(Fault(count, status, method.upper() if method else None, path))

    def clear_faults(self) -> None:
        self._faults.clear()

    def _kind_by_key(self, resource: str) -> Kind:
        try:
            return BY_KEY[resource]
        except KeyError:
            raise ValueError(f"unknown resource {resource!r}") from None

    # ------------------------------------------------------------------ changes
    def _fill_new_meta(self, meta: Obj) -> None:
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("generation", 1)

    def _commit(self, kind: Kind, ns: str, name: str, obj: Obj, old: Obj | None) -> Obj:
        _normalize(kind, obj)
        self._rv += 1
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._store[(kind, ns, name)] = obj
        self._record(Change(self._rv, kind, "ADDED" if old is None else "MODIFIED", obj, old))
        return obj

    def _remove(self, kind: Kind, ns: str, name: str) -> Obj:
        old = self._store.pop((kind, ns, name))
        self._rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record(Change(self._rv, kind, "DELETED", gone, old))
        if self.gc:
            self._collect_dependents(old["metadata"].get("uid"))
        return gone

    def _record(self, change: Change) -> None:
        self._history.append(change)
        if len(self._history) > self.history_limit:
            drop = len(self._history) - self.history_limit
            self._compacted = self._history[drop - 1].rv
            del self._history[:drop]
        for watcher in list(self._watchers):
            if watcher.kind == change.kind:
                watcher.queue.put_nowait(change)

    def _collect_dependents(self, uid: str | None) -> None:
        if not uid:
            return
        live = {o["metadata"].get("uid") for o in self._store.values()}
        for (kind, ns, name), obj in list(self._store.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            orphaned = any(r.get("uid") == uid for r in refs) and not any(r.get("uid") in live for r in refs)
            if orphaned and (kind, ns, name) in self._store:
                self._delete(kind, ns, name)

    def _delete(self, kind: Kind, ns: str, name: str) -> Obj:
        obj = self._store[(kind, ns, name)]
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(obj)
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return copy.deepcopy(self._commit(kind, ns, name, new, obj))
        return self._remove(kind, ns, name)

    def _write(self, kind: Kind, ns: str, name: str, new: Obj, old: Obj, status_only: bool) -> Obj:
        """Apply an update/patch result with subresource isolation, generation and finalizer rules."""
        if status_only:
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        else:
            if kind.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
                else:
                    meta.pop(key, None)
            meta["name"], meta["generation"] = name, old["metadata"].get("generation", 1)
            if ns:
                meta["namespace"] = ns
            if _spec_of(new) != _spec_of(old):
                meta["generation"] += 1
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        _normalize(kind, new)
        if new == old:
            return copy.deepcopy(old)  # a no-op write changes nothing, not even the resourceVersion
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._store[(kind, ns, name)] = new
            return self._remove(kind, ns, name)
        return copy.deepcopy(self._commit(kind, ns, name, new, old))

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.last_headers = dict(request.headers)
        try:
            return await self._route(request)
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)
        except Exception as exc:  # a bug here must still look like an API error to the client
            log.exception("test API server failed on %s %s", request.method, request.path_qs)
            err = ApiError(500, "InternalError", f"test server error: {type(exc).__name__}: {exc}")
            return web.json_response(err.status(), status=500)
        finally:
            if not request.get(COUNTED):  # an unknown path: still one request
                self.calls[(request.method.lower(), "unknown")] += 1

    def _count(self, request: web.Request, verb: str, resource: str) -> None:
        """Count one request (exactly once), then answer it with an injected fault if one matches."""
        self.calls[(verb, resource)] += 1
        request[COUNTED] = True
        self._maybe_fault(request)

    def _maybe_fault(self, request: web.Request) -> None:
        for fault in self._faults:
            if fault.remaining > 0 and (fault.method in (None, request.method)) and (
                fault.path is None or fault.path in request.path_qs
            ):
                fault.remaining -= 1
                raise ApiError(fault.status, "InternalError" if fault.status >= 500 else "Injected",
                               f"injected fault {fault.status}")
        self._faults = [f for f in self._faults if f.remaining > 0]

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            self._count(request, "get", "version")
            return web.json_response(self._version())
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return self._discovery_root(request, parts)
        if not rest:
            return self._discovery_group(request, group, version)
        ns: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in BY_PATH:
            ns, rest = rest[1], rest[2:]
        kind = BY_PATH.get((group, version, rest[0]))
        if kind is None or len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            raise ApiError(404, "NotFound", f"the server could not find the resource ({request.path})")
        if kind.namespaced is False and ns is not None:
            raise ApiError(404, "NotFound", f"{kind.plural} is not namespaced")
        name = rest[1] if len(rest) >= 2 else None
        status_only = len(rest) == 3
        if status_only and not kind.has_status:
            raise ApiError(404, "NotFound", f"{kind.plural} has no status subresource")
        return await self._resource(request, kind, ns, name, status_only)

    def _version(self) -> Obj:
        major, minor = [*self.git_version.lstrip("v").split("."), "0"][:2]
        return {"major": major, "minor": minor, "gitVersion": self.git_version, "gitCommit": "eddy-test",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22",
                "compiler": "gc", "platform": "linux/amd64"}

    def _discovery_root(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        self._count(request, "get", "discovery")
        if parts == ["api"]:
            address = {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}
            return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                      "serverAddressByClientCIDRs": [address]})
        if len(parts) == 2 and parts[0] == "apis":
            versions = [k.version for k in KINDS if k.group == parts[1]]
            if versions:
                gv = {"groupVersion": f"{parts[1]}/{versions[0]}", "version": versions[0]}
                return web.json_response({"kind": "APIGroup", "apiVersion": "v1", "name": parts[1],
                                          "versions": [gv], "preferredVersion": gv})
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {}
            for k in KINDS:
                if k.group and k.version not in groups.setdefault(k.group, []):
                    groups[k.group].append(k.version)
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in groups.items()]})
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _discovery_group(self, request: web.Request, group: str, version: str) -> web.StreamResponse:
        self._count(request, "get", "discovery")
        kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
        if not kinds:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = []
        for k in kinds:
            resources.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                              "kind": k.kind, "verbs": verbs})
            if k.has_status:
                resources.append({"name": f"{k.plural}/status", "singularName": "",
                                  "namespaced": k.namespaced, "kind": k.kind,
                                  "verbs": ["get", "patch", "update"]})
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1",
                                  "groupVersion": kinds[0].api_version, "resources": resources})

    async def _resource(self, request: web.Request, kind: Kind, ns: str | None, name: str | None,
                        status_only: bool) -> web.StreamResponse:
        key = f"{kind.key}/status" if status_only else kind.key
        method = request.method
        if name is None:
            if method == "GET":
                watching = request.query.get("watch", "").lower() in ("true", "1")
                self._count(request, "watch" if watching else "list", key)
                if watching:
                    return await self._watch(request, kind, ns)
                return web.json_response(self._list(request, kind, ns))
            if method == "POST":
                self._count(request, "create", key)
                body = await _body(request)
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the body must be an object")
                admitted = await self._admit("CREATE", kind, ns or "", body, None,
                                             dry_run=request.query.get("dryRun") == "All")
                return web.json_response(self._create(kind, ns, admitted), status=201)
            if method == "DELETE":
                self._count(request, "deletecollection", key)
                return web.json_response(self._delete_collection(request, kind, ns))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        store_ns = (ns or "") if kind.namespaced else ""
        if kind.namespaced and ns is None:
            raise ApiError(404, "NotFound", f"{kind.plural} is namespaced")
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
        self._count(request, verb, key)
        old = self._store.get((kind, store_ns, name))
        if old is None:
            raise ApiError(404, "NotFound", f'{kind.key} "{name}" not found')
        if method == "GET":
            return web.json_response(old)
        if method == "DELETE":
            return web.json_response(self._delete(kind, store_ns, name))
        body = await _body(request)
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be an object")
            _check_rv(body, old, kind, name)
            new = copy.deepcopy(body)
        else:
            new = _apply_patch(request.content_type, old, body)
            _check_rv(body if isinstance(body, dict) else {}, old, kind, name)
        if not status_only:
            new = await self._admit("UPDATE", kind, store_ns, new, old,
                                    dry_run=request.query.get("dryRun") == "All")
            old = self._store.get((kind, store_ns, name))  # admission awaited: re-read what is stored
            if old is None:
                raise ApiError(404, "NotFound", f'{kind.key} "{name}" not found')
        return web.json_response(self._write(kind, store_ns, name, new, old, status_only))

    async def _admit(self, operation: str, kind: Kind, ns: str, obj: Obj, old: Obj | None, *,
                     dry_run: bool = False) -> Obj:
        """Run the admission chain (mutating, then validating) over one write; returns what to store."""
        if not self.admission:
            return obj
        name = str((obj.get("metadata") or {}).get("name") or "")
        attrs = AdmissionAttributes(operation, kind, ns, name, copy.deepcopy(obj),
                                    copy.deepcopy(old) if old is not None else None, dry_run=dry_run)
        for step in self.admission:
            attrs.obj = await step(attrs)
        return attrs.obj

    async def create(self, obj: Obj, namespace: str | None = None) -> Obj:
        """Create through admission, as a POST would (for in-process callers; no request is counted)."""
        kind = BY_KIND.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if kind is None:
            raise ApiError(404, "NotFound", f"no kind {obj.get('kind')} in {obj.get('apiVersion')}")
        ns = None
        if kind.namespaced:
            ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        admitted = await self._admit("CREATE", kind, ns or "", obj, None)
        return self._create(kind, ns, admitted)

    def _selected(self, obj: Obj | None, labels: str, fields: str) -> bool:
        if obj is None:
            return False
        if labels and not label_match(obj["metadata"].get("labels") or {}, labels):
            return False
        return not fields or field_match(obj, fields)

    def _list(self, request: web.Request, kind: Kind, ns: str | None) -> Obj:
        rv = request.query.get("resourceVersion", "")
        if rv not in ("", "0") and request.query.get("resourceVersionMatch") == "Exact" and (
            _parse_rv(rv) < self._compacted
        ):
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted})")
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        items = [copy.deepcopy(o) for (k, ons, _), o in sorted(self._store.items(), key=lambda i: i[0][1:])
                 if k == kind and (ns is None or ons == ns) and self._selected(o, labels, fields)]
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _create(self, kind: Kind, ns: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            if ns is None:
                raise ApiError(404, "NotFound", f"{kind.plural} is namespaced")
            if meta.get("namespace") not in (None, "", ns):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
            meta["namespace"] = ns
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            while True:
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                name = meta["generateName"] + suffix
                if (kind, ns or "", name) not in self._store:
                    break
            meta["name"] = name
        store_ns = ns or "" if kind.namespaced else ""
        if (kind, store_ns, meta["name"]) in self._store:
            raise ApiError(409, "AlreadyExists", f'{kind.key} "{meta["name"]}" already exists')
        for k in ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp"):
            meta.pop(k, None)
        if kind.has_status:
            obj.pop("status", None)
        if kind.kind in INITIAL_STATUS:
            obj["status"] = copy.deepcopy(INITIAL_STATUS[kind.kind])
        self._fill_new_meta(meta)
        return copy.deepcopy(self._commit(kind, store_ns, meta["name"], obj, None))

    def _delete_collection(self, request: web.Request, kind: Kind, ns: str | None) -> Obj:
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        doomed = [key for key, o in self._store.items()
                  if key[0] == kind and (ns is None or key[1] == ns) and self._selected(o, labels, fields)]
        gone = [self._delete(*key) for key in doomed if key in self._store]  # GC may have taken some
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self._rv)}, "items": gone}

    # ------------------------------------------------------------------ watch
    async def _watch(self, request: web.Request, kind: Kind, ns: str | None) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        watcher = Watcher(kind, ns, labels, fields)
        # Synchronously (no await): take the backlog and subscribe, so no change falls in between.
        initial: list[tuple[str, Obj]] = []
        expired = False
        # The bookmark's resourceVersion may only cover changes this watch has passed on (or filtered
        # out): it starts at what the backlog reflects and moves with each change taken from the queue.
        seen = self._rv
        if rv_text in ("", "0"):
            initial = [("ADDED", copy.deepcopy(o)) for (k, ons, _), o in sorted(self._store.items(),
                       key=lambda i: i[0][1:]) if k == kind and (ns is None or ons == ns)
                       and self._selected(o, labels, fields)]
        else:
            since = _parse_rv(rv_text)
            if since < self._compacted:
                expired = True
            else:
                for past in self._history:
                    if past.rv > since and past.kind == kind:
                        initial.extend(self._translate(watcher, past))
        if not expired and not self._closing:
            self._watchers.add(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            if expired:
                err = ApiError(410, "Expired", f"too old resource version: {rv_text} ({self._compacted})")
                await _send(response, "ERROR", err.status())
                return response
            for etype, obj in initial:
                await _send(response, etype, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    change = await asyncio.wait_for(_next(watcher), remaining)
                except TimeoutError:
                    break
                if change is None:
                    break
                for etype, obj in self._translate(watcher, change):
                    await _send(response, etype, obj)
                seen = max(seen, change.rv)
            if bookmarks and not self._closing:
                await _send(response, "BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version,
                                                   "metadata": {"resourceVersion": str(seen)}})
        finally:
            self._watchers.discard(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _translate(self, watcher: Watcher, change: Change) -> list[tuple[str, Obj]]:
        """What a watcher with selectors sees: objects moving in/out of the selection are ADDED/DELETED."""
        ns_of = change.obj["metadata"].get("namespace", "")
        if watcher.namespace is not None and ns_of != watcher.namespace:
            return []
        now = self._selected(change.obj, watcher.labels, watcher.fields)
        before = change.old is not None and self._selected(change.old, watcher.labels, watcher.fields)
        if change.type == "DELETED":
            return [("DELETED", copy.deepcopy(change.obj))] if before else []
        if change.type == "ADDED":
            return [("ADDED", copy.deepcopy(change.obj))] if now else []
        if now and before:
            return [("MODIFIED", copy.deepcopy(change.obj))]
        if now:
            return [("ADDED", copy.deepcopy(change.obj))]
        if before:
            return [("DELETED", copy.deepcopy(change.obj))]
        return []


async def _send(response: web.StreamResponse, etype: str, obj: Obj) -> None:
    await response.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from None


def _parse_rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid resourceVersion {text!r}") from None


def _check_rv(body: Obj, old: Obj, kind: Kind, name: str) -> None:
    rv = (body.get("metadata") or {}).get("resourceVersion")
    if rv and str(rv) != old["metadata"]["resourceVersion"]:
        raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.key} "{name}": the object '
                       "has been modified; please apply your changes to the latest version and try again")


INITIAL_STATUS: dict[str, Obj] = {
    "Pod": {"phase": "Pending"},
    "Namespace": {"phase": "Active"},
    "PersistentVolumeClaim": {"phase": "Pending"},
    "PersistentVolume": {"phase": "Pending"},
}


def _normalize(kind: Kind, obj: Obj) -> None:
    """What the real API server does on every write that clients can see: a Secret's `stringData` is
    folded into base64 `data`."""
    if kind.kind == "Secret" and isinstance(obj.get("stringData"), dict):
        data = obj.get("data") or {}
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _apply_patch(content_type: str, old: Obj, body: Any) -> Obj:
    if content_type == "application/json-patch+json":
        if not isinstance(body, list):
            raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
        try:
            result = jsonpatch.apply_patch(old, body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc}") from None
        if not isinstance(result, dict):
            raise ApiError(422, "Invalid", "the JSON patch did not produce an object")
        return copy.deepcopy(result)
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be an object")
        strategic = content_type == "application/strategic-merge-patch+json"
        result = strategic_merge(old, body) if strategic else merge_patch(old, body)
        assert isinstance(result, dict)
        return copy.deepcopy(result)  # the merge shares untouched branches with the stored object
    raise ApiError(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported")


async def _next(watcher: Watcher) -> Change | None:
    return await watcher.queue.get()
