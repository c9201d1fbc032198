"""The controller's event handling: watches feed a de-duplicating work queue; workers reconcile keys.

Kopf-like split: `controller/kubeio.py` is the transport, `controller/reconciler.py` the handlers,
this module the plumbing between them. Level-triggered: an event only says *which* key to look at;
the handler reads the current state. A periodic resync re-queues everything, so a lost event costs
at most one resync period. A failing key is retried with exponential backoff and never stops the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from controller import kubeio
from controller.kubeio import ApiError, Kube, Resource
from controller.reconciler import Reconciler
from eddy.names import LABEL_DATASET_ID, LABEL_INJECT_DONE
from eddy.retry import RetryPolicy

log = logging.getLogger("eddy.controller")

RECONCILES = Counter("eddy_controller_reconciles_total", "Reconciles", ["kind", "result"])
RECONCILE_SECONDS = Histogram("eddy_controller_reconcile_seconds", "Time per reconcile", ["kind"])
QUEUE_DEPTH = Gauge("eddy_controller_queue_depth", "Keys waiting to be reconciled")

Key = tuple[str, str, str]  # (kind "dataset" | "pod", namespace, name)

# A watch that failed n times in a row restarts after 0.5-1 s, 1-2 s, 2-4 s... at most 30-60 s.
WATCH_BACKOFF = RetryPolicy(initial=1.0, maximum=60.0, jitter=0.5, attempts=None)
# A key whose reconcile failed n times in a row is looked at again after 1 s, 2 s, 4 s... at most 60 s.
RECONCILE_BACKOFF = RetryPolicy(initial=1.0, maximum=60.0, jitter=0.0, attempts=None)


def _dataset_key(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    return ("dataset", str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _worker_key(obj: dict[str, Any]) -> Key | None:
    """A worker StatefulSet maps to the Dataset that owns it."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Dataset":
            return ("dataset", str(meta.get("namespace") or ""), str(ref.get("name")))
    return None


def _pod_key(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL_INJECT_DONE) != "true":
        return None
    return ("pod", str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Controller:
    def __init__(self, kube: Kube, reconciler: Reconciler, *, namespace: str | None = None,
                 resync: float = 60.0, concurrency: int = 4, rng: random.Random | None = None) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.namespace = namespace
        self.resync = resync
        self.concurrency = concurrency
        self.rng = rng or random.Random()
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()  # changed while being reconciled
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self.synced = asyncio.Event()

    def enqueue(self, key: Key) -> None:
        if key in self._queued:
            return
        self._queued.add(key)
        self.queue.put_nowait(key)
        QUEUE_DEPTH.set(len(self._queued))

    def enqueue_after(self, key: Key, delay: float) -> None:
        """Look at `key` again after `delay`; an earlier pending look-again wins."""
        loop = asyncio.get_running_loop()
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= loop.time() + delay:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    async def run(self) -> None:
        watches: list[tuple[Resource, Callable[[dict[str, Any]], Key | None], str]] = [
            (kubeio.DATASETS, _dataset_key, ""),
            (kubeio.RUNTIMES, _dataset_key, ""),
            (kubeio.STATEFULSETS, _worker_key, LABEL_DATASET_ID),
            (kubeio.PODS, _pod_key, f"{LABEL_INJECT_DONE}=true"),
        ]
        tasks = [asyncio.create_task(self._watch(res, to_key, sel)) for res, to_key, sel in watches]
        tasks += [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        tasks.append(asyncio.create_task(self._resync()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for timer in self._timers.values():
                timer.cancel()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            for res, to_key in ((kubeio.DATASETS, _dataset_key), (kubeio.RUNTIMES, _dataset_key)):
                try:
                    items, _ = await self.kube.list(res, self.namespace)
                    for obj in items:
                        key = to_key(obj)
                        if key:
                            self.enqueue(key)
                except (ApiError, OSError) as exc:
                    log.warning("resync of %s failed: %s", res.plural, exc)

    async def _watch(self, res: Resource, to_key: Callable[[dict[str, Any]], Key | None],
                     selector: str) -> None:
        """List, then watch from the list's resourceVersion; list again on 410 Gone or any error."""
        failures = 0
        while True:
            try:
                items, version = await self.kube.list(res, self.namespace, selector or None)
                for obj in items:
                    key = to_key(obj)
                    if key:
                        self.enqueue(key)
                if res is kubeio.DATASETS:
                    self.synced.set()
                while True:
                    async for etype, obj in self.kube.watch(
                        res, self.namespace, version, label_selector=selector or None
                    ):
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if etype == "BOOKMARK":
                            continue
                        key = to_key(obj)
                        if key:
                            self.enqueue(key)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a watch must survive anything the server sends
                log.info("watch of %s restarts after: %s", res.plural, exc)
                failures += 1
                await asyncio.sleep(WATCH_BACKOFF.delay(failures, self.rng))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self._queued.discard(key)
            QUEUE_DEPTH.set(len(self._queued))
            if key in self._active:  # another worker holds it: look again as soon as it is done
                self._dirty.add(key)
                continue
            self._active.add(key)
            try:
                await self.process(key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)

    async def process(self, key: Key) -> None:
        """Reconcile one key; failures are logged, counted and retried with backoff."""
        kind, namespace, name = key
        with RECONCILE_SECONDS.labels(kind).time():
            try:
                if kind == "pod":
                    await self.reconciler.reconcile_pod(namespace, name)
                    again = None
                else:
                    again = await self.reconciler.reconcile_dataset(namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad object must not stop the controller
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = RECONCILE_BACKOFF.delay(failures, self.rng)
                RECONCILES.labels(kind, "error").inc()
                log.warning("reconcile %s %s/%s failed (retry in %.1fs): %s",
                            kind, namespace, name, delay, exc)
                self.enqueue_after(key, delay)
                return
        self._failures.pop(key, None)
        RECONCILES.labels(kind, "ok").inc()
        if again is not None:
            self.enqueue_after(key, again)
