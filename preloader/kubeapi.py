"""The consumer's Kubernetes side, on `eddy.kube` (kubernetes-asyncio): reads, status merge patches,
Events, Secrets, and the DataLoad informer (list, then watch from the list's resourceVersion; re-list
on 410 Gone; backoff on errors).

Status updates are JSON merge patches on the `status` subresource carrying only the fields the
preloader owns (`phase`, `duration`, `conditions`, `progress`, times on a DataLoad; `cacheStates.cached`
and `cachedPercentage` on a Dataset), so they cannot overwrite what another writer (the controller)
set: there is no read-modify-write, hence no lost update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from eddy.kube import DATALOADS, DATASETS, JINDORUNTIMES, SECRETS, EventRecorder, Informer, Kube, Resource
from eddy.secrets import SecretSource, secret_values

log = logging.getLogger(__name__)

COMPONENT = "eddy-preloader"
RESOURCES: dict[str, Resource] = {
    "DataLoad": DATALOADS, "Dataset": DATASETS, "JindoRuntime": JINDORUNTIMES, "Secret": SECRETS,
}


class KubeApi:
    """`PreloaderApi` (preloader/runner.py) over an `eddy.kube.Kube`."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.recorder = EventRecorder(kube, COMPONENT)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get_or_none(RESOURCES[kind], name, namespace)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self.kube.patch_status(RESOURCES[kind], name, {"status": dict(status)}, namespace)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Deletes a DataLoad whose ttlSecondsAfterFinished passed (gone already is fine)."""
        await self.kube.delete(RESOURCES[kind], name, namespace, missing_ok=True)

    async def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        await self.recorder.record(dict(obj), reason, message, type_)

    async def secrets(self, namespace: str, names: tuple[str, ...]) -> SecretSource:
        """The Dataset's Secrets (values decoded); a missing one is left out (the load then says so)."""
        mapping: dict[str, dict[str, str]] = {}
        for name in names:
            doc = await self.get("Secret", namespace, name)
            if doc is not None:
                mapping[name] = secret_values(doc, f"{namespace}/{name}")
        return SecretSource.from_mapping(mapping)


def dataload_informer(kube: Kube, handler: Callable[[str, dict[str, Any]], None],
                      namespace: str | None = None, *, watch_timeout: int = 300) -> Informer:
    """An informer over DataLoads (one namespace, or all) feeding `handler(type, obj)`."""

    async def on_event(type_: str, obj: dict[str, Any]) -> None:
        handler(type_, obj)

    return Informer(kube, DATALOADS, namespace, on_event=on_event, watch_timeout=watch_timeout)
