"""Eddy's CustomResourceDefinitions: Fluid's v1alpha1 schemas plus Eddy's stricter rules.

The base is Fluid's own `openAPIV3Schema` of Dataset, JindoRuntime and DataLoad
(`eddy/schemas/fluid-v1alpha1.json`, see eddy/api_schema.py), so every Fluid field is declared with
Fluid's type, default, required-ness and description (`kubectl explain dataset.spec.nodeAffinity`), and
Fluid's short names, printer columns (the `-o wide` ones too) and the JindoRuntime scale subresource.
`EDDY_RULES` below tightens what Eddy needs to serve a dataset: object-store mount points, absolute
paths, quantities and watermarks Eddy can read, and CEL rules (`low < high`, a Cron DataLoad needs a
schedule, a tier needs `quota` or `quotaList`). `object_schema(kind)` is also what `parse_object` (and
so `eddy validate`) checks a manifest against, so the CRDs and the validator cannot disagree.

`python -m eddy.crds DIR` writes `DIR/<plural>.yaml`; `python -m eddy.crds` prints all three as one
stream. The checked-in `manifests/crds/*.yaml` must equal this output (a test enforces it).

What a schema cannot know, left to `parse_object` and the controller's condition: placeholders such as
`oss://<oss_bucket>/<dir>`, a quota of zero, duplicate mount names or paths, a medium type given twice,
as many quotas in `quotaList` as paths in `path`.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from eddy.api import ACCESS_MODES, GROUP, MOUNT_SCHEMES, PLURALS, VERSION
from eddy.api_schema import fluid_crd_facts, register

Schema = dict[str, Any]

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
_ONE_QUANTITY = r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?"
QUANTITY_LIST_PATTERN = rf"^{_ONE_QUANTITY}(,{_ONE_QUANTITY})+$"
# A watermark is a fraction in (0, 1]: "0.95", "0.7", "1", "1.0".
WATERMARK_PATTERN = r"^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$"
MOUNT_POINT_PATTERN = rf"^({'|'.join(MOUNT_SCHEMES)})://[^/]+(/.*)?$"
ABSOLUTE_PATH_PATTERN = r"^/"
ABSOLUTE_PATHS_PATTERN = r"^/[^,]*(,/[^,]*)*$"

# Marks Eddy's CRDs, so Eddy's controller and webhook can tell them from Fluid's (eddy/fluidcheck.py).
EDDY_CRD_LABEL = "app.kubernetes.io/part-of"
EDDY_CRD_LABEL_VALUE = "eddy"
EDDY_CRD_ANNOTATION = "eddy.fluid.io/served-by"

# Columns Eddy adds after Fluid's own (only with `-o wide`).
_EXTRA_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "Dataset": [],
    "JindoRuntime": [],
    "DataLoad": [],
}


def _at(schema: Schema, path: str) -> Schema:
    """The sub-schema at `spec.mounts[].path` style paths (`[]` = the array's items)."""
    node = schema
    for part in path.split("."):
        items = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if items:
            node = node["items"]
    return node


def _rule(rule: str, message: str) -> dict[str, str]:
    # No `fieldPath`/`reason`: API servers before 1.28 do not know them (the rule's object is the path).
    return {"rule": rule, "message": message}


def _dataset_rules(s: Schema) -> None:
    s["required"] = ["spec"]
    spec = _at(s, "spec")
    spec["required"] = ["mounts"]
    spec["x-kubernetes-validations"] = [_rule(
        "!has(self.mounts) || size(self.mounts) <= 1 || self.mounts.all(m, !has(m.path) || m.path != '/')",
        'path "/" is only allowed when the dataset has one mount',
    )]
    _at(s, "spec.mounts[].mountPoint")["pattern"] = MOUNT_POINT_PATTERN
    _at(s, "spec.mounts[].path")["pattern"] = ABSOLUTE_PATH_PATTERN
    _at(s, "spec.accessModes[]")["enum"] = list(ACCESS_MODES)
    for options in ("spec.mounts[].encryptOptions[]", "spec.sharedEncryptOptions[]"):
        item = _at(s, options)
        item["required"] = ["name", "valueFrom"]
        item["properties"]["name"]["minLength"] = 1
        item["properties"]["valueFrom"]["required"] = ["secretKeyRef"]
        ref = _at(item, "valueFrom.secretKeyRef")
        ref["required"] = ["name", "key"]
        ref["properties"]["name"]["minLength"] = 1
        ref["properties"]["key"]["minLength"] = 1


def _runtime_rules(s: Schema) -> None:
    s["required"] = ["spec"]
    _at(s, "spec.replicas")["minimum"] = 0
    level = _at(s, "spec.tieredstore.levels[]")
    props = level["properties"]
    props["path"]["pattern"] = ABSOLUTE_PATHS_PATTERN
    props["quota"]["pattern"] = QUANTITY_PATTERN
    props["quotaList"]["pattern"] = QUANTITY_LIST_PATTERN
    props["high"]["pattern"] = WATERMARK_PATTERN
    props["low"]["pattern"] = WATERMARK_PATTERN
    level["required"] = ["mediumtype", "path"]
    # Bounds keep the CEL rules' estimated cost within the API server's budget; each medium type
    # appears at most once, so three levels at most.
    _at(s, "spec.tieredstore.levels")["maxItems"] = 3
    props["path"]["maxLength"] = 4096
    props["quotaList"]["maxLength"] = 1024
    level["x-kubernetes-validations"] = [
        _rule("has(self.quota) || has(self.quotaList)", "a tier needs quota (or quotaList)"),
        _rule(
            "!has(self.quotaList) || size(self.quotaList.split(',')) == size(self.path.split(','))",
            "quotaList needs one quota per comma-separated path",
        ),
        _rule(
            "double(has(self.low) ? self.low : '0.7') < double(has(self.high) ? self.high : '0.95')",
            "low must be below high (defaults: low 0.7, high 0.95)",
        ),
    ]


def _dataload_rules(s: Schema) -> None:
    s["required"] = ["spec"]
    spec = _at(s, "spec")
    spec["required"] = ["dataset"]
    _at(s, "spec.dataset.name")["minLength"] = 1
    _at(s, "spec.target[].path")["pattern"] = ABSOLUTE_PATH_PATTERN
    _at(s, "spec.target[].replicas")["minimum"] = 1
    _at(s, "spec.ttlSecondsAfterFinished")["minimum"] = 0
    _at(s, "spec.runAfter.kind")["enum"] = ["DataLoad"]  # the only operation Eddy runs
    spec["x-kubernetes-validations"] = [_rule(
        "!has(self.policy) || self.policy != 'Cron' || (has(self.schedule) && size(self.schedule) > 0)",
        'a Cron DataLoad needs a schedule (e.g. "0 * * * *")',
    )]


EDDY_RULES: dict[str, Callable[[Schema], None]] = {
    "Dataset": _dataset_rules,
    "JindoRuntime": _runtime_rules,
    "DataLoad": _dataload_rules,
}

# Status fields Eddy writes beyond Fluid's (the preloader's progress and times); the rest of the status
# is Fluid's, typed, and unknown status fields are kept.
_EDDY_STATUS: dict[str, Schema] = {
    "Dataset": {},
    "JindoRuntime": {},
    "DataLoad": {
        **{t: {"type": "string"} for t in ("startTime", "completionTime")},
        "progress": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "description": "Eddy: the preloader's progress (files, bytes, blocks, throughput)."},
    },
}


def _status(kind: str, status: Schema) -> Schema:
    # Eddy's writers patch parts of the status; Fluid's top-level required list would refuse that.
    status.pop("required", None)
    status.setdefault("properties", {}).update(copy.deepcopy(_EDDY_STATUS[kind]))
    status["x-kubernetes-preserve-unknown-fields"] = True
    return status


@functools.cache
def _object_schema(kind: str) -> Schema:
    schema: Schema = fluid_crd_facts(kind)["schema"]
    EDDY_RULES[kind](schema)
    schema["properties"]["status"] = _status(kind, schema["properties"]["status"])
    register(kind, schema)
    return schema


def object_schema(kind: str) -> Schema:
    """The `openAPIV3Schema` of one kind (a copy)."""
    return copy.deepcopy(_object_schema(kind))


def register_all() -> None:
    for kind in PLURALS:
        _object_schema(kind)


def printer_columns(kind: str) -> list[dict[str, Any]]:
    return [*fluid_crd_facts(kind)["columns"], *_EXTRA_COLUMNS[kind]]


PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {kind: printer_columns(kind) for kind in PLURALS}


def crd(kind: str) -> dict[str, Any]:
    facts = fluid_crd_facts(kind)
    names = facts["names"]
    names["categories"] = [*names.get("categories", []), "eddy"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURALS[kind]}.{GROUP}",
            "labels": {EDDY_CRD_LABEL: EDDY_CRD_LABEL_VALUE},
            "annotations": {EDDY_CRD_ANNOTATION: "eddy"},
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
                    "subresources": facts["subresources"],
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "schema": {"openAPIV3Schema": object_schema(kind)},
                }
            ],
        },
    }


def render(kind: str) -> str:
    header = "# Generated by `python -m eddy.crds manifests/crds` from eddy/crds.py; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    if argv:
        out = Path(argv[0])
        out.mkdir(parents=True, exist_ok=True)
        for kind, plural in PLURALS.items():
            (out / f"{plural}.yaml").write_text(render(kind))
        return 0
    sys.stdout.write("---\n".join(render(kind) for kind in PLURALS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
