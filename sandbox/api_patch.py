"""Patches and selectors of the sandbox API server (sandbox/apiserver.py): JSON merge patch, a
simplified strategic merge patch, JSON patch, and label / field selectors."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonpatch
import yaml

from sandbox.api_kinds import ApiError

Obj = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


MERGE_KEYS = ("name", "uid", "containerPort", "mountPath", "devicePath")


def _merge_key(old: list[Any], new: list[Any]) -> str | None:
    """The key a strategic merge patch merges two lists by: the first of MERGE_KEYS that every element
    of both lists (all objects) carries. None: the list is replaced, like a merge patch."""
    items = [*old, *new]
    if not new or not all(isinstance(i, dict) for i in items):
        return None
    for key in MERGE_KEYS:
        if all(key in i for i in items):
            return key
    return None


def strategic_merge(target: Any, patch: Any) -> Any:
    """A simplified strategic merge patch: a merge patch, except that lists of objects keyed by one of
    MERGE_KEYS (containers, volumes, env, ports, ownerReferences...) merge element by element, and the
    `$patch: delete|replace` directives work. Lists of scalars are replaced (real SMP merges a few, such
    as `finalizers`, by value; that is not modelled)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        current = out.get(key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and isinstance(current, list) and (mk := _merge_key(current, value)):
            merged = [copy.deepcopy(i) for i in current]
            for item in value:
                at = next((n for n, i in enumerate(merged) if i.get(mk) == item.get(mk)), None)
                if item.get("$patch") == "delete":
                    if at is not None:
                        del merged[at]
                elif at is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[at] = strategic_merge(merged[at], item)
            out[key] = merged
        else:
            out[key] = strategic_merge(current, value)
    return out


# ---------------------------------------------------------------------------------------------- selectors
_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def label_match(labels: dict[str, str], selector: str) -> bool:
    """Equality (`=`, `==`, `!=`), set (`in`, `notin`) and existence (`k`, `!k`) terms, ANDed."""
    for term in _split_terms(selector):
        if m := _SET_TERM.match(term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (key in labels and labels[key] in values):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_match(obj: Obj, selector: str) -> bool:
    """`metadata.name`, `metadata.namespace` and any dotted path to a scalar (`status.phase`)."""
    for term in _split_terms(selector):
        negate = "!=" in term
        path, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        actual = "" if cur is None else str(cur)
        if (actual == value) == negate:
            return False
    return True


def parse_body(raw: bytes, content_type: str) -> Any:
    """A request body: JSON, or YAML for server-side apply (`application/apply-patch+yaml`)."""
    if not raw:
        return None
    try:
        if content_type == "application/apply-patch+yaml":
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise ApiError(400, "BadRequest", f"the body is not {content_type or 'JSON'}: {exc}") from None


def apply_patch(content_type: str, old: Obj, body: Any) -> Obj:
    """The object a PATCH of `content_type` makes of `old`. Server-side apply is modelled as a
    strategic merge of the applied configuration (no field ownership: a field left out of a later
    apply stays)."""
    if content_type == "application/json-patch+json":
        if not isinstance(body, list):
            raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
        try:
            result = jsonpatch.apply_patch(old, body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc}") from None
        if not isinstance(result, dict):
            raise ApiError(422, "Invalid", "the JSON patch did not produce an object")
        return copy.deepcopy(result)
    if content_type in (
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be an object")
        strategic = content_type != "application/merge-patch+json"
        result = strategic_merge(old, body) if strategic else merge_patch(old, body)
        assert isinstance(result, dict)
        return copy.deepcopy(result)  # the merge shares untouched branches with the stored object
    raise ApiError(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported")
