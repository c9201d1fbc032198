"""An Informer: a local, always-current copy of a set of objects, plus change callbacks.

Transport and handling are separate tasks (as in kopf and client-go): the transport task lists, then
watches from the list's resourceVersion, keeps the store current and queues `(type, object)` events;
the dispatcher task hands them, in order, to the async handlers. A slow or failing handler never stalls
the watch, and a failing handler is logged, not fatal. A 410 Gone re-lists (the difference to the
store is delivered as ADDED/MODIFIED/DELETED); other errors back off exponentially with jitter
(`eddy.retry.RetryPolicy`: 0.2 s doubling to 30 s, each pause between half and all of that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.errors import Gone
from eddy.kube.resources import Resource
from eddy.retry import RetryPolicy

log = logging.getLogger("eddy.kube.informer")
Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
EventHandler = Callable[[str, Obj], Awaitable[None]]


def object_key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Informer:
    """List+watch `resource` (in `namespace`, or all) into a store; call handlers on every change."""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        field_selector: str | None = None,
        on_event: EventHandler | None = None,
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        # pauses after failed list/watch n: between half and all of min(max, initial * 2**(n-1)), for ever
        self.backoff = RetryPolicy(initial=backoff_initial, maximum=backoff_max, jitter=0.5, attempts=None)
        self.rng = rng or random.Random()
        self.handlers: list[EventHandler] = [on_event] if on_event else []
        self.resource_version = ""
        self.relists = 0  # lists after the first one (each 410 Gone causes one)
        self.errors = 0  # transport errors seen (each followed by a backoff)
        self._store: dict[Key, Obj] = {}
        self._synced = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, Obj]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ store
    def get(self, namespace: str | None, name: str) -> Obj | None:
        """The object as last seen (`namespace` is ignored for cluster-scoped kinds)."""
        return self._store.get(((namespace or "") if self.resource.namespaced else "", name))

    def items(self) -> list[Obj]:
        return list(self._store.values())

    def keys(self) -> list[Key]:
        return list(self._store)

    def __len__(self) -> int:
        return len(self._store)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # ------------------------------------------------------------------ lifecycle
    def add_handler(self, handler: EventHandler) -> None:
        self.handlers.append(handler)

    def start(self) -> None:
        if self._tasks:
            return
        name = self.resource.plural
        self._tasks = [
            asyncio.create_task(self._transport(), name=f"informer-{name}-watch"),
            asyncio.create_task(self._dispatch(), name=f"informer-{name}-dispatch"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def __aenter__(self) -> Informer:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Until the first list is in the store (TimeoutError after `timeout` seconds)."""
        async with asyncio.timeout(timeout):
            await self._synced.wait()

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Until every queued event has been handled (handy in tests)."""
        async with asyncio.timeout(timeout):
            await self._queue.join()

    # ------------------------------------------------------------------ transport
    async def _transport(self) -> None:
        attempt = 0
        gone_in_a_row = 0
        while True:
            try:
                if not self.resource_version:
                    if gone_in_a_row > 1:  # list, watch, 410 again at once: do not hammer the server
                        await asyncio.sleep(self.backoff.delay(gone_in_a_row - 1, self.rng))
                    await self._list()
                async for etype, obj in self.kube.watch(
                    self.resource,
                    self.namespace,
                    self.resource_version,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    timeout_seconds=self.watch_timeout,
                ):
                    self._apply(etype, obj)
                    attempt = gone_in_a_row = 0
                attempt = 0  # the server ended the stream (timeout): watch again from where we are
            except Gone:
                gone_in_a_row += 1
                log.info("%s: resourceVersion %s expired; listing again", self.resource.plural,
                         self.resource_version)
                self.resource_version = ""
            except Exception as exc:  # KubeError or a bug: log, back off, carry on
                self.errors += 1
                attempt += 1
                delay = self.backoff.delay(attempt, self.rng)
                log.warning("%s: list/watch failed (%s); retrying in %.2fs", self.resource.plural, exc, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        items, version = await self.kube.list(
            self.resource, self.namespace, self.label_selector, self.field_selector
        )
        fresh = {object_key(obj): obj for obj in items}
        old, self._store = self._store, fresh
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._queue.put_nowait(("ADDED", obj))
            elif _rv(before) != _rv(obj):
                self._queue.put_nowait(("MODIFIED", obj))
        for key, obj in old.items():
            if key not in fresh:
                self._queue.put_nowait(("DELETED", obj))
        if self._synced.is_set():
            self.relists += 1
        self.resource_version = version
        self._synced.set()

    def _apply(self, etype: str, obj: Obj) -> None:
        """Fold one watch event into the store and queue it; a malformed event is skipped."""
        version = _rv(obj)
        if etype == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        key = object_key(obj)
        if etype not in ("ADDED", "MODIFIED", "DELETED") or not key[1]:
            log.warning("%s: skipping a malformed %s event", self.resource.plural, etype)
            return
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        if etype == "DELETED":
            self._store.pop(key, None)
        else:
            self._store[key] = obj
        if version:
            self.resource_version = version
        self._queue.put_nowait((etype, obj))

    # ------------------------------------------------------------------ handling
    async def _dispatch(self) -> None:
        while True:
            etype, obj = await self._queue.get()
            try:
                for handler in list(self.handlers):
                    try:
                        await handler(etype, obj)
                    except Exception:
                        log.exception("%s: handler %r failed on %s %s", self.resource.plural, handler, etype,
                                      object_key(obj))
            finally:
                self._queue.task_done()


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
