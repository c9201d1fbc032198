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


def parse_key(doc: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What a parse reads that can change, without the status: the controller writes a Dataset's and a
    JindoRuntime's status often, and re-parsing (schema and CEL: 1.5 and 2.8 ms) after each write
    would cost admissions for nothing. The API server bumps `metadata.generation` on every spec change
    (with or without a status subresource); labels, annotations, finalizers and the deletion mark
    change without it, so they are compared as they are. Without a generation, the resourceVersion;
    without either, None: parse every time."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    generation = meta.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool):
        version = meta.get("resourceVersion")
        return ("resourceVersion", version) if isinstance(version, str) and version else None
    return (doc.get("apiVersion"), doc.get("kind"), meta.get("uid"), generation, meta.get("labels"),
            meta.get("annotations"), meta.get("finalizers"), meta.get("deletionTimestamp"))


class ParsedOnce(Generic[M]):
    """Parsed models of one kind, kept per (namespace, name) and parsed again only when what the parse
    reads changes (`parse_key`): parsing is most of a cache hit's cost. The model's `status` and
    `meta.resource_version` are therefore those of the last parse: read the status from the document
    (as `CachedResolver` does for the phase). An invalid object is logged (once per parse key) and
    yields None. `parses` counts the parses."""

    def __init__(self, kind: str, parse: Parse[M], unused: str) -> None:
        self.kind = kind
        self.parse: Parse[M] = parse
        self.unused = unused  # what an invalid object costs, for the log line
        self.parses = 0
        self._models: dict[tuple[str, str], tuple[tuple[Any, ...], M | None]] = {}

    def model(self, doc: Mapping[str, Any], namespace: str, name: str) -> M | None:
        key = parse_key(doc)
        cached = self._models.get((namespace, name))
        if cached is not None and key is not None and cached[0] == key:
            return cached[1]
        self.parses += 1
        try:
            model: M | None = self.parse(doc, namespace)
        except ValidationError as exc:
            log.warning("%s %s/%s is invalid, %s: %s", self.kind, namespace, name, self.unused, exc)
            model = None
        if key is not None:
            self._models[(namespace, name)] = (key, model)
        else:
            self._models.pop((namespace, name), None)
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
        self.dataset_models = ParsedOnce("Dataset", parse_dataset, "not injecting it")
        self.runtime_models = ParsedOnce("JindoRuntime", parse_runtime, "its spec.fuse is not used")

    def ready(self) -> bool:
        return self.datasets.synced() and self.pvcs.synced() and self.runtimes.synced()

    def _runtime(self, namespace: str, name: str) -> JindoRuntime | None:
        """The Dataset's JindoRuntime (its spec.fuse shapes the sidecar)."""
        doc = self.runtimes.get(namespace, name)
        return None if doc is None else self.runtime_models.model(doc, namespace, name)

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
            dataset = self.dataset_models.model(doc, namespace, claim)
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
