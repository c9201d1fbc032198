"""Fluid's v1alpha1 schemas, and checking a manifest against a CRD schema as the API server does.

`eddy/schemas/fluid-v1alpha1.json` holds the `openAPIV3Schema`, names, printer columns and subresources
of Fluid's Dataset, JindoRuntime and DataLoad CRDs (extracted from Fluid's published CRDs, Apache-2.0;
see tests/data/fluid/README.md). `eddy/crds.py` adds Eddy's stricter rules to them and that result is
the one schema both the CRDs and `parse_object` (hence `eddy validate`) check against.

`schema_errors(schema, doc)` applies a structural schema with the API server's semantics under strict
field validation: a field the schema does not declare is an error unless its object carries
`x-kubernetes-preserve-unknown-fields`; `null` values are dropped first (pruned, as for non-nullable
fields); `x-kubernetes-int-or-string` takes an integer or a string; `x-kubernetes-validations` (CEL)
rules are evaluated with cel-python. `python -m eddy.api_schema --extract DIR` rewrites the JSON file
from Fluid's CRD YAML files in DIR.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from eddy.api import FieldError

Schema = dict[str, Any]

SCHEMA_FILE = Path(__file__).with_name("schemas") / "fluid-v1alpha1.json"
FLUID_FILES = {
    "Dataset": "data.fluid.io_datasets.yaml",
    "JindoRuntime": "data.fluid.io_jindoruntimes.yaml",
    "DataLoad": "data.fluid.io_dataloads.yaml",
}
SOURCE = (
    "https://github.com/fluid-cloudnative/fluid config/crd/bases/ at "
    "a826600a43221c5b99f6185d3ce926a700c37008 (v1.0.8-456-ga826600a4); Apache License 2.0, "
    "Copyright The Fluid Authors"
)


# ------------------------------------------------------------------------------------- Fluid's schemas
@functools.cache
def _vendored() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return data


def fluid_crd_facts(kind: str) -> dict[str, Any]:
    """Fluid's `{schema, names, columns, subresources}` for one kind (a deep copy, free to edit)."""
    return copy.deepcopy(_vendored()["kinds"][kind])


def _describe(node: Schema, swagger: Mapping[str, Any] | None, definitions: Mapping[str, Any]) -> None:
    """Copy Fluid's descriptions (its swagger.json, from the Go doc comments) onto a CRD schema node.

    Fluid's published CRDs carry no descriptions; `kubectl explain` shows these. Kubernetes types
    (`$ref: v1.Toleration`, not defined in Fluid's file) are named instead of described.
    """
    while swagger is not None and "$ref" in swagger:
        ref = str(swagger["$ref"]).rsplit("/", 1)[-1]
        text = swagger.get("description")
        target = definitions.get(ref)
        if target is None:
            node.setdefault("description", (text + " " if text else "") + f"(Kubernetes {ref.lstrip('.')})")
            return
        swagger = {**target, **({"description": text} if text else {})}
    if swagger is None:
        return
    if swagger.get("description") and not node.get("description"):
        node["description"] = swagger["description"]
    props = node.get("properties") or {}
    for key, sub in props.items():
        _describe(sub, (swagger.get("properties") or {}).get(key), definitions)
    if isinstance(node.get("items"), dict):
        _describe(node["items"], swagger.get("items"), definitions)
    if isinstance(node.get("additionalProperties"), dict):
        extra = swagger.get("additionalProperties")
        _describe(node["additionalProperties"], extra if isinstance(extra, Mapping) else None, definitions)


def extract(directory: Path) -> dict[str, Any]:
    """The content of SCHEMA_FILE, read from Fluid's CRD files and swagger.json in `directory`."""
    definitions = json.loads((directory / "swagger.json").read_text())["definitions"]
    kinds: dict[str, Any] = {}
    for kind, name in FLUID_FILES.items():
        crd = yaml.safe_load((directory / name).read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
        schema = version["schema"]["openAPIV3Schema"]
        _describe(schema, definitions.get(f".{kind}"), definitions)
        kinds[kind] = {
            "names": crd["spec"]["names"],
            "columns": version.get("additionalPrinterColumns", []),
            "subresources": version.get("subresources", {}),
            "schema": schema,
        }
    return {"source": SOURCE, "kinds": kinds}


# ------------------------------------------------------------------------------------ strict checking
def prune_nulls(value: Any) -> Any:
    """The document without `null` values (the API server prunes them for non-nullable fields)."""
    if isinstance(value, Mapping):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def to_jsonschema(node: Any) -> Any:
    """A structural schema as plain JSON Schema with strict unknown fields (no `x-kubernetes-*`)."""
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes") or key in ("default", "description"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[key] = to_jsonschema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserved = node.get("x-kubernetes-preserve-unknown-fields")
    embedded = node.get("x-kubernetes-embedded-resource")
    if out.get("type") == "object" and not preserved and not embedded and "additionalProperties" not in out:
        out["additionalProperties"] = False
        out.setdefault("properties", {})
    return out


def format_path(parts: Any) -> str:
    """`["spec", "mounts", 0, "options", "fs.oss.endpoint"]` → `spec.mounts[0].options[fs.oss.endpoint]`."""
    text = ""
    for part in parts:
        if isinstance(part, int) or "." in str(part) or "/" in str(part):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return json.dumps(value) if isinstance(value, dict | list | bool) or value is None else repr(value)


_TYPE_WORDS = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "array": "a list", "object": "an object",
}


def _messages(error: jsonschema.ValidationError) -> Iterator[FieldError]:
    path = list(error.absolute_path)
    value = error.instance
    kind = error.validator
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    expected: Any = error.validator_value
    if kind == "additionalProperties" and isinstance(value, Mapping):
        known = sorted((schema.get("properties") or {}).keys())
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                yield FieldError(format_path([*path, key]), f"unknown field{hint}")
    elif kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        yield FieldError(format_path([*path, missing]), "is required")
    elif kind == "type":
        wants = expected if isinstance(expected, list) else [expected]
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in wants)
        yield FieldError(format_path(path), f"{_show(value)} must be {words}")
    elif kind == "anyOf":
        yield FieldError(format_path(path), f"{_show(value)} must be an integer or a string")
    elif kind == "enum":
        choices = ", ".join(str(c) if c != "" else '""' for c in expected)
        yield FieldError(format_path(path), f"{_show(value)} is not one of {choices}")
    elif kind == "pattern":
        yield FieldError(format_path(path), f"{_show(value)} does not match {expected}")
    elif kind in ("minimum", "maximum"):
        word = "at least" if kind == "minimum" else "at most"
        yield FieldError(format_path(path), f"{_show(value)} must be {word} {expected}")
    elif kind in ("minItems", "minLength"):
        yield FieldError(format_path(path), f"{_show(value)} is too short (at least {expected})")
    else:
        yield FieldError(format_path(path), error.message)


@functools.cache
def _validator(key: str) -> jsonschema.protocols.Validator:
    schema = _SCHEMAS[key]
    cls = jsonschema.validators.validator_for({}, default=jsonschema.Draft202012Validator)
    return cls(to_jsonschema(schema))


# Schemas registered by name (the CRD generator registers Eddy's), so validators are built once.
_SCHEMAS: dict[str, Schema] = {}


def register(key: str, schema: Schema) -> None:
    if _SCHEMAS.get(key) != schema:
        _SCHEMAS[key] = schema
        _validator.cache_clear()


def schema_errors(key: str, doc: Any) -> list[FieldError]:
    """Every way `doc` breaks the registered schema `key` (structure, then CEL rules)."""
    from eddy.api_cel import cel_errors

    doc = prune_nulls(doc)
    if isinstance(doc, dict):
        # The API server checks the root's ObjectMeta itself (names, labels); parse_object does here.
        doc = {k: v for k, v in doc.items() if k != "metadata"}
    errors: list[FieldError] = []
    for error in sorted(_validator(key).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        errors.extend(_messages(error))
    if not errors:
        errors.extend(cel_errors(_SCHEMAS[key], doc))
    return errors


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--extract":
        SCHEMA_FILE.parent.mkdir(exist_ok=True)
        SCHEMA_FILE.write_text(json.dumps(extract(Path(argv[1])), indent=1, sort_keys=True) + "\n")
        return 0
    print("usage: python -m eddy.api_schema --extract DIR_WITH_FLUID_CRDS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
