"""CustomResourceDefinitions of Fluid's kinds, generated from the same constants `eddy/api.py` uses.

`python -m eddy.crds DIR` writes `DIR/<plural>.yaml`; `python -m eddy.crds` prints all three as one
stream. The checked-in `manifests/crds/*.yaml` must equal this output (a test enforces it), and a test
corpus of good and bad manifests must be judged alike by these schemas and by `eddy.api.parse_object`.

What a schema cannot know: placeholders such as `oss://<oss_bucket>/<dir>` (they pass the CRD and are
reported by `parse_object` and the controller's condition), that `low < high`, a quota of zero, and
duplicate mount names. Everything else (`5Gx` quotas, unknown medium types, bad watermarks, missing
required fields, non-`oss://`/`s3://` mount points) is refused by the API server itself.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from eddy.api import (
    ACCESS_MODES,
    GROUP,
    LOAD_POLICIES,
    MEDIUM_TYPES,
    MOUNT_SCHEMES,
    PLURALS,
    VERSION,
    VOLUME_TYPES,
)

Schema = dict[str, Any]

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
# A watermark is a fraction in (0, 1]: "0.95", "0.7", "1", "1.0".
WATERMARK_PATTERN = r"^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$"
MOUNT_POINT_PATTERN = rf"^({'|'.join(MOUNT_SCHEMES)})://[^/]+(/.*)?$"
ABSOLUTE_PATH_PATTERN = r"^/"
SHORT_NAMES = {"Dataset": [], "JindoRuntime": ["jindo"], "DataLoad": []}


def _string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def _string_map() -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _object(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _encrypt_options() -> Schema:
    ref = _object({"name": _string(minLength=1), "key": _string(minLength=1)}, ["name", "key"])
    item = _object(
        {"name": _string(minLength=1), "valueFrom": _object({"secretKeyRef": ref}, ["secretKeyRef"])},
        ["name", "valueFrom"],
    )
    return {"type": "array", "items": item}


def _conditions() -> Schema:
    item = _object(
        {
            "type": _string(),
            "status": _string(),
            "reason": _string(),
            "message": _string(),
            "lastUpdateTime": _string(),
            "lastProbeTime": _string(),
            "lastTransitionTime": _string(),
        },
        ["type", "status"],
    )
    return {"type": "array", "items": item}


def _status(properties: dict[str, Schema]) -> Schema:
    # Other parts (preloader) add fields; keep the named ones typed and the rest preserved.
    schema = _object({**properties, "conditions": _conditions()})
    return {**schema, "x-kubernetes-preserve-unknown-fields": True}


def dataset_spec() -> Schema:
    mount = _object(
        {
            "mountPoint": _string(pattern=MOUNT_POINT_PATTERN),
            "name": _string(),
            "path": _string(pattern=ABSOLUTE_PATH_PATTERN),
            "options": _string_map(),
            "encryptOptions": _encrypt_options(),
            "readOnly": {"type": "boolean"},
            "shared": {"type": "boolean"},
        },
        ["mountPoint"],
    )
    return _object(
        {
            "mounts": {"type": "array", "minItems": 1, "items": mount},
            "sharedOptions": _string_map(),
            "sharedEncryptOptions": _encrypt_options(),
            "accessModes": {"type": "array", "items": _string(enum=list(ACCESS_MODES))},
        },
        ["mounts"],
    )


def dataset_status() -> Schema:
    cache = _object({"cached": _string(), "cacheCapacity": _string(), "cachedPercentage": _string()})
    return _status({"phase": _string(), "ufsTotal": _string(), "cacheStates": cache})


def runtime_spec() -> Schema:
    level = _object(
        {
            "mediumtype": _string(enum=list(MEDIUM_TYPES)),
            "volumeType": _string(enum=list(VOLUME_TYPES)),
            "path": _string(pattern=ABSOLUTE_PATH_PATTERN),
            # The shape controller-gen gives resource.Quantity.
            "quota": {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "pattern": QUANTITY_PATTERN,
                "x-kubernetes-int-or-string": True,
            },
            "high": _string(pattern=WATERMARK_PATTERN),
            "low": _string(pattern=WATERMARK_PATTERN),
        },
        ["mediumtype", "path", "quota"],
    )
    store = _object({"levels": {"type": "array", "items": level}})
    return _object({"replicas": {"type": "integer", "minimum": 0}, "tieredstore": store})


def runtime_status() -> Schema:
    return _status(
        {
            "masterPhase": _string(),
            "workerPhase": _string(),
            "fusePhase": _string(),
            "workerNumberReady": {"type": "integer"},
            "desiredWorkerNumberScheduled": {"type": "integer"},
        }
    )


def dataload_spec() -> Schema:
    target = _object(
        {"path": _string(pattern=ABSOLUTE_PATH_PATTERN), "replicas": {"type": "integer", "minimum": 1}},
        ["path"],
    )
    return _object(
        {
            "dataset": _object({"name": _string(minLength=1), "namespace": _string()}, ["name"]),
            "loadMetadata": {"type": "boolean"},
            "target": {"type": "array", "items": target},
            "policy": _string(enum=list(LOAD_POLICIES)),
            "schedule": _string(),
            "options": _string_map(),
        },
        ["dataset"],
    )


def dataload_status() -> Schema:
    count = {"type": "integer", "format": "int64"}
    progress = _object(
        {
            **{name: count for name in (
                "totalFiles", "loadedFiles", "totalBytes", "loadedBytes", "totalBlocks", "loadedBlocks",
                "failedBlocks", "alreadyCachedBlocks", "fetchedBlocks",
            )},
            **{name: _string() for name in ("loaded", "percentage", "throughput", "cachedPercentage")},
        }
    )
    progress["x-kubernetes-preserve-unknown-fields"] = True
    times = ("startTime", "completionTime", "lastScheduleTime", "lastSuccessfulTime")
    return _status(
        {"phase": _string(), "duration": _string(), **{t: _string() for t in times}, "progress": progress}
    )


def _column(name: str, path: str, kind: str = "string") -> dict[str, str]:
    return {"name": name, "type": kind, "jsonPath": path}


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    "Dataset": [
        _column("Ufs Total Size", ".status.ufsTotal"),
        _column("Cached", ".status.cacheStates.cached"),
        _column("Cache Capacity", ".status.cacheStates.cacheCapacity"),
        _column("Cached Percentage", ".status.cacheStates.cachedPercentage"),
        _column("Phase", ".status.phase"),
        _AGE,
    ],
    "JindoRuntime": [
        _column("Master Phase", ".status.masterPhase"),
        _column("Worker Phase", ".status.workerPhase"),
        _column("Fuse Phase", ".status.fusePhase"),
        _AGE,
    ],
    "DataLoad": [
        _column("Dataset", ".spec.dataset.name"),
        _column("Phase", ".status.phase"),
        _AGE,
        _column("Duration", ".status.duration"),
    ],
}

_SPECS = {
    "Dataset": (dataset_spec, dataset_status),
    "JindoRuntime": (runtime_spec, runtime_status),
    "DataLoad": (dataload_spec, dataload_status),
}


def object_schema(kind: str) -> Schema:
    """The `openAPIV3Schema` of one kind."""
    spec, status = _SPECS[kind]
    return _object(
        {
            "apiVersion": _string(),
            "kind": _string(),
            "metadata": {"type": "object"},
            "spec": spec(),
            "status": status(),
        },
        ["spec"],
    )


def crd(kind: str) -> dict[str, Any]:
    plural = PLURALS[kind]
    names: dict[str, Any] = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "categories": ["fluid", "eddy"],
    }
    if SHORT_NAMES[kind]:
        names["shortNames"] = SHORT_NAMES[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "eddy"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": names,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "schema": {"openAPIV3Schema": object_schema(kind)},
                }
            ],
        },
    }


def render(kind: str) -> str:
    header = "# Generated by `python -m eddy.crds manifests/crds` from eddy/crds.py; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False)


def jsonschema_for(kind: str) -> Schema:
    """The kind's schema for the `jsonschema` library (Kubernetes' `x-kubernetes-*` markers dropped)."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: convert(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    return dict(convert(copy.deepcopy(object_schema(kind))))


def main(argv: list[str]) -> int:
    if argv:
        out = Path(argv[0])
        out.mkdir(parents=True, exist_ok=True)
        for kind in _SPECS:
            (out / f"{PLURALS[kind]}.yaml").write_text(render(kind))
        return 0
    sys.stdout.write("---\n".join(render(kind) for kind in _SPECS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
