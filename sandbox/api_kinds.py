"""The resource kinds a sandbox API server serves, and the registry CRDs add theirs to.

A `Kind` is identified by (group, version, plural): two `Kind`s that differ only in what discovery and
`kubectl get` show (short names, categories, printer columns) are equal and hash alike, so a CRD can
replace the metadata of a built-in kind without losing the objects stored under it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


class ApiError(Exception):
    """Answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details

    def status(self) -> Obj:
        out: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Column:
    """One `additionalPrinterColumns` entry of a CRD version."""

    name: str
    type: str
    json_path: str
    description: str = ""
    format: str = ""
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = field(default=True, compare=False)
    has_status: bool = field(default=False, compare=False)
    short_names: tuple[str, ...] = field(default=(), compare=False)
    categories: tuple[str, ...] = field(default=(), compare=False)
    singular: str = field(default="", compare=False)
    # Printer columns of a CRD version (None: the server's built-in table for this kind, see tables.py).
    columns: tuple[Column, ...] | None = field(default=None, compare=False)
    crd: str = field(default="", compare=False)  # the CustomResourceDefinition that registered it

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The resource's name in counters and `get_object`: `pods`, `leases`, `events.events.k8s.io`."""
        return self.plural if self.group != "events.k8s.io" else "events.events.k8s.io"

    @property
    def path(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order, highest first when sorted descending: v2 > v1 > v1beta2 > v1beta1 >
    v1alpha1 > anything that is not a Kubernetes version."""
    m = _VERSION.match(version)
    if not m:
        return (-1, 0, 0)
    stage = {"alpha": 0, "beta": 1, None: 2}[m.group(2)]
    return (stage, int(m.group(1)), int(m.group(3) or 0))


class Registry:
    """The kinds one server serves: the built-ins, plus (or replaced by) those of applied CRDs."""

    def __init__(self, builtins: Iterable[Kind]) -> None:
        self._builtin: dict[tuple[str, str, str], Kind] = {}
        for kind in builtins:
            self._builtin[kind.path] = kind  # a repeated entry replaces the earlier one
        self._kinds = dict(self._builtin)
        self.generation = 0  # bumped on every change: discovery and OpenAPI hashes follow it
        self._index()

    def _index(self) -> None:
        kinds = list(self._kinds.values())
        self._by_kind = {(k.api_version, k.kind): k for k in kinds}
        self._by_key: dict[str, Kind] = {}
        for k in kinds:
            self._by_key.setdefault(k.key, k)
            if k.group:
                self._by_key.setdefault(f"{k.plural}.{k.group}", k)
        self.generation += 1

    def register(self, kind: Kind) -> None:
        self._kinds[kind.path] = kind
        self._index()

    def unregister(self, path: tuple[str, str, str]) -> bool:
        """Remove a CRD's kind; a built-in kind gets its built-in metadata back. True if it is gone."""
        if path in self._builtin:
            self._kinds[path] = self._builtin[path]
            self._index()
            return False
        gone = self._kinds.pop(path, None) is not None
        self._index()
        return gone

    def is_builtin(self, path: tuple[str, str, str]) -> bool:
        return path in self._builtin

    def by_path(self, group: str, version: str, plural: str) -> Kind | None:
        return self._kinds.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> Kind | None:
        return self._by_kind.get((api_version, kind))

    def by_key(self, key: str) -> Kind:
        try:
            return self._by_key[key]
        except KeyError:
            raise ValueError(f"unknown resource {key!r}") from None

    def kinds(self) -> list[Kind]:
        return list(self._kinds.values())

    def groups(self) -> dict[str, list[str]]:
        """Group -> served versions, preferred (highest priority) first; the core group is ""."""
        out: dict[str, list[str]] = {}
        for k in self._kinds.values():
            if k.version not in out.setdefault(k.group, []):
                out[k.group].append(k.version)
        return {g: sorted(vs, key=version_priority, reverse=True) for g, vs in out.items()}

    def in_group_version(self, group: str, version: str) -> list[Kind]:
        return [k for k in self._kinds.values() if (k.group, k.version) == (group, version)]
