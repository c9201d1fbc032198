"""An in-memory Kubernetes API server for kubernetes-asyncio clients and kubectl (see docs/kube.md).

One process, one aiohttp app, no etcd: objects live in a dict (api_store.py), every change gets the
next integer resourceVersion and is appended to a bounded history that watch streams replay from.
What it speaks: discovery (legacy and aggregated) and a minimal OpenAPI v2/v3 (api_discovery.py),
list, watch, get, create, update, delete (finalizers, graceful pod deletion, owner GC, namespace
termination: api_objects.py), merge / JSON / strategic / apply patches (api_patch.py), the `status`
subresource, pod `binding`, `log` and `exec` (api_pods.py), server-side Tables for kubectl
(tables.py, api_printers.py), CRDs that register their kinds, pod and Service defaults and the
ServiceAccount plugin (builtin.py), the admission hook, PodSecurity (api_podsecurity.py), plain HTTP on
127.0.0.1 and TLS with its own CA for in-cluster clients (api_tls.py). Errors are `Status` objects.

Importable without pytest: `await KubeApiServer().start()` / `.stop()`; fixtures: tests/support/kube.py.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from sandbox import api_discovery as disc
from sandbox import api_pods, api_scale, builtin, tables
from sandbox.api_kinds import ApiError, Kind, Obj
from sandbox.api_objects import Objects
from sandbox.api_patch import apply_patch, field_match, label_match, merge_patch, parse_body, strategic_merge
from sandbox.api_podsecurity import check_pod_security, validate_pod
from sandbox.api_store import Change, parse_rv
from sandbox.api_tls import serving_context

__all__ = [
    "BY_KEY",
    "BY_KIND",
    "BY_PATH",
    "KINDS",
    "AdmissionAttributes",
    "AdmissionStep",
    "ApiError",
    "Change",
    "Kind",
    "KubeApiServer",
    "field_match",
    "label_match",
    "merge_patch",
    "strategic_merge",
]

log = logging.getLogger("sandbox.apiserver")
COUNTED = web.RequestKey("eddy_counted", bool)
_ALL = ("all",)

KINDS: tuple[Kind, ...] = (
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, has_status=True, short_names=("ns",)),
    Kind("", "v1", "nodes", "Node", namespaced=False, has_status=True, short_names=("no",)),
    Kind("", "v1", "pods", "Pod", has_status=True, short_names=("po",), categories=_ALL),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", has_status=True, short_names=("pvc",)),
    Kind(
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        namespaced=False,
        has_status=True,
        short_names=("pv",),
    ),
    Kind("", "v1", "services", "Service", has_status=True, short_names=("svc",), categories=_ALL),
    Kind("", "v1", "endpoints", "Endpoints", short_names=("ep",), singular="endpoints"),
    Kind("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "events", "Event", short_names=("ev",)),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Kind("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    Kind("apps", "v1", "statefulsets", "StatefulSet", has_status=True, short_names=("sts",), categories=_ALL),
    Kind(
        "apps", "v1", "deployments", "Deployment", has_status=True, short_names=("deploy",), categories=_ALL
    ),
    Kind("apps", "v1", "daemonsets", "DaemonSet", has_status=True, short_names=("ds",), categories=_ALL),
    Kind("apps", "v1", "replicasets", "ReplicaSet", has_status=True, short_names=("rs",), categories=_ALL),
    Kind("batch", "v1", "jobs", "Job", has_status=True, categories=_ALL),
    Kind(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        namespaced=False,
        categories=("api-extensions",),
    ),
    Kind(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        namespaced=False,
        categories=("api-extensions",),
    ),
    Kind(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicies",
        "ValidatingAdmissionPolicy",
        namespaced=False,
        has_status=True,
        categories=("api-extensions",),
    ),
    Kind(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicybindings",
        "ValidatingAdmissionPolicyBinding",
        namespaced=False,
        categories=("api-extensions",),
    ),
    Kind(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        has_status=True,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
    ),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind(
        "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", has_status=True, short_names=("pdb",)
    ),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind("data.fluid.io", "v1alpha1", "datasets", "Dataset", has_status=True),
    Kind("data.fluid.io", "v1alpha1", "jindoruntimes", "JindoRuntime", has_status=True),
    Kind("data.fluid.io", "v1alpha1", "dataloads", "DataLoad", has_status=True),
)
# The built-in kinds only; a server's own registry (`server.kinds`) also has those of applied CRDs.
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
BY_KEY = {k.key: k for k in KINDS} | {f"{k.plural}.{k.group}": k for k in KINDS if k.group}
BY_KIND = {(k.api_version, k.kind): k for k in KINDS}


@dataclass
class AdmissionAttributes:
    """One write as admission sees it, before it is stored (kube-apiserver's admission.Attributes).

    `obj` is the object as the client sent it (patches applied, for UPDATE; defaults and the
    ServiceAccount plugin's changes applied to a pod): a mutating step replaces it; a validating step
    reads it. For CREATE the name may still be empty (generateName is resolved after admission, as in
    kube-apiserver) and `metadata.namespace` may be missing: `namespace` is the request's.
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


class CallCounter(Counter[Any]):
    """Requests by `(verb, resource)`. `calls["total"]` is the sum of all of them, computed, not stored,
    so `sum(calls.values())` counts each request once."""

    def __getitem__(self, key: Any) -> int:
        if key == "total":
            return sum(self.values())
        return super().__getitem__(key)


@dataclass
class Fault:
    remaining: int
    status: int
    method: str | None
    path: str | None  # substring of the request path and query (`watch=true` matches watches)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1")


class KubeApiServer(Objects):
    """The in-memory API server. `start()` binds 127.0.0.1 on a free port and sets `.url`;
    `serve_tls(host)` adds an HTTPS listener whose CA is `.ca_pem`.

    `strict=True` adds what kube-apiserver enforces and many tests do not want: objects can only be
    created in a namespace that exists and is not terminating (NamespaceLifecycle), and a pod's
    ServiceAccount must exist. `bare=True` is the API server alone, what most unit tests want: it starts
    empty (no `default`, `kube-system`, `kube-public` namespaces) and does not do what
    kube-controller-manager does for each namespace (its `default` ServiceAccount and `kube-root-ca.crt`
    ConfigMap)."""

    def __init__(
        self,
        git_version: str = "v1.30.0",
        history_limit: int = 1000,
        *,
        strict: bool = False,
        bare: bool = False,
        service_cidr: str = "10.96.0.0/16",
    ) -> None:
        super().__init__(KINDS, history_limit, strict=strict, bare=bare, service_cidr=service_cidr)
        self.git_version = git_version
        self.url = ""
        self.tls_urls: list[str] = []
        self.calls = CallCounter()
        self.requests: list[tuple[str, str]] = []  # (method, path?query), for debugging tests
        self.last_headers: dict[str, str] = {}
        self.log_source: api_pods.LogSource | None = None  # set by the pod runner: container log files
        self.exec_handler: api_pods.ExecHandler | None = None  # set by the pod runner: pods/exec
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
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
        port = self._runner.addresses[-1][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def serve_tls(self, host: str, port: int = 0) -> int:
        """Also listen with TLS on host:port (a free port for 0), with a serving certificate from this
        server's CA naming `host`, 127.0.0.1 and `kubernetes.default.svc[.cluster.local]`. Any bearer
        token is accepted: there is no authentication or authorization. Unless `bare`, the `kubernetes`
        Service in `default` (the service CIDR's first address, port 443) and its Endpoints and
        EndpointSlice are set to this listener, as kube-apiserver advertises itself. Returns the port."""
        if self._runner is None:
            raise RuntimeError("start() the server first")
        site = web.TCPSite(self._runner, host, port, ssl_context=serving_context(self.authority, host))
        await site.start()
        bound = int(self._runner.addresses[-1][1])  # the sites' sockets, in the order they started
        self.tls_urls.append(f"https://{host}:{bound}")
        if not self.bare:  # the address pods reach: the `kubernetes` Service and its endpoints point here
            for obj in builtin.kubernetes_service(self.service_cidr, host, bound):
                self.put(obj)
        return bound

    def kubeconfig(self, url: str = "", namespace: str = "default", token: str = "sandbox") -> str:
        """A kubeconfig (YAML text) for kubectl and clients: `url` defaults to the plain HTTP listener;
        an https URL carries this server's CA. The token is not checked (no authentication)."""
        url = url or self.url
        cluster: Obj = {"server": url}
        if url.startswith("https://"):
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem.encode()).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "sandbox",
            "clusters": [{"name": "sandbox", "cluster": cluster}],
            "users": [{"name": "sandbox", "user": {"token": token} if url.startswith("https://") else {}}],
            "contexts": [
                {
                    "name": "sandbox",
                    "context": {"cluster": "sandbox", "user": "sandbox", "namespace": namespace},
                }
            ],
        }
        return json.dumps(doc, indent=2) + "\n"  # JSON is YAML

    async def stop(self) -> None:
        self._db.closing = True
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reset_calls(self) -> None:
        self.calls.clear()
        self.requests.clear()

    def fail_next(
        self, count: int = 1, status: int = 500, *, method: str | None = None, path: str | None = None
    ) -> None:
        """The next `count` requests matching `method` and `path` (a substring of path and query) answer
        `status` with a Status body. `fail_next(10**9, path="watch=true")` holds every watch off until
        `clear_faults()`."""
        self._faults.append(Fault(count, status, method.upper() if method else None, path))

    def clear_faults(self) -> None:
        self._faults.clear()

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.last_headers = dict(request.headers)
        try:
            return await self._route(request)
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)
        except Exception as exc:  # a bug here must still look like an API error to the client
            log.exception("sandbox API server failed on %s %s", request.method, request.path_qs)
            err = ApiError(500, "InternalError", f"sandbox API server error: {type(exc).__name__}: {exc}")
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
            if (
                fault.remaining > 0
                and (fault.method in (None, request.method))
                and (fault.path is None or fault.path in request.path_qs)
            ):
                fault.remaining -= 1
                raise ApiError(
                    fault.status,
                    "InternalError" if fault.status >= 500 else "Injected",
                    f"injected fault {fault.status}",
                )
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
        if (
            len(rest) >= 2
            and rest[0] == "namespaces"
            and (len(rest) == 2 or rest[2] != "status")
            and (
                (len(rest) >= 3 and self.kinds.by_path(group, version, rest[2]) is not None)
                or (group, rest[2:3]) == ("", ["bindings"])
            )
        ):
            ns, rest = rest[1], rest[2:]
        if (group, version, rest, ns is not None) == (
            "",
            "v1",
            ["bindings"],
            True,
        ) and request.method == "POST":
            return await self._post_binding(request, str(ns), None)
        kind = self.kinds.by_path(group, version, rest[0])
        if kind is None or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the resource ({request.path})")
        if kind.namespaced is False and ns is not None:
            raise ApiError(404, "NotFound", f"{kind.plural} is not namespaced")
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else ""
        if sub and sub not in [s for s, _, _ in disc.subresources(kind)]:
            raise ApiError(404, "NotFound", f"{kind.plural} has no {sub} subresource")
        if sub in ("binding", "log", "exec"):
            if ns is None or name is None:
                raise ApiError(404, "NotFound", f"pods/{sub} needs a namespace and a name")
            if sub == "binding":
                if request.method != "POST":
                    raise ApiError(405, "MethodNotAllowed", "pods/binding only takes POST")
                return await self._post_binding(request, ns, name)
            self._count(request, "get", f"pods/{sub}")
            pod = self._db.objects.get((kind, ns, name))
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            if sub == "exec":
                return await api_pods.serve_exec(request, copy.deepcopy(pod), self.exec_handler)
            return await api_pods.serve_log(
                request,
                copy.deepcopy(pod),
                self.log_source,
                lambda: self._db.objects.get((kind, ns or "", name or "")),
            )
        if sub == "scale":
            return await self._scale(request, kind, ns, str(name))
        return await self._resource(request, kind, ns, name, sub == "status")

    def _version(self) -> Obj:
        major, minor = [*self.git_version.lstrip("v").split("."), "0"][:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": self.git_version,
            "gitCommit": "eddy-sandbox",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.22",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _discovery_root(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        self._count(request, "get", "discovery")
        accept = request.headers.get("Accept", "")
        if parts in (["api"], ["apis"]) and disc.wants_aggregated(accept):
            return web.Response(
                text=json.dumps(disc.aggregated(self.kinds, core=parts == ["api"])),
                headers={"Content-Type": disc.AGGREGATED, "Vary": "Accept"},
            )
        doc: Obj | None = None
        if parts == ["api"]:
            doc = disc.api_versions(request.host)
        elif parts == ["apis"]:
            doc = disc.api_group_list(self.kinds)
        elif len(parts) == 2 and parts[0] == "apis":
            doc = disc.api_group(self.kinds, parts[1])
        elif parts == ["openapi", "v2"]:
            body = disc.openapi_v2(self.kinds, self.git_version)
            return web.Response(body=body, headers={"Content-Type": disc.OPENAPI_V2_PROTOBUF})
        elif parts == ["openapi", "v3"]:
            doc = disc.openapi_root(self.kinds, self.git_version)
        elif parts[:2] == ["openapi", "v3"] and len(parts) in (4, 5):
            group, version = (
                ("", parts[3]) if parts[2] == "api" else (parts[3], parts[4] if len(parts) == 5 else "")
            )
            doc = disc.openapi_group_version(self.kinds, group, version, self.git_version)
        elif parts in (["healthz"], ["readyz"], ["livez"]):
            return web.Response(text="ok")
        if doc is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(doc)

    def _discovery_group(self, request: web.Request, group: str, version: str) -> web.StreamResponse:
        self._count(request, "get", "discovery")
        doc = disc.api_resource_list(self.kinds, group, version)
        if doc is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(doc)

    def _table(self, request: web.Request, kind: Kind, objs: list[Obj], rv: str = "") -> web.Response:
        doc = tables.table(
            kind, objs, include=request.query.get("includeObject", "Metadata"), resource_version=rv
        )
        return web.json_response(doc)

    async def _post_binding(self, request: web.Request, ns: str, name: str | None) -> web.StreamResponse:
        self._count(request, "create", "pods/binding")
        body = await _body(request)
        name = name or str(((body or {}).get("metadata") or {}).get("name") or "")
        pods = self.kinds.by_key("pods")
        old = self._db.objects.get((pods, ns, name))
        if old is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        new = api_pods.bind(old, body)
        if not _flag(request, "dryRun") and request.query.get("dryRun") != "All":
            self._commit(pods, ns, name, new, old)
        return web.json_response(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201},
            status=201,
        )

    async def _resource(
        self, request: web.Request, kind: Kind, ns: str | None, name: str | None, status_only: bool
    ) -> web.StreamResponse:
        key = f"{kind.key}/status" if status_only else kind.key
        method = request.method
        dry_run = request.query.get("dryRun") == "All"
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        if name is None:
            if method == "GET":
                watching = _flag(request, "watch")
                self._count(request, "watch" if watching else "list", key)
                if watching:
                    include = request.query.get("includeObject", "Metadata")
                    render = (lambda o: tables.table(kind, [o], include=include)) if as_table else None
                    return await self._db.watch(request, kind, ns, render)
                listed = self._list(request, kind, ns)
                if as_table:
                    return self._table(request, kind, listed["items"], listed["metadata"]["resourceVersion"])
                return web.json_response(listed)
            if method == "POST":
                self._count(request, "create", key)
                body = await _body(request)
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the body must be an object")
                admitted = await self._admit("CREATE", kind, ns or "", body, None, dry_run=dry_run)
                return web.json_response(self._create(kind, ns, admitted, dry_run=dry_run), status=201)
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
        old = self._db.objects.get((kind, store_ns, name))
        apply = request.content_type == "application/apply-patch+yaml"
        if old is None and not (apply and not status_only):
            raise ApiError(404, "NotFound", f'{kind.key} "{name}" not found')
        if method == "GET":
            assert old is not None
            return self._table(request, kind, [old]) if as_table else web.json_response(old)
        if method == "DELETE":
            grace, dry_run = await self._delete_options(request, old or {}, dry_run)
            return web.json_response(self._delete(kind, store_ns, name, grace, dry_run=dry_run))
        body = await _body(request)
        if old is None:  # server-side apply creates
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be an object")
            body.setdefault("metadata", {})["name"] = name
            admitted = await self._admit("CREATE", kind, store_ns, body, None, dry_run=dry_run)
            return web.json_response(self._create(kind, ns, admitted, dry_run=dry_run), status=201)
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be an object")
            _check_rv(body, old, kind, name)
            new = copy.deepcopy(body)
        else:
            new = apply_patch(request.content_type, old, body)
            _check_rv(body if isinstance(body, dict) else {}, old, kind, name)
        if not status_only:
            new = await self._admit("UPDATE", kind, store_ns, new, old, dry_run=dry_run)
            old = self._db.objects.get((kind, store_ns, name))  # admission awaited: re-read what is stored
            if old is None:
                raise ApiError(404, "NotFound", f'{kind.key} "{name}" not found')
            if (kind.group, kind.plural) == ("", "pods"):
                api_pods.validate_update(old, new)
        return web.json_response(self._write(kind, store_ns, name, new, old, status_only, dry_run=dry_run))

    async def _scale(self, request: web.Request, kind: Kind, ns: str | None, name: str) -> web.StreamResponse:
        """`{deployments,statefulsets,replicasets}/{name}/scale`: GET, PUT or PATCH an autoscaling/v1
        Scale, which reads and writes `spec.replicas` (what `kubectl scale` does)."""
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(request.method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on scale")
        self._count(request, verb, f"{kind.key}/scale")
        old = self._db.objects.get((kind, ns or "", name))
        if old is None:
            raise ApiError(404, "NotFound", f'{kind.key} "{name}" not found')
        if request.method == "GET":
            return web.json_response(api_scale.scale_of(old))
        body = await _body(request)
        current = api_scale.scale_of(old)
        scale = body if request.method == "PUT" else apply_patch(request.content_type, current, body)
        if not isinstance(scale, dict):
            raise ApiError(400, "BadRequest", "the body must be a Scale")
        _check_rv(scale, old, kind, name)
        new = api_scale.scaled(old, scale)
        stored = self._write(
            kind, ns or "", name, new, old, False, dry_run=request.query.get("dryRun") == "All"
        )
        return web.json_response(api_scale.scale_of(stored))

    async def _delete_options(self, request: web.Request, old: Obj, dry_run: bool) -> tuple[int | None, bool]:
        """gracePeriodSeconds and dryRun from the query or a DeleteOptions body; preconditions checked."""
        body = await _body(request) if request.can_read_body else None
        options = body if isinstance(body, dict) else {}
        grace: Any = request.query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        pre = options.get("preconditions") or {}
        meta = old.get("metadata") or {}
        for field_name in ("uid", "resourceVersion"):
            if pre.get(field_name) and pre[field_name] != meta.get(field_name):
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: {field_name}: {pre[field_name]}, "
                    f"object {field_name}: {meta.get(field_name)}",
                )
        dry_run = dry_run or "All" in (options.get("dryRun") or [])
        try:
            return (None if grace is None else int(grace)), dry_run
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid gracePeriodSeconds {grace!r}") from None

    async def _admit(
        self, operation: str, kind: Kind, ns: str, obj: Obj, old: Obj | None, *, dry_run: bool = False
    ) -> Obj:
        """The admission chain over one write, returning what to store: the server's own steps first
        (pod defaults, NamespaceLifecycle when strict, the ServiceAccount plugin, Service defaults), then
        `self.admission` (mutating, then validating), then what the registry does before storing (the
        fields of disabled feature gates dropped) and, for a new pod, the object validation (when strict)
        and the PodSecurity plugin."""
        obj = self._admit_builtin(operation, kind, ns, obj, old)
        if self.admission:
            name = str((obj.get("metadata") or {}).get("name") or "")
            old_copy = copy.deepcopy(old) if old is not None else None
            attrs = AdmissionAttributes(
                operation, kind, ns, name, copy.deepcopy(obj), old_copy, dry_run=dry_run
            )
            for step in self.admission:
                attrs.obj = await step(attrs)
            obj = attrs.obj
        builtin.drop_disabled_fields(kind, obj, builtin.minor_version(self.git_version))  # PrepareForCreate
        if operation == "CREATE" and (kind.group, kind.plural) == ("", "pods"):
            if self.strict:
                validate_pod(obj)
            check_pod_security(obj, self._db.objects.get((self.kinds.by_key("namespaces"), "", ns)))
        return obj

    async def create(self, obj: Obj, namespace: str | None = None) -> Obj:
        """Create through admission, as a POST would (for in-process callers; no request is counted)."""
        kind = self.kinds.by_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if kind is None:
            raise ApiError(404, "NotFound", f"no kind {obj.get('kind')} in {obj.get('apiVersion')}")
        ns = None
        if kind.namespaced:
            ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        admitted = await self._admit("CREATE", kind, ns or "", copy.deepcopy(obj), None)
        return self._create(kind, ns, admitted)

    def _list(self, request: web.Request, kind: Kind, ns: str | None) -> Obj:
        rv = request.query.get("resourceVersion", "")
        if (
            rv not in ("", "0")
            and request.query.get("resourceVersionMatch") == "Exact"
            and (parse_rv(rv) < self._db.compacted)
        ):
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._db.compacted})")
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        items = [copy.deepcopy(o) for _, o in self._db.items(kind, ns, labels, fields)]
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._db.rv)},
            "items": items,
        }

    def _delete_collection(self, request: web.Request, kind: Kind, ns: str | None) -> Obj:
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        doomed = [key for key, _ in self._db.items(kind, ns, labels, fields)]
        gone = [self._delete(*key) for key in doomed if key in self._db.objects]  # GC may have taken some
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._db.rv)},
            "items": gone,
        }


async def _body(request: web.Request) -> Any:
    return parse_body(await request.read(), request.content_type)


def _check_rv(body: Obj, old: Obj, kind: Kind, name: str) -> None:
    rv = (body.get("metadata") or {}).get("resourceVersion")
    if rv and str(rv) != old["metadata"]["resourceVersion"]:
        raise ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind.key} "{name}": the object '
            "has been modified; please apply your changes to the latest version and try again",
        )
