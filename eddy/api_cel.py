"""The CEL rules (`x-kubernetes-validations`) of a CRD schema, evaluated as the API server would.

Only Eddy's own rules carry CEL (Fluid's schemas have none); each is written for absent fields
(`has(...)`) so it holds before and after defaulting. cel-python evaluates them, so `eddy validate`
applies exactly the text that is in the CRD; `split` is added as Kubernetes' strings library has it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from eddy.api import FieldError

Schema = dict[str, Any]


def _split(text: Any, sep: Any) -> celtypes.ListType:
    """Kubernetes' CEL strings library `split` (cel-python has no extension libraries)."""
    return celtypes.ListType([celtypes.StringType(part) for part in str(text).split(str(sep))])


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions={"split": _split})


def _walk(schema: Mapping[str, Any], value: Any, path: str) -> Iterator[tuple[Mapping[str, Any], Any, str]]:
    yield schema, value, path
    if isinstance(value, Mapping):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            child = props.get(key) or (extra if isinstance(extra, Mapping) else None)
            if child is not None:
                leaf = f"[{key}]" if "." in str(key) or "/" in str(key) else str(key)
                joined = f"{path}.{leaf}" if path and not leaf.startswith("[") else path + leaf
                yield from _walk(child, sub, joined)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, f"{path}[{i}]")


def cel_errors(schema: Mapping[str, Any], doc: Any) -> list[FieldError]:
    """One error per failing rule, at the rule's object (plus its `fieldPath`, if any)."""
    errors: list[FieldError] = []
    for node, value, path in _walk(schema, doc, ""):
        for rule in node.get("x-kubernetes-validations") or ():
            try:
                result = _program(rule["rule"]).evaluate({"self": json_to_cel(value)})
            except CELEvalError:
                result = None
            ok = isinstance(result, celtypes.BoolType) and bool(result)
            if not ok:
                where = path + str(rule.get("fieldPath", ""))
                errors.append(FieldError(where, str(rule.get("message") or f"failed rule: {rule['rule']}")))
    return errors
