"""Kubernetes Events about objects: a pure builder and a best-effort recorder that aggregates repeats."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from eddy.kube.errors import KubeError, NotFound
from eddy.kube.resources import EVENTS

if TYPE_CHECKING:
    from eddy.kube.client import Kube

log = logging.getLogger("eddy.kube.events")
Obj = dict[str, Any]
MAX_MESSAGE = 1024  # the API server rejects longer Event messages


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def involved_reference(obj: Obj) -> Obj:
    """The ObjectReference of an object, for `involvedObject`."""
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": obj.get("kind", ""),
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    return {k: v for k, v in ref.items() if v}


def build_event(
    involved_object: Obj,
    reason: str,
    message: str,
    type: str = "Normal",
    *,
    component: str = "eddy",
    instance: str = "",
) -> Obj:
    """A core/v1 Event body. It lives in the object's namespace (`default` for cluster-scoped ones)."""
    if type not in ("Normal", "Warning"):
        raise ValueError(f"event type must be Normal or Warning, not {type!r}")
    ref = involved_reference(involved_object)
    namespace = ref.get("namespace") or "default"
    now = _timestamp()
    name = f"{ref.get('name', 'object')}.{uuid.uuid4().hex[:16]}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": ref,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": type,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance or os.environ.get("HOSTNAME", "") or component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": _micro_timestamp(),
        "action": reason,
        "count": 1,
    }


class EventRecorder:
    """Records Events for one component. Best effort: a failure is logged, never raised. A repeat of
    the same (object, type, reason, message) within `window` seconds bumps `count` on the earlier Event
    instead of creating another, like client-go's correlator."""

    def __init__(self, kube: Kube, component: str, *, instance: str = "", window: float = 600.0,
                 remember: int = 512) -> None:
        self.kube = kube
        self.component = component
        self.instance = instance
        self.window = window
        self.remember = remember
        self._seen: OrderedDict[tuple[str, ...], tuple[str, str, int, float]] = OrderedDict()

    async def record(self, obj: Obj, reason: str, message: str, type: str = "Normal") -> Obj | None:
        """Record an Event about `obj`; returns the Event as stored, or None when that failed."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("uid") or meta.get("name")), type, reason, message[:MAX_MESSAGE])
        try:
            seen = self._seen.get(key)
            if seen is not None and time.monotonic() - seen[3] < self.window:
                namespace, name, count, _ = seen
                try:
                    patch = {"count": count + 1, "lastTimestamp": _timestamp()}
                    event = await self.kube.patch(EVENTS, name, patch, namespace)
                    self._remember(key, namespace, name, count + 1)
                    return event
                except NotFound:
                    pass  # expired or deleted: create a fresh one
            event = await self.kube.create_event(obj, reason, message, type, component=self.component,
                                                 instance=self.instance)
            self._remember(key, event["metadata"]["namespace"], event["metadata"]["name"], 1)
            return event
        except (KubeError, ValueError, KeyError) as exc:
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), exc)
            return None

    def _remember(self, key: tuple[str, ...], namespace: str, name: str, count: int) -> None:
        self._seen[key] = (namespace, name, count, time.monotonic())
        self._seen.move_to_end(key)
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)
