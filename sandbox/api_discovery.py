"""Discovery and OpenAPI documents of the sandbox API server, computed from its kind registry.

- `/api`, `/apis`: the legacy `APIVersions` / `APIGroupList`, or the aggregated `APIGroupDiscoveryList`
  (apidiscovery.k8s.io/v2) when the client asks for it in `Accept` (kubectl 1.30+ does).
- `/api/v1`, `/apis/{g}/{v}`: `APIResourceList` with verbs, short names, categories and subresources.
- `/openapi/v3` and `/openapi/v3/{api/v1|apis/g/v}`: a minimal OpenAPI v3 document per group version:
  one PATCH operation per kind, tagged with `x-kubernetes-group-version-kind` and declaring the
  `fieldValidation` query parameter, and no schemas. That is what kubectl's validation looks for: with
  it kubectl trusts server-side field validation and does not download schemas, so `kubectl apply`
  works with its default `--validate`. kubectl 1.27/1.28 read the same from the protobuf `/openapi/v2`.
  The server accepts `fieldValidation` and does not validate fields (there are no schemas).
"""

from __future__ import annotations

import hashlib

from sandbox.api_kinds import Kind, Obj, Registry

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


SCALABLE = {("apps", "deployments"), ("apps", "statefulsets"), ("apps", "replicasets")}
# the group/version of a subresource's response kind, where it is not the resource's own
RESPONSE_GV = {"binding": ("", "v1"), "exec": ("", "v1"), "log": ("", "v1"), "scale": ("autoscaling", "v1")}


def subresources(kind: Kind) -> list[tuple[str, list[str], str]]:
    """(name, verbs, response kind) of each subresource the server answers for `kind`."""
    out: list[tuple[str, list[str], str]] = []
    if kind.has_status:
        out.append(("status", ["get", "patch", "update"], kind.kind))
    if (kind.group, kind.plural) == ("", "pods"):
        out += [
            ("binding", ["create"], "Binding"),
            ("exec", ["create", "get"], "PodExecOptions"),
            ("log", ["get"], "Pod"),
        ]
    if (kind.group, kind.plural) in SCALABLE:
        out.append(("scale", ["get", "patch", "update"], "Scale"))
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
                                "group": RESPONSE_GV.get(s, (group, version))[0],
                                "version": RESPONSE_GV.get(s, (group, version))[1],
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


# ---------------------------------------------------------------------------------------------- /openapi/v2
# kubectl 1.27 and 1.28 check `fieldValidation` support in the protobuf OpenAPI v2 document (gnostic's
# openapi_v2.Document), not v3: the same minimal content, encoded by hand (field numbers from
# gnostic's OpenAPIv2.proto).
OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"  # kube-openapi's answer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _msg(number: int, payload: bytes | str) -> bytes:
    """One length-delimited field (a string or an embedded message)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _named_any(name: str, yaml_text: str) -> bytes:
    return _msg(1, name) + _msg(2, _msg(2, yaml_text))  # NamedAny{name, value: Any{yaml}}


def openapi_v2(registry: Registry, server_version: str) -> bytes:
    # QueryParameterSubSchema{in, name, type} in NonBodyParameter(3) in Parameter(2) in ParametersItem(1)
    query = _msg(2, "query") + _msg(4, "fieldValidation") + _msg(6, "string")
    parameter = _msg(1, _msg(2, _msg(3, query)))
    responses = _msg(1, _msg(1, "200") + _msg(2, _msg(1, _msg(1, "OK"))))  # Responses{NamedResponseValue}
    paths = b""
    for k in registry.kinds():
        scope = "/namespaces/{namespace}" if k.namespaced else ""
        gvk = f'group: "{k.group}"\nkind: {k.kind}\nversion: {k.version}\n'
        operation = (
            _msg(5, f"patch{k.kind}")
            + _msg(8, parameter)
            + _msg(9, responses)
            + _msg(13, _named_any("x-kubernetes-action", "patch\n"))
            + _msg(13, _named_any("x-kubernetes-group-version-kind", gvk))
        )
        path = f"/{_gv_path(k.group, k.version)}{scope}/{k.plural}/{{name}}"
        paths += _msg(
            2, _msg(1, path) + _msg(2, _msg(8, operation))
        )  # Paths.path: NamedPathItem{PathItem.patch}
    info = _msg(1, "Kubernetes") + _msg(2, server_version)
    return _msg(1, "2.0") + _msg(2, info) + _msg(8, paths)
