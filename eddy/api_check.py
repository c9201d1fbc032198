"""The field-path-tracking checker `eddy/api_parse.py` and `eddy/api_parse_runtime.py` walk documents with.

`_Checker` collects every problem (`field.path: message`, the bad value quoted) so a user fixes a
manifest in one pass; `_declared(kind, path)` is what Fluid's schema (Eddy's CRD) declares at a path.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from eddy.api import FieldError

_PLACEHOLDER = re.compile(r"<[^<>]*>")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_BUCKET = re.compile(r"^[A-Za-z0-9._-]+$")


@functools.cache
def _declared(kind: str, path: str) -> frozenset[str]:
    """Property names Eddy's CRD schema (Fluid's) declares at `spec.mounts[]`-style `path`."""
    from eddy.crds import object_schema

    node: Any = object_schema(kind)
    for part in path.split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    return frozenset(node.get("properties") or {})


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def placeholder_message(value: str) -> str:
    """`"oss://<oss_bucket>/<dir>" is a placeholder to fill in: replace <oss_bucket>, <dir>`."""
    tokens = ", ".join(dict.fromkeys(_PLACEHOLDER.findall(value)))
    return f"{_show(value)} is a placeholder to fill in: replace {tokens} with the real value"


class _Checker:
    """Collects errors while walking a document, tracking the current field path."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.ignored: list[str] = []
        self._path: list[str] = []

    def fields(
        self, doc: Mapping[str, Any], handled: frozenset[str], ignored: frozenset[str] = frozenset()
    ) -> None:
        """Refuse fields Fluid's schema does not declare here (`ignored`: declared, read elsewhere)."""
        for key in doc:
            name = str(key)
            if name in handled:
                continue
            if name in ignored:
                continue  # declared by Fluid's schema, which checks it (see schema_errors)
            close = difflib.get_close_matches(name, sorted(handled | ignored), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.fail(name, f"unknown field{hint}")

    @contextmanager
    def at(self, part: str | int) -> Iterator[None]:
        self._path.append(f"[{part}]" if isinstance(part, int) else part)
        try:
            yield
        finally:
            self._path.pop()

    def path(self, leaf: str = "") -> str:
        text = ""
        for part in [*self._path, leaf] if leaf else self._path:
            text += part if part.startswith("[") or not text else f".{part}"
        return text

    def fail(self, leaf: str, message: str) -> None:
        self.errors.append(FieldError(self.path(leaf), message))

    def mapping(self, doc: Mapping[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
        value = doc.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(key, f"{_show(value)} must be an object")
            return {}
        return dict(value)

    def sequence(self, doc: Mapping[str, Any], key: str, *, required: bool = False) -> list[Any]:
        value = doc.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return []
        if not isinstance(value, list):
            self.fail(key, f"{_show(value)} must be a list")
            return []
        return value

    def string(
        self, doc: Mapping[str, Any], key: str, *, required: bool = False, default: str = ""
    ) -> str:
        value = doc.get(key)
        if value is None or value == "":
            if required:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str):
            self.fail(key, f"{_show(value)} must be a string")
            return default
        if _PLACEHOLDER.search(value):
            self.fail(key, placeholder_message(value))
        return value

    def boolean(self, doc: Mapping[str, Any], key: str, default: bool) -> bool:
        value = doc.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"{_show(value)} must be true or false")
            return default
        return value

    def integer(self, doc: Mapping[str, Any], key: str, default: int, minimum: int = 0) -> int:
        value = doc.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"{_show(value)} must be an integer")
            return default
        if value < minimum:
            self.fail(key, f"{value} must be at least {minimum}")
            return default
        return value

    def choice(self, doc: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
        value = doc.get(key)
        if value is None or value == "":
            return default
        if value not in choices:
            self.fail(key, f"{_show(value)} is not one of {', '.join(choices)}")
            return default
        return str(value)

    def string_map(self, doc: Mapping[str, Any], key: str) -> dict[str, str]:
        raw = self.mapping(doc, key)
        out: dict[str, str] = {}
        with self.at(key):
            for k, v in raw.items():
                leaf = f"[{k}]" if "." in str(k) or "/" in str(k) else str(k)
                if isinstance(v, bool) or not isinstance(v, str | int | float):
                    self.fail(leaf, f"{_show(v)} must be a string")
                    continue
                if isinstance(v, str) and _PLACEHOLDER.search(v):
                    self.fail(leaf, placeholder_message(v))
                out[str(k)] = str(v)
        return out


# --------------------------------------------------------------------------------------------- parsing
def _mapping_of(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _objects(value: Any) -> tuple[Mapping[str, Any], ...]:
    """The objects of a list of Kubernetes objects (tolerations, env); the schema checked their shape."""
    return tuple(dict(v) for v in value if isinstance(v, Mapping)) if isinstance(value, list) else ()


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _int_of(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
