"""Cluster-mode claim resolution from watch-fed caches: no API call per admission in steady state.

A claim is a Dataset's when a Dataset of the same name exists in the pod's namespace (Fluid names a
Dataset's PVC after it; DESIGN.md "Contracts"). The Dataset cache answers that; the PVC and runtime
caches say whether the Dataset is ready (bound). On a Dataset cache miss - a burst of new pods can
outrun the watch - the resolver makes ONE GET of the Dataset; a 404 is remembered for
`negative_ttl` seconds so pods with ordinary PVCs do not cost a call each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from eddy.api import Dataset, JindoRuntime, ValidationError, parse_dataset, parse_runtime
from webhook.review import Resolved

log = logging.getLogger("eddy.webhook.resolver")


class ObjectCache(Protocol):
    """A watch-fed store of one kind (an Informer's view)."""

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def synced(self) -> bool: ...


Fetch = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
M = TypeVar("M", Dataset, JindoRuntime)
Parse = Callable[[Mapping[str, Any], str], M]


class ParsedOnce(Generic[M]):
    """Parsed models of one kind, kept per (namespace, name) and re-parsed only when the object's
    resourceVersion changes: parsing is most of a cache hit's cost. An invalid object is logged (once
    per version) and yields None."""

    def __init__(self, kind: str, parse: Parse[M], unused: str) -> None:
        self.kind = kind
        self.parse: Parse[M] = parse
        self.unused = unused  # what an invalid object costs, for the log line
        self._models: dict[tuple[str, str], tuple[str, M | None]] = {}

    def model(self, doc: Mapping[str, Any], namespace: str, name: str) -> M | None:
        version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        cached = self._models.get((namespace, name))
        if cached is not None and cached[0] == version and version:
            return cached[1]
        try:
            model: M | None = self.parse(doc, namespace)
        except ValidationError as exc:
            log.warning("%s %s/%s is invalid, %s: %s", self.kind, namespace, name, self.unused, exc)
            model = None
        self._models[(namespace, name)] = (version, model)
        return model


class CachedResolver:
    def __init__(
        self,
        datasets: ObjectCache,
        pvcs: ObjectCache,
        runtimes: ObjectCache,
        fetch_dataset: Fetch,
        *,
        negative_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.datasets = datasets
        self.pvcs = pvcs
        self.runtimes = runtimes
        self.fetch_dataset = fetch_dataset
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._absent: dict[tuple[str, str], float] = {}
        self._datasets = ParsedOnce("Dataset", parse_dataset, "not injecting it")
        self._runtimes = ParsedOnce("JindoRuntime", parse_runtime, "its spec.fuse is not used")

    def ready(self) -> bool:
        return self.datasets.synced() and self.pvcs.synced() and self.runtimes.synced()

    def _runtime(self, namespace: str, name: str) -> JindoRuntime | None:
        """The Dataset's JindoRuntime (its spec.fuse shapes the sidecar)."""
        doc = self.runtimes.get(namespace, name)
        return None if doc is None else self._runtimes.model(doc, namespace, name)

    async def _dataset_doc(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        doc = self.datasets.get(namespace, name)
        if doc is not None:
            return doc
        key = (namespace, name)
        until = self._absent.get(key)
        if until is not None and until > self.clock():
            return None
        doc = await self.fetch_dataset(namespace, name)
        if doc is None:
            if len(self._absent) > 10_000:
                self._absent.clear()
            self._absent[key] = self.clock() + self.negative_ttl
        else:
            self._absent.pop(key, None)
        return doc

    async def resolve(self, namespace: str, claims: list[str]) -> dict[str, Resolved]:
        out: dict[str, Resolved] = {}
        for claim in claims:
            doc = await self._dataset_doc(namespace, claim)
            if doc is None:
                continue
            dataset = self._datasets.model(doc, namespace, claim)
            if dataset is None:
                continue
            bound, why = self._readiness(doc, namespace, claim)
            out[claim] = Resolved(dataset, bound, why, self._runtime(namespace, claim))
        return out

    def _readiness(self, doc: Mapping[str, Any], namespace: str, name: str) -> tuple[bool, str]:
        phase = str((doc.get("status") or {}).get("phase") or "")
        if phase != "Bound":
            return False, f"phase {phase or 'not set'}"
        if self.runtimes.get(namespace, name) is None:
            return False, "no JindoRuntime of that name"
        if self.pvcs.get(namespace, name) is None:
            return False, "its PVC does not exist yet"
        return True, ""
