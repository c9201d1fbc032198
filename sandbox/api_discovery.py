"""Discovery and OpenAPI documents of the sandbox API server, computed from its kind registry.

- `/api`, `/apis`: the legacy `APIVersions` / `APIGroupList`, or the aggregated `APIGroupDiscoveryList`
  (apidiscovery.k8s.io/v2) when the client asks for it in `Accept` (kubectl 1.30+ does).
- `/api/v1`, `/apis/{g}/{v}`: `APIResourceList` with verbs, short names, categories and subresources.
- `/openapi/v3` and `/openapi/v3/{api/v1|apis/g/v}`: a minimal OpenAPI v3 document per group version:
  one PATCH operation per kind, tagged with `x-kubernetes-group-version-kind` and declaring the
  `fieldValidation` query parameter, and no schemas. That is what kubectl's validation looks for: with
  it kubectl trusts server-side field validation and does not download schemas (`/openapi/v2` is not
  served), so `kubectl apply` works with its default `--validate`. The server accepts
  `fieldValidation` and does not validate fields (there are no schemas).
"""

from __future__ import annotations

import hashlib

from sandbox.api_kinds import Kind, Obj, Registry

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def subresources(kind: Kind) -> list[tuple[str, list[str], str]]:
    """(name, verbs, response kind) of each subresource the server answers for `kind`."""
    out: list[tuple[str, list[str], str]] = []
    if kind.has_status:
        out.append(("status", ["get", "patch", "update"], kind.kind))
    if (kind.group, kind.plural) == ("", "pods"):
        out += [("binding", ["create"], "Binding"), ("log", ["get"], "Pod")]
    return out


def wants_aggregated(accept: str) -> bool:
    return "as=APIGroupDiscoveryList" in accept and "v=v2;" in accept.replace(" ", "") + ";"


def api_versions(server_address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str, versions: list[str]) -> Obj:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(registry: Registry) -> Obj:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g, vs) for g, vs in registry.groups().items() if g],
    }


def api_group(registry: Registry, group: str) -> Obj | None:
    versions = registry.groups().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, versions)}


def api_resource_list(registry: Registry, group: str, version: str) -> Obj | None:
    kinds = registry.in_group_version(group, version)
    if not kinds:
        return None
    resources: list[Obj] = []
    for k in kinds:
        entry: Obj = {
            "name": k.plural,
            "singularName": k.singular_name,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": VERBS,
        }
        if k.short_names:
            entry["shortNames"] = list(k.short_names)
        if k.categories:
            entry["categories"] = list(k.categories)
        resources.append(entry)
        for sub, verbs, response in subresources(k):
            resources.append(
                {
                    "name": f"{k.plural}/{sub}",
                    "singularName": "",
                    "namespaced": k.namespaced,
                    "kind": response,
                    "verbs": verbs,
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": kinds[0].api_version,
        "resources": resources,
    }


def aggregated(registry: Registry, core: bool) -> Obj:
    """The aggregated discovery document for `/api` (core) or `/apis` (every named group)."""
    items: list[Obj] = []
    for group, versions in registry.groups().items():
        if (group == "") != core:
            continue
        entries = []
        for version in versions:
            resources = []
            for k in registry.in_group_version(group, version):
                gvk = {"group": group, "version": version, "kind": k.kind}
                res: Obj = {
                    "resource": k.plural,
                    "responseKind": gvk,
                    "singularResource": k.singular_name,
                    "scope": "Namespaced" if k.namespaced else "Cluster",
                    "verbs": VERBS,
                }
                if k.short_names:
                    res["shortNames"] = list(k.short_names)
                if k.categories:
                    res["categories"] = list(k.categories)
                subs = subresources(k)
                if subs:
                    res["subresources"] = [
                        {
                            "subresource": s,
                            "verbs": verbs,
                            "responseKind": {
                                "group": "" if s == "binding" else group,
                                "version": "v1" if s == "binding" else version,
                                "kind": kind,
                            },
                        }
                        for s, verbs, kind in subs
                    ]
                resources.append(res)
            entries.append({"version": version, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": entries})
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root(registry: Registry, version: str) -> Obj:
    """`/openapi/v3`: where each group version's document is (the hash changes with the registry)."""
    paths: Obj = {}
    for group, versions in registry.groups().items():
        for v in versions:
            digest = hashlib.sha256(f"{registry.generation}/{group}/{v}/{version}".encode()).hexdigest()
            paths[_gv_path(group, v)] = {
                "serverRelativeURL": f"/openapi/v3/{_gv_path(group, v)}?hash={digest}"
            }
    return {"paths": paths}


def openapi_group_version(registry: Registry, group: str, version: str, server_version: str) -> Obj | None:
    kinds = registry.in_group_version(group, version)
    if not kinds:
        return None
    field_validation = {
        "name": "fieldValidation",
        "in": "query",
        "schema": {"type": "string", "uniqueItems": True},
        "description": "accepted; the sandbox has no schemas, so nothing is rejected",
    }
    paths: Obj = {}
    for k in kinds:
        prefix = "/" + _gv_path(group, version)
        scope = "/namespaces/{namespace}" if k.namespaced else ""
        gvk = {"group": group, "version": version, "kind": k.kind}
        operation = {
            "operationId": f"patch{k.kind}",
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [field_validation],
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"{prefix}{scope}/{k.plural}/{{name}}"] = {"patch": operation}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": server_version},
        "paths": paths,
        "components": {"schemas": {}},
    }
