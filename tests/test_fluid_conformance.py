"""Conformance with Fluid's published v1alpha1 CRDs (tests/data/fluid/, see its README).

From Fluid's own `openAPIV3Schema` of Dataset, JindoRuntime and DataLoad this generates, for every
declared field, a manifest that sets it (each enum value; both forms of int-or-string) on a minimal
valid object, and checks:

- Fluid's schema accepts it (the generator is right);
- Eddy's checked-in CRD (manifests/crds/, strict unknown fields + its CEL rules) accepts it, unless the
  value is one Eddy refuses by design (`eddy.api_fields.REFUSED` names the field, and docs/api.md says
  why), in which case Eddy's own value for that field (`EDDY_VALUES`) is accepted instead;
- `eddy validate` (its `check_file`, on one file holding every generated manifest) agrees with the CRD
  on every manifest;
- a field Fluid does not declare, at every object of the schema, and a value of the wrong type, at
  every field, are refused by Fluid's schema, Eddy's CRD and `eddy validate` alike.

The schema check is written here, independently of eddy/api_schema.py: the structural schema as JSON
Schema, with `additionalProperties: false` on every object that does not preserve unknown fields.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from eddy.api_cel import cel_errors
from eddy.api_fields import REFUSED
from eddy_cli.validate import check_file

ROOT = Path(__file__).resolve().parents[1]
FLUID = ROOT / "tests" / "data" / "fluid"
FILES = {"Dataset": "datasets", "JindoRuntime": "jindoruntimes", "DataLoad": "dataloads"}
Doc = dict[str, Any]
Parts = tuple[str | int, ...]

BASE: dict[str, Doc] = {
    "Dataset": {"spec": {"mounts": [{"mountPoint": "oss://bucket/dir", "name": "demo",
                                     "options": {"fs.oss.endpoint": "oss.example.com"}}]}},
    "JindoRuntime": {"spec": {"replicas": 1, "tieredstore": {"levels": [
        {"mediumtype": "MEM", "path": "/dev/shm", "quota": "1Gi", "volumeType": "emptyDir"}]}}},
    "DataLoad": {"spec": {"dataset": {"name": "demo"}, "schedule": "0 * * * *"}},
}



class Siblings(dict[str, Any]):
    """Several fields that go together, merged into the field's parent object."""


# Values Eddy reads and needs in its own form, where Fluid's schema allows more (REFUSED says what).
EDDY_VALUES: dict[str, list[Any]] = {
    "spec.mounts[].mountPoint": ["oss://bucket/x", "s3://bucket"],
    "spec.mounts[].path": ["/x"],
    "spec.accessModes[]": ["ReadOnlyMany", "ReadWriteMany"],
    "spec.tieredstore.levels": [[{"mediumtype": "SSD", "path": "/mnt/ssd", "quota": "1Gi"}]],
    "spec.tieredstore.levels[]": [{"mediumtype": "HDD", "path": "/mnt/h1,/mnt/h2", "quotaList": "1Gi,2Gi"}],
    "spec.tieredstore.levels[].path": ["/mnt/a", Siblings(path="/mnt/a,/mnt/b", quotaList="1Gi,2Gi")],
    "spec.tieredstore.levels[].quota": ["10Gi", 1073741824, "1.5Gi", "10G"],
    "spec.tieredstore.levels[].quotaList": [Siblings(path="/mnt/a,/mnt/b", quotaList="1Gi,2Gi")],
    "spec.tieredstore.levels[].high": ["0.9", "1"],
    "spec.tieredstore.levels[].low": ["0.5", "0.2"],
    "spec.target[].path": ["/x"],
    "spec.runAfter.kind": ["DataLoad"],
    "spec.runAfter.affinityStrategy.dependOn.kind": ["DataLoad"],
}
QUANTITY = "1Gi"


# ----------------------------------------------------------------------------- schemas and checks
@functools.cache
def _crd_schema(path: Path) -> Doc:
    crd = yaml.safe_load(path.read_text())
    schema: Doc = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def fluid_schema(kind: str) -> Doc:
    return _crd_schema(FLUID / f"data.fluid.io_{FILES[kind]}.yaml")


def eddy_schema(kind: str) -> Doc:
    return _crd_schema(ROOT / "manifests" / "crds" / f"{FILES[kind]}.yaml")


def strict(node: Any) -> Any:
    """Structural schema → JSON Schema; unknown fields refused unless preserved."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: Doc = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes") or key in ("description", "default"):
            continue
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if node.get("type") == "object" and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _validator(kind: str, which: str) -> Any:
    schema = fluid_schema(kind) if which == "fluid" else eddy_schema(kind)
    return jsonschema.Draft202012Validator(strict(schema))


def _body(kind: str, doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k != "metadata"}  # ObjectMeta: the API server's own check


def fluid_accepts(kind: str, doc: Doc) -> bool:
    return _validator(kind, "fluid").is_valid(_body(kind, doc))


def eddy_crd_accepts(kind: str, doc: Doc) -> bool:
    body = _body(kind, doc)
    return bool(_validator(kind, "eddy").is_valid(body)) and not cel_errors(eddy_schema(kind), body)


# ----------------------------------------------------------------------------------- generation
def declared(schema: Doc, parts: Parts = ()) -> Iterator[tuple[Parts, Doc]]:
    """Every declared field of the spec: (path with -1 for "an item of", its schema)."""
    for key, sub in (schema.get("properties") or {}).items():
        here = (*parts, key)
        yield here, sub
        yield from _inside(sub, here)


def _inside(node: Doc, parts: Parts) -> Iterator[tuple[Parts, Doc]]:
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        item = node["items"]
        yield (*parts, -1), item
        yield from _inside(item, (*parts, -1))
    elif node.get("type") == "object" and node.get("properties"):
        yield from declared(node, parts)


def norm(parts: Parts) -> str:
    text = ""
    for part in parts:
        text += "[]" if part == -1 else (f".{part}" if text else str(part))
    return text


def sample(node: Doc, path: str) -> Any:
    """A value of the node's type that both Fluid's and Eddy's rules take (required fields filled)."""
    eddy = EDDY_VALUES.get(path)
    if eddy and not isinstance(eddy[0], Siblings):
        return copy.deepcopy(eddy[0])
    if node.get("enum"):
        return next(v for v in node["enum"] if v != "")
    if node.get("x-kubernetes-int-or-string"):
        return QUANTITY if "pattern" in node else "1"
    kind = node.get("type")
    if kind == "string":
        if "pattern" in node:
            return f"{QUANTITY},{QUANTITY}" if "," in node["pattern"] else QUANTITY
        if node.get("format") == "date-time":
            return "2026-01-01T00:00:00Z"
        return "x" * max(1, int(node.get("minLength", 1)))
    if kind == "integer":
        return max(1, int(node.get("minimum", 1)))
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [sample(node["items"], path + "[]")]
    if kind == "object":
        if isinstance(node.get("additionalProperties"), dict):
            return {"k": sample(node["additionalProperties"], path + "{}")}
        required = set(node.get("required") or ()) | _eddy_required(path)
        props = node.get("properties") or {}
        return {k: sample(v, f"{path}.{k}") for k, v in props.items() if k in required}
    raise AssertionError(f"{path}: no sample for {node}")


def _eddy_required(path: str) -> set[str]:
    """What Eddy's schema requires at a normalised path (of any kind whose schema has it)."""
    out: set[str] = set()
    for kind in FILES:
        node: Any = eddy_schema(kind)
        try:
            for part in path.replace("[]", ".[]").replace("{}", ".{}").split("."):
                node = {"[]": node.get("items"), "{}": node.get("additionalProperties")}.get(
                    part, (node.get("properties") or {}).get(part))
                if node is None:
                    break
        except AttributeError:
            continue
        if isinstance(node, dict):
            out |= set(node.get("required") or ())
    return out


def values(node: Doc, path: str) -> list[Any]:
    """The generic values a field is exercised with: each enum value, both int-or-string forms."""
    if node.get("enum"):
        return list(node["enum"])
    if node.get("x-kubernetes-int-or-string"):
        return [QUANTITY if "pattern" in node else "1", 1]
    return [sample(node, path)]


def _required_union(kind: str, parts: Parts) -> tuple[Doc, set[str]]:
    """The Fluid schema node at `parts` and the fields Fluid's or Eddy's schema requires there."""
    nodes = [fluid_schema(kind), eddy_schema(kind)]
    for part in parts:
        nodes = [n["items"] if part == -1 else n["properties"][part] for n in nodes]
    return nodes[0], set(nodes[0].get("required") or ()) | set(nodes[1].get("required") or ())


def build(kind: str, parts: Parts, value: Any) -> Doc:
    """BASE with `value` at `parts`, creating parents with their required fields."""
    doc = copy.deepcopy(BASE[kind])
    doc = {"apiVersion": "data.fluid.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, **doc}
    parent: Any = doc
    for depth, part in enumerate(parts[:-1]):
        node, required = _required_union(kind, parts[: depth + 1])
        nxt = parts[depth + 1]
        if part == -1:
            if not parent:
                parent.append({})
            holder: Any = parent
            key: Any = 0
        else:
            holder, key = parent, part
            if key not in holder:
                holder[key] = [] if nxt == -1 else {}
        child = holder[key]
        if isinstance(child, dict):
            target = node["items"] if node.get("type") == "array" else node
            for name in required:
                if name not in child and name != nxt:
                    child[name] = sample(target["properties"][name], f"{norm(parts[: depth + 1])}.{name}")
        parent = child
    last = parts[-1]
    if isinstance(value, Siblings):
        parent.update(copy.deepcopy(dict(value)))
    elif last == -1:
        parent[:] = [value]
    else:
        parent[last] = value
    # Fill what the item (for arrays) or object needs.
    node, required = _required_union(kind, parts)
    if isinstance(value, dict) and node.get("type") == "object":
        for name in required:
            if name not in value:
                value[name] = sample(node["properties"][name], f"{norm(parts)}.{name}")
    return doc


def refused_by_design(kind: str, path: str) -> bool:
    """The field (or an ancestor) is one whose values Eddy restricts, as eddy.api_fields.REFUSED says."""
    return any(path == r or path.startswith((r + ".", r + "[")) for r in REFUSED[kind])


# ------------------------------------------------------------------------------------------ cases
@functools.cache
def cases(kind: str) -> list[tuple[str, Doc, bool]]:
    """(field path, manifest, Fluid-generic value?) for every declared field of `kind`'s spec."""
    out: list[tuple[str, Doc, bool]] = []
    spec = fluid_schema(kind)["properties"]["spec"]
    for parts, node in declared(spec, ("spec",)):
        path = norm(parts)
        for value in values(node, path):
            out.append((path, build(kind, parts, copy.deepcopy(value)), True))
        for value in EDDY_VALUES.get(path, []):
            out.append((path, build(kind, parts, copy.deepcopy(value)), False))
    for i, (_, doc, _) in enumerate(out):
        doc["metadata"]["name"] = f"case-{i}"
    return out


def _validate_all(kind: str, docs: list[Doc], tmp_path: Path) -> dict[str, bool]:
    """`eddy validate`'s verdict per manifest name, from one file holding them all."""
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    models, errors, _ = check_file(str(path))
    refused = {line.split(": ")[1].split("/", 1)[1] for line in errors}
    verdict = {str(d["metadata"]["name"]): str(d["metadata"]["name"]) not in refused for d in docs}
    assert len(models) == sum(verdict.values())
    return verdict


@pytest.mark.parametrize("kind", list(FILES))
def test_every_fluid_field_is_accepted_by_eddys_crd_and_eddy_validate(kind: str, tmp_path: Path) -> None:
    generated = cases(kind)
    docs = [doc for _, doc, _ in generated]
    verdict = _validate_all(kind, docs, tmp_path)
    counts: Counter[str] = Counter()
    by_design: set[str] = set()
    problems: list[str] = []
    for path, doc, generic in generated:
        name = doc["metadata"]["name"]
        if not fluid_accepts(kind, doc):
            assert not generic, f"{path}: the generator made a manifest Fluid refuses: {doc['spec']}"
            counts["eddy-only value"] += 1  # e.g. none today; kept for clarity
            continue
        crd = eddy_crd_accepts(kind, doc)
        if crd != verdict[name]:
            problems.append(f"{path}: CRD {'accepts' if crd else 'refuses'}, eddy validate does not agree "
                            f"({doc['spec']})")
        if crd:
            counts["accepted"] += 1
        elif generic and refused_by_design(kind, path):
            counts["refused by design"] += 1
            by_design.add(path)
        else:
            problems.append(f"{path}: Fluid accepts, Eddy's CRD refuses ({doc['spec']})")
    assert not problems, "\n".join(problems)
    fields = {path for path, _, _ in generated}
    print(f"{kind}: {len(fields)} fields, {len(generated)} manifests: {dict(counts)}; "
          f"refused by design: {sorted(by_design)}")
    # Every field Eddy restricts still has an accepted value of Eddy's.
    for path in by_design:
        assert any(p == path and eddy_crd_accepts(kind, d) for p, d, _ in generated), path
    assert counts["accepted"] >= len(fields)


def _unknown_field_cases(kind: str) -> Iterator[tuple[str, Doc]]:
    """A field Fluid does not declare, added to each object of every generated manifest's field."""
    seen: set[str] = set()
    for path, doc, _ in cases(kind):
        if path in seen or not fluid_accepts(kind, doc) or not eddy_crd_accepts(kind, doc):
            continue
        seen.add(path)
        target = _find(doc, path)
        if isinstance(target, dict) and _is_struct(kind, path):
            bad = copy.deepcopy(doc)
            _find(bad, path)["eddyConformanceUnknown"] = "x"
            yield path, bad


def _find(doc: Doc, path: str) -> Any:
    node: Any = doc
    for part in path.replace("[]", ".[]").split("."):
        node = node[0] if part == "[]" else node[part]
    return node


def _is_struct(kind: str, path: str) -> bool:
    node: Any = fluid_schema(kind)
    for part in path.replace("[]", ".[]").split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return bool(node.get("type") == "object" and node.get("properties") is not None
                and "additionalProperties" not in node)


def _wrong_type(node: Doc) -> Any:
    if node.get("x-kubernetes-int-or-string"):
        return True
    return {"string": 7, "integer": "7", "number": "7", "boolean": "yes", "array": "x", "object": "x"}[
        node["type"]]


def _wrong_type_cases(kind: str) -> Iterator[tuple[str, Doc]]:
    spec = fluid_schema(kind)["properties"]["spec"]
    for parts, node in declared(spec, ("spec",)):
        if node.get("type") or node.get("x-kubernetes-int-or-string"):
            yield norm(parts), build(kind, parts, _wrong_type(node))


@pytest.mark.parametrize("kind", list(FILES))
def test_unknown_fields_and_wrong_types_are_refused_by_all_three(kind: str, tmp_path: Path) -> None:
    bad = [*_unknown_field_cases(kind), *_wrong_type_cases(kind)]
    docs = [doc for _, doc in bad]
    for i, doc in enumerate(docs):
        doc["metadata"]["name"] = f"bad-{i}"
    verdict = _validate_all(kind, docs, tmp_path)
    problems = [
        f"{path}: {who} accepts {doc['spec']}"
        for path, doc in bad
        for who, ok in (("Fluid", fluid_accepts(kind, doc)), ("Eddy's CRD", eddy_crd_accepts(kind, doc)),
                        ("eddy validate", verdict[doc["metadata"]["name"]]))
        if ok
    ]
    assert not problems, "\n".join(problems[:20])
    print(f"{kind}: {len(bad)} malformed manifests refused by all three")
    assert len(bad) > 20


# ----------------------------------------------------------------------- what Eddy refuses, by design
def _pop(*path: str | int) -> Any:
    def change(doc: Doc) -> None:
        node: Any = doc
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1])
    return change


def _keep(doc: Doc) -> None:
    pass


RT = "JindoRuntime"
LV: Parts = ("spec", "tieredstore", "levels", -1)
# (REFUSED key, path parts to set, a value Fluid's schema accepts, a further change)
REFUSED_EXAMPLES: list[tuple[str, str, Parts, Any, Any]] = [
    ("Dataset", "spec", ("spec", "accessModes"), ["ReadOnlyMany"], _pop("spec")),
    ("Dataset", "spec.mounts", ("spec", "accessModes"), ["ReadOnlyMany"], _pop("spec", "mounts")),
    ("Dataset", "spec.mounts[].mountPoint", ("spec", "mounts", -1, "mountPoint"), "local:///mnt/data", _keep),
    ("Dataset", "spec.mounts[].mountPoint", ("spec", "mounts", -1, "mountPoint"), "pvc://claim", _keep),
    ("Dataset", "spec.mounts[].path", ("spec", "mounts", -1, "path"), "relative", _keep),
    ("Dataset", "spec.mounts[].encryptOptions[]", ("spec", "mounts", -1, "encryptOptions"), [{"name": "a"}],
     _keep),
    ("Dataset", "spec.sharedEncryptOptions[]", ("spec", "sharedEncryptOptions"),
     [{"name": "a", "valueFrom": {"secretKeyRef": {"name": "s"}}}], _keep),
    ("Dataset", "spec.accessModes[]", ("spec", "accessModes"), ["ReadSometimes"], _keep),
    ("JindoRuntime", "spec", ("spec", "replicas"), 1, _pop("spec")),
    ("JindoRuntime", "spec.replicas", ("spec", "replicas"), -1, _keep),
    ("JindoRuntime", "spec.tieredstore.levels", ("spec", "tieredstore", "levels"),
     [{"mediumtype": m, "path": f"/{i}", "quota": "1Gi"} for i, m in enumerate(["MEM", "SSD", "HDD", "SSD"])],
     _keep),
    (RT, "spec.tieredstore.levels[].path", (*LV, "path"), "dev/shm",
     _keep),
    (RT, "spec.tieredstore.levels[].quota", (*LV, "quota"), "-1Gi",
     _keep),
    (RT, "spec.tieredstore.levels[].quota", (*LV, "quota"), "500m",
     _keep),
    (RT, "spec.tieredstore.levels[].quota", (*LV, "quota"), "1e9",
     _keep),
    (RT, "spec.tieredstore.levels[].quota", (*LV, "mediumtype"),
     "MEM", _pop("spec", "tieredstore", "levels", 0, "quota")),
    (RT, "spec.tieredstore.levels[].quotaList", (*LV, "quotaList"),
     "1Gi,2Gi", _keep),
    (RT, "spec.tieredstore.levels[].high", (*LV, "high"), "high",
     _keep),
    (RT, "spec.tieredstore.levels[].high", (*LV, "low"), "0.96",
     _keep),
    (RT, "spec.tieredstore.levels[].low", (*LV, "low"), "1.5",
     _keep),
    ("DataLoad", "spec", ("spec", "policy"), "Once", _pop("spec")),
    ("DataLoad", "spec.dataset", ("spec", "policy"), "Once", _pop("spec", "dataset")),
    ("DataLoad", "spec.target[].path", ("spec", "target", -1, "path"), "relative", _keep),
    ("DataLoad", "spec.target[].replicas", ("spec", "target", -1, "replicas"), 0, _keep),
    ("DataLoad", "spec.ttlSecondsAfterFinished", ("spec", "ttlSecondsAfterFinished"), -1, _keep),
    ("DataLoad", "spec.runAfter.kind", ("spec", "runAfter", "kind"), "DataProcess", _keep),
    ("DataLoad", "spec.schedule", ("spec", "policy"), "Cron", _pop("spec", "schedule")),
]


def test_what_eddy_refuses_by_design_is_documented_and_refused_by_crd_and_validate(tmp_path: Path) -> None:
    docs: list[tuple[str, str, Doc]] = []
    for i, (kind, key, parts, value, change) in enumerate(REFUSED_EXAMPLES):
        assert key in REFUSED[kind], key
        doc = build(kind, parts, copy.deepcopy(value))
        change(doc)
        doc["metadata"]["name"] = f"refused-{i}"
        assert fluid_accepts(kind, doc), (key, doc)
        assert not eddy_crd_accepts(kind, doc), (key, doc)
        docs.append((kind, key, doc))
    for kind in FILES:
        mine = [doc for k, _, doc in docs if k == kind]
        verdict = _validate_all(kind, mine, tmp_path)
        assert not any(verdict.values()), [d["spec"] for d in mine if verdict[d["metadata"]["name"]]]
    covered = {(k, key) for k, key, _ in docs}
    missing = [(k, key) for k in FILES for key in REFUSED[k] if (k, key) not in covered]
    assert not missing, f"REFUSED entries without an example: {missing}"
