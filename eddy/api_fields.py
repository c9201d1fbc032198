"""Which Fluid fields Eddy acts on, and how: the source of `eddy validate`'s notes and docs/api.md's table.

Paths are normalised: `spec.mounts[].mountPoint` (`[]` = every item). A field present in a manifest is
*acted on* when its path, or an ancestor's, is in `HONOURED[kind]`; a Fluid field that is not is accepted
(the CRD declares it with Fluid's schema) and `eddy validate` notes it as not acted on. `REFUSED` names
the values Fluid's schema accepts that Eddy's refuses (eddy/crds.py's rules), with the reason.
`field_table()` renders every Fluid field as the Markdown table of docs/api.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

HONOURED: dict[str, dict[str, str]] = {
    "Dataset": {
        "spec.mounts[].mountPoint": "object-store prefix `oss://bucket[/dir]` or `s3://bucket[/dir]`",
        "spec.mounts[].name": "mount name (default: last segment of mountPoint)",
        "spec.mounts[].path": "where the mount appears in the dataset (default `/<name>`)",
        "spec.mounts[].options": "endpoint and client options",
        "spec.mounts[].encryptOptions": "credentials read from the named Secret, never copied",
        "spec.mounts[].readOnly": "Fluid's default `false`; Eddy serves read-only in every case",
        "spec.sharedOptions": "merged into every mount's options",
        "spec.sharedEncryptOptions": "merged into every mount's encryptOptions",
        "spec.accessModes": "PV/PVC access modes (default `[ReadOnlyMany]`); a read-write mode gets the "
        "`ReadOnlyCache` condition and a warning Event",
        "spec.nodeAffinity": "worker placement (the StatefulSet's node affinity)",
        "spec.tolerations": "worker placement (added to the worker pods' tolerations)",
    },
    "JindoRuntime": {
        "spec.replicas": "number of cache workers; the scale subresource",
        "spec.tieredstore.levels[].mediumtype": "tier order MEM, SSD, HDD",
        "spec.tieredstore.levels[].path":
            "tier directory; several (comma-separated): one worker volume and store each",
        "spec.tieredstore.levels[].quota": "tier capacity (optional with quotaList)",
        "spec.tieredstore.levels[].quotaList": "one quota per comma-separated path",
        "spec.tieredstore.levels[].volumeType": "`hostPath` (default) or `emptyDir` for the worker volume",
        "spec.tieredstore.levels[].high": "eviction starts above high * quota (default 0.95)",
        "spec.tieredstore.levels[].low": "eviction stops below low * quota (default 0.7)",
        "spec.fuse.image": "the injected sidecar's image (with imageTag)",
        "spec.fuse.imageTag": "the injected sidecar's image tag",
        "spec.fuse.imagePullPolicy": "the injected sidecar's pull policy",
        "spec.fuse.resources": "the injected sidecar's resources (pod annotations win)",
        "spec.fuse.env": "extra environment of the injected sidecar",
        "spec.fuse.args": "extra arguments of the injected sidecar",
        "spec.worker.resources": "worker resources; the memory request is raised to the MEM tier's quota",
        "spec.worker.nodeSelector": "worker placement",
        "spec.worker.tolerations": "worker placement",
        "spec.worker.env": "extra environment of the worker container",
        "spec.worker.labels": "extra labels on the worker pods",
        "spec.worker.podMetadata": "extra labels and annotations on the worker pods",
    },
    "DataLoad": {
        "spec.dataset": "the Dataset to warm (namespace defaults to the DataLoad's)",
        "spec.loadMetadata": "`true` also stores the listing snapshot",
        "spec.target": "paths to warm and cache copies per block",
        "spec.policy": "`Once`, `Cron` (with schedule) or `OnEvent` (like Once; re-run on a Dataset change)",
        "spec.schedule": "5-field cron schedule or `@hourly`-style macro",
        "spec.options": "preloader options",
        "spec.ttlSecondsAfterFinished": "the DataLoad is deleted that long after it completes or fails",
        "spec.runAfter": "waits until the named DataLoad has completed",
    },
}

REFUSED: dict[str, dict[str, str]] = {
    "Dataset": {
        "spec": "required: a Dataset serves its mounts",
        "spec.mounts": "required, at least one: Eddy serves object-store mounts only",
        "spec.mounts[].mountPoint": "schemes other than `oss://` and `s3://` (Eddy reads object stores only)",
        "spec.mounts[].path": "relative paths (Fluid makes them absolute; Eddy asks for the absolute form)",
        "spec.mounts[].encryptOptions[]": "without `valueFrom.secretKeyRef.{name,key}` (nothing to read)",
        "spec.sharedEncryptOptions[]": "without `valueFrom.secretKeyRef.{name,key}` (nothing to read)",
        "spec.accessModes[]": "values that are not Kubernetes access modes",
    },
    "JindoRuntime": {
        "spec": "required",
        "spec.replicas": "negative numbers",
        "spec.tieredstore.levels[].path": "relative paths",
        "spec.tieredstore.levels[].quota": "negative, milli (`m`) and exponent forms; required without "
        "quotaList",
        "spec.tieredstore.levels[].quotaList": "the same forms as quota; not one quota per path",
        "spec.tieredstore.levels": "more than three levels (each medium type at most once)",
        "spec.tieredstore.levels[].high": "values that are not a fraction in (0, 1]; low must be below high",
        "spec.tieredstore.levels[].low": "values that are not a fraction in (0, 1]",
    },
    "DataLoad": {
        "spec": "required",
        "spec.dataset": "required (the Dataset to warm)",
        "spec.target[].path": "relative paths",
        "spec.target[].replicas": "zero or negative",
        "spec.ttlSecondsAfterFinished": "negative",
        "spec.runAfter.kind": "kinds other than DataLoad (Eddy runs no DataBackup, DataMigrate, DataProcess)",
        "spec.schedule": "missing or not a cron expression when policy is Cron",
    },
}

_NO_LOADER_POD = "no loader Job or pod: the preloader service warms the cache through the workers"
_SIDECAR_IN_APP = "the sidecar runs inside the application pod, on its node, with the pod's metadata"
_JINDO = "Jindo configuration; Eddy's worker and sidecar do not read it"
# Why Eddy does not act on a field (the nearest listed ancestor's reason applies).
NOT_ACTED_WHY: dict[str, dict[str, str]] = {
    "Dataset": {
        "spec.owner": "files are served as the sidecar's --uid/--gid (default 0) with allow_other",
        "spec.placement": "the cache lives in worker pods, not on application nodes; nothing to share",
        "spec.runtimes": "status.runtimes records the binding (the controller writes it)",
        "spec.dataRestoreLocation": "Eddy runs no DataBackup, so there is nothing to restore",
        "spec.mounts[].shared": "every mount is visible to every pod of the dataset anyway",
    },
    "JindoRuntime": {
        "spec.master": "no master process: the controller is the control plane",
        "spec.jindoVersion": "workers and sidecars run Eddy's image (spec.fuse.image sets the sidecar's)",
        "spec.properties": _JINDO, "spec.hadoopConfig": _JINDO, "spec.logConfig": _JINDO,
        "spec.secret": _JINDO, "spec.user": _JINDO, "spec.runAs": "Eddy's pods run as set in its manifests",
        "spec.networkmode": "workers use the pod network behind a headless Service",
        "spec.cleanCachePolicy": "a sidecar's mount ends with its pod",
        "spec.volumes": "no extra volumes for Jindo components",
        "spec.imagePullSecrets": "set on Eddy's service account instead",
        "spec.labels": "worker pods take spec.worker.labels/podMetadata",
        "spec.podMetadata": "worker pods take spec.worker.labels/podMetadata",
        "spec.management": "no Jindo management", "spec.tieredstore.levels[].volumeSource":
        "tiers are hostPath or emptyDir (volumeType)",
        "spec.fuse": _SIDECAR_IN_APP,
        "spec.worker": "not used for Eddy's worker StatefulSet",
        "spec.worker.replicas": "spec.replicas counts the workers",
        "spec.worker.ports": "the workers' port is the controller's --worker-port",
    },
    "DataLoad": {
        "spec": _NO_LOADER_POD,
        "spec.runAfter.affinityStrategy": "no node affinity between operations (blocks go to their owners)",
        "spec.runAfter.apiVersion": "DataLoads of data.fluid.io/v1alpha1 only",
    },
}

# Standard Kubernetes types inside Fluid's schema: one table row each, not one per nested field.
K8S_TYPES = frozenset({
    "tolerations", "nodeAffinity", "affinity", "resources", "env", "volumes", "volumeMounts",
    "imagePullSecrets", "ports", "volumeSource", "nodeSelector", "labels", "annotations",
    "podMetadata", "properties", "logConfig", "options", "sharedOptions", "encryptOptions",
    "sharedEncryptOptions",
})


def normalise(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += "[]"
        else:
            text += f".{part}" if text else part
    return text


def _acted(kind: str, path: str) -> bool:
    honoured = HONOURED[kind]
    return any(path == h or path.startswith(h + ".") or path.startswith(h + "[]") for h in honoured)


def _leads_to_honoured(kind: str, path: str) -> bool:
    return any(h.startswith(path + ".") or h.startswith(path + "[]") for h in HONOURED[kind])


def unacted(kind: str, doc: Mapping[str, Any]) -> list[str]:
    """Field paths (with indexes) present in `doc`'s spec that Eddy accepts but does not act on."""
    out: list[str] = []

    def walk(value: Any, parts: list[str | int], shown: str) -> None:
        norm = normalise(parts)
        if _acted(kind, norm):
            return
        if isinstance(value, Mapping) and _leads_to_honoured(kind, norm):
            for key, sub in value.items():
                walk(sub, [*parts, str(key)], f"{shown}.{key}")
        elif isinstance(value, list) and _leads_to_honoured(kind, norm):
            for i, item in enumerate(value):
                walk(item, [*parts, i], f"{shown}[{i}]")
        else:
            out.append(shown)

    spec = doc.get("spec")
    if isinstance(spec, Mapping):
        for key, sub in spec.items():
            walk(sub, ["spec", str(key)], f"spec.{key}")
    return out


# ----------------------------------------------------------------------------------- the docs table
def _type_of(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = str(node.get("type", ""))
    if kind == "array" and isinstance(node.get("items"), Mapping):
        return f"[]{_type_of(node['items'])}"
    if kind == "object" and isinstance(node.get("additionalProperties"), Mapping):
        return f"map[{_type_of(node['additionalProperties'])}]"
    return kind


def fluid_fields(kind: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every spec field of Fluid's schema, down to standard Kubernetes types (not into them)."""
    from eddy.api_schema import fluid_crd_facts

    def walk(node: Mapping[str, Any], path: str, name: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
        yield path, node
        if name in K8S_TYPES:
            return
        target = node.get("items") if node.get("type") == "array" else node
        suffix = "[]" if node.get("type") == "array" else ""
        if isinstance(target, Mapping):
            for key, sub in sorted((target.get("properties") or {}).items()):
                yield from walk(sub, f"{path}{suffix}.{key}", key)

    spec = fluid_crd_facts(kind)["schema"]["properties"]["spec"]
    for key, sub in sorted(spec["properties"].items()):
        yield from walk(sub, f"spec.{key}", key)


def field_status(kind: str, path: str) -> tuple[str, str]:
    """(`honoured` | `accepted, not acted on` | `container`, how or why) for one Fluid field path."""
    refused = REFUSED[kind].get(path) or REFUSED[kind].get(path + "[]")
    if path in HONOURED[kind]:
        how = HONOURED[kind][path]
        return "honoured", how + (f"; refused: {refused}" if refused else "")
    if _acted(kind, path):
        return "honoured", "as part of its parent"
    if _leads_to_honoured(kind, path):
        return "partly", "see its fields" + (f"; refused: {refused}" if refused else "")
    why = _why(kind, path)
    return "accepted, not acted on", why + (f"; refused: {refused}" if refused else "")


def _why(kind: str, path: str) -> str:
    reasons = NOT_ACTED_WHY[kind]
    probe = path
    while probe:
        if probe in reasons:
            return reasons[probe]
        probe = probe[: max(probe.rfind("."), probe.rfind("[]"), 0)] if probe.rfind(".") > 0 else ""
    return "`eddy validate` notes it"


def field_table() -> str:
    lines: list[str] = []
    for kind in HONOURED:
        lines += [f"### {kind}", "", "| Field | Type | Eddy | How / why |", "|---|---|---|---|"]
        for path, node in fluid_fields(kind):
            status, how = field_status(kind, path)
            lines.append(f"| `{path}` | {_type_of(node)} | {status} | {how} |")
        lines.append("")
    return "\n".join(lines)
