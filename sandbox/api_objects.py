"""The object semantics of the sandbox API server (sandbox/apiserver.py), without HTTP: what a write
does to the store and what kube-apiserver and kube-controller-manager do around it.

Creates fill metadata and initial status; updates keep spec/status apart and count generations; a
delete honours finalizers, gives a pod on a node its grace period, terminates a namespace (its objects
go, then it), and garbage-collects dependents; a stored CRD registers its kinds and a deleted one takes
its objects and kinds along; every new namespace gets its `default` ServiceAccount and the
`kube-root-ca.crt` ConfigMap (unless `bare`); pods are defaulted and pass the ServiceAccount admission
plugin, Services get a ClusterIP, before any external admission step.
"""

from __future__ import annotations

import copy
import random
import string
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox import api_pods, builtin
from sandbox.api_kinds import ApiError, Kind, Obj, Registry, now
from sandbox.api_store import Change, Store
from sandbox.api_tls import make_authority

CRD_PATH = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


class Objects:
    """The store with kube-apiserver's rules. See KubeApiServer for `strict`, `bare`, `service_cidr`."""

    git_version = "v1.30.0"  # the Kubernetes version modelled (feature gates follow it)

    def __init__(
        self, kinds: Iterable[Kind], history_limit: int, *, strict: bool, bare: bool, service_cidr: str
    ) -> None:
        self.strict = strict
        self.bare = bare
        self.service_cidr = service_cidr  # ClusterIPs are allocated from here
        self.gc = True  # delete dependents whose owners are all gone
        self.kinds = Registry(kinds)
        self.authority = make_authority()
        self.ca_pem = self.authority.pem
        self._db = Store(history_limit)
        for ns in builtin.SYSTEM_NAMESPACES if not bare else ():
            self.put(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns},
                    "status": {"phase": "Active"},
                }
            )

    # ------------------------------------------------------------------ direct access for tests
    @property
    def resource_version(self) -> int:
        return self._db.rv

    @property
    def history_limit(self) -> int:
        return self._db.history_limit

    @history_limit.setter
    def history_limit(self, value: int) -> None:
        self._db.history_limit = value

    def put(self, obj: Obj) -> Obj:
        """Seed or overwrite an object as is (status included), with an ADDED/MODIFIED event."""
        kind = self.kinds.by_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if kind is None:
            raise ValueError(f"unknown apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')}")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ns = (meta.get("namespace") or "default") if kind.namespaced else ""
        if kind.namespaced:
            meta["namespace"] = ns
        old = self._db.objects.get((kind, ns, meta["name"]))
        if old is None:
            self._fill_new_meta(meta)
        else:
            for k in ("uid", "creationTimestamp"):
                meta.setdefault(k, old["metadata"].get(k))
            generation = old["metadata"].get("generation", 1)
            if obj.get("spec") != old.get("spec"):  # as the API server does: a new spec is a new generation
                generation += 1
            meta.setdefault("generation", generation)
        return copy.deepcopy(self._commit(kind, ns, meta["name"], obj, old))

    def get_object(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        kind = self.kinds.by_key(resource)
        obj = self._db.objects.get((kind, namespace or "" if kind.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        kind = self.kinds.by_key(resource)
        return [copy.deepcopy(o) for _, o in self._db.items(kind, namespace)]

    def remove(self, resource: str, namespace: str | None, name: str) -> None:
        """Delete an object outright (ignoring finalizers and grace periods), with a DELETED event."""
        kind = self.kinds.by_key(resource)
        ns = namespace or "" if kind.namespaced else ""
        if (kind, ns, name) in self._db.objects:
            self._remove(kind, ns, name)

    def compact(self) -> None:
        """Forget all history: every watch/list from an older resourceVersion now gets 410 Gone."""
        self._db.compact()

    def close_watches(self) -> None:
        """End every open watch stream (clients see the stream end and re-watch)."""
        self._db.close_watches()

    # ------------------------------------------------------------------ changes
    def _fill_new_meta(self, meta: Obj) -> None:
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta.setdefault("generation", 1)

    def _commit(self, kind: Kind, ns: str, name: str, obj: Obj, old: Obj | None) -> Obj:
        builtin.normalize(kind, obj)
        if kind.path == CRD_PATH:
            self._register_crd(obj, old)
        db = self._db
        db.rv += 1
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        obj["metadata"]["resourceVersion"] = str(db.rv)
        db.objects[(kind, ns, name)] = obj
        db.record(Change(db.rv, kind, "ADDED" if old is None else "MODIFIED", obj, old))
        if old is None and (kind.group, kind.plural) == ("", "namespaces") and not self.bare:
            self._fill_namespace(name)
        return obj

    def _fill_namespace(self, ns: str) -> None:
        for obj in builtin.namespace_objects(ns, self.ca_pem):
            kind = self.kinds.by_kind(obj["apiVersion"], obj["kind"])
            if kind is not None and (kind, ns, obj["metadata"]["name"]) not in self._db.objects:
                self.put(obj)

    def _register_crd(self, crd: Obj, old: Obj | None) -> None:
        """Validate a CRD being stored, register its kinds (replacing those of its previous spec) and
        give it the status the apiextensions controllers would."""
        builtin.validate_crd(crd)
        new_kinds = builtin.crd_kinds(crd)
        for kind in builtin.crd_kinds(old) if old is not None else []:
            if kind not in new_kinds:
                self._drop_kind(kind)
        for kind in new_kinds:
            self.kinds.register(kind)
        crd["status"] = builtin.crd_status(crd, (old or {}).get("status"))

    def _drop_kind(self, kind: Kind) -> None:
        """A CRD (version) is gone: its objects go with it, then its kind (a built-in kind keeps
        serving with its built-in metadata)."""
        for k, ns, name in [key for key in self._db.objects if key[0] == kind]:
            self._remove(k, ns, name)
        if self.kinds.unregister(kind.path):
            self._db.close_watches(kind)

    def _remove(self, kind: Kind, ns: str, name: str) -> Obj:
        db = self._db
        old = db.objects.pop((kind, ns, name))
        db.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(db.rv)
        db.record(Change(db.rv, kind, "DELETED", gone, old))
        if kind.path == CRD_PATH:
            for crd_kind in builtin.crd_kinds(old):
                self._drop_kind(crd_kind)
        if self.gc:
            self._collect_dependents(old["metadata"].get("uid"))
        if ns:
            self._finish_namespace(ns)
        return gone

    def _collect_dependents(self, uid: str | None) -> None:
        if not uid:
            return
        live = {o["metadata"].get("uid") for o in self._db.objects.values()}
        for (kind, ns, name), obj in list(self._db.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            orphaned = any(r.get("uid") == uid for r in refs) and not any(r.get("uid") in live for r in refs)
            if orphaned and (kind, ns, name) in self._db.objects:
                self._delete(kind, ns, name)

    def _delete(
        self, kind: Kind, ns: str, name: str, grace: int | None = None, *, dry_run: bool = False
    ) -> Obj:
        """DELETE as kube-apiserver does it: a pod on a node gets a grace period (deletionTimestamp in
        the future) and stays until deleted again with 0; an object with finalizers gets a
        deletionTimestamp; a namespace terminates (its objects are deleted, then it goes)."""
        obj = self._db.objects[(kind, ns, name)]
        meta = obj["metadata"]
        is_pod = (kind.group, kind.plural) == ("", "pods")
        if (kind.group, kind.plural) == ("", "namespaces"):
            return self._terminate_namespace(obj, dry_run)
        period = api_pods.grace_period(obj, grace) if is_pod else 0
        if meta.get("deletionTimestamp"):
            current = meta.get("deletionGracePeriodSeconds")
            if not is_pod or current is None or period >= int(current):
                return copy.deepcopy(obj)
        if period == 0 and not meta.get("finalizers"):
            return copy.deepcopy(obj) if dry_run else self._remove(kind, ns, name)
        new = copy.deepcopy(obj)
        when = datetime.now(UTC) + timedelta(seconds=period)
        new["metadata"]["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        new["metadata"]["deletionGracePeriodSeconds"] = period
        if dry_run:
            return new
        return copy.deepcopy(self._commit(kind, ns, name, new, obj))

    def _terminate_namespace(self, obj: Obj, dry_run: bool) -> Obj:
        name = obj["metadata"]["name"]
        if dry_run or obj["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(obj)
        namespaces = self.kinds.by_key("namespaces")
        new = copy.deepcopy(obj)
        new["metadata"]["deletionTimestamp"] = now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new["status"] = {**(new.get("status") or {}), "phase": "Terminating"}
        result = copy.deepcopy(self._commit(namespaces, "", name, new, obj))
        for key in [k for k in self._db.objects if k[1] == name and k[0].namespaced]:
            if key in self._db.objects:
                self._delete(*key)
        self._finish_namespace(name)
        return result

    def _finish_namespace(self, ns: str) -> None:
        namespaces = self.kinds.by_key("namespaces")
        obj = self._db.objects.get((namespaces, "", ns))
        if obj is None or not obj["metadata"].get("deletionTimestamp") or obj["metadata"].get("finalizers"):
            return
        if not any(key[1] == ns and key[0].namespaced for key in self._db.objects):
            self._remove(namespaces, "", ns)

    def _write(
        self, kind: Kind, ns: str, name: str, new: Obj, old: Obj, status_only: bool, *, dry_run: bool = False
    ) -> Obj:
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
        builtin.normalize(kind, new)
        if new == old or dry_run:
            return copy.deepcopy(new)  # a no-op write changes nothing, not even the resourceVersion
        meta = new["metadata"]
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
        ):
            self._db.objects[(kind, ns, name)] = new
            return self._remove(kind, ns, name)
        result = copy.deepcopy(self._commit(kind, ns, name, new, old))
        if kind.plural == "namespaces" and not kind.group:
            self._finish_namespace(name)
        return result

    def _admit_builtin(self, operation: str, kind: Kind, ns: str, obj: Obj, old: Obj | None) -> Obj:
        if operation != "CREATE":
            if (kind.group, kind.plural) == ("", "services") and old is not None:
                for key in ("clusterIP", "clusterIPs"):  # immutable once allocated
                    if key in (old.get("spec") or {}):
                        obj.setdefault("spec", {})[key] = old["spec"][key]
            return obj
        if self.strict and kind.namespaced:
            namespace = self._db.objects.get((self.kinds.by_key("namespaces"), "", ns))
            if namespace is None:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
            if namespace["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    "Forbidden",
                    f"unable to create new content in namespace {ns} because it is being terminated",
                )
        if (kind.group, kind.plural) == ("", "services"):
            taken = {str(o.get("spec", {}).get("clusterIP")) for _, o in self._db.items(kind, None)}
            return builtin.default_service(copy.deepcopy(obj), taken, self.service_cidr)
        if (kind.group, kind.plural) != ("", "pods"):
            return obj
        obj = builtin.default_pod(copy.deepcopy(obj))
        accounts = self.kinds.by_key("serviceaccounts")
        return builtin.admit_service_account(
            obj, ns, lambda n, a: self._db.objects.get((accounts, n, a)), require=self.strict
        )

    def _create(self, kind: Kind, ns: str | None, body: Any, *, dry_run: bool = False) -> Obj:
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
        else:
            meta.pop("namespace", None)
        store_ns = ns or "" if kind.namespaced else ""
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            while True:
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                name = meta["generateName"] + suffix
                if (kind, store_ns, name) not in self._db.objects:
                    break
            meta["name"] = name
        if (kind, store_ns, meta["name"]) in self._db.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.key} "{meta["name"]}" already exists')
        for k in ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp"):
            meta.pop(k, None)
        if kind.has_status:
            obj.pop("status", None)
        if kind.kind in builtin.INITIAL_STATUS and not kind.group:
            obj["status"] = copy.deepcopy(builtin.INITIAL_STATUS[kind.kind])
        self._fill_new_meta(meta)
        if dry_run:
            if kind.path == CRD_PATH:
                builtin.validate_crd(obj)
            builtin.normalize(kind, obj)
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            return obj
        return copy.deepcopy(self._commit(kind, store_ns, meta["name"], obj, None))


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
