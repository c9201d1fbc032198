"""The sandbox API server's object store: objects in a dict, one increasing resourceVersion, a bounded
history of changes, and the watch streams that replay and follow it (see sandbox/apiserver.py)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from sandbox.api_kinds import ApiError, Kind, Obj
from sandbox.api_patch import field_match, label_match

Key = tuple[Kind, str, str]  # (kind, namespace or "", name)


@dataclass
class Change:
    rv: int
    kind: Kind
    type: str  # ADDED / MODIFIED / DELETED
    obj: Obj
    old: Obj | None  # the previous state, for selector transitions


@dataclass(eq=False)
class Watcher:
    kind: Kind
    namespace: str | None
    labels: str
    fields: str
    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)


def selected(obj: Obj | None, labels: str, fields: str) -> bool:
    if obj is None:
        return False
    if labels and not label_match(obj["metadata"].get("labels") or {}, labels):
        return False
    return not fields or field_match(obj, fields)


def parse_rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid resourceVersion {text!r}") from None


class Store:
    def __init__(self, history_limit: int) -> None:
        self.history_limit = history_limit
        self.objects: dict[Key, Obj] = {}
        self.rv = 0
        self.history: list[Change] = []
        self.compacted = 0  # watches/lists from a resourceVersion below this answer 410
        self.watchers: set[Watcher] = set()
        self.closing = False

    def items(self, kind: Kind, ns: str | None, labels: str = "", fields: str = "") -> list[tuple[Key, Obj]]:
        """The stored objects of `kind` (in `ns` unless None) the selectors select, by namespace/name."""
        return [
            (key, o)
            for key, o in sorted(self.objects.items(), key=lambda i: i[0][1:])
            if key[0] == kind and (ns is None or key[1] == ns) and selected(o, labels, fields)
        ]

    def record(self, change: Change) -> None:
        self.history.append(change)
        if len(self.history) > self.history_limit:
            drop = len(self.history) - self.history_limit
            self.compacted = self.history[drop - 1].rv
            del self.history[:drop]
        for watcher in list(self.watchers):
            if watcher.kind == change.kind:
                watcher.queue.put_nowait(change)

    def compact(self) -> None:
        self.history.clear()
        self.compacted = self.rv

    def close_watches(self, kind: Kind | None = None) -> None:
        for watcher in list(self.watchers):
            if kind is None or watcher.kind == kind:
                watcher.queue.put_nowait(None)

    @staticmethod
    def translate(watcher: Watcher, change: Change) -> list[tuple[str, Obj]]:
        """What a watcher with selectors sees: objects moving in/out of the selection are ADDED/DELETED."""
        ns_of = change.obj["metadata"].get("namespace", "")
        if watcher.namespace is not None and ns_of != watcher.namespace:
            return []
        is_now = selected(change.obj, watcher.labels, watcher.fields)
        before = change.old is not None and selected(change.old, watcher.labels, watcher.fields)
        if change.type == "DELETED":
            return [("DELETED", copy.deepcopy(change.obj))] if before else []
        if change.type == "ADDED":
            return [("ADDED", copy.deepcopy(change.obj))] if is_now else []
        if is_now and before:
            return [("MODIFIED", copy.deepcopy(change.obj))]
        if is_now:
            return [("ADDED", copy.deepcopy(change.obj))]
        if before:
            return [("DELETED", copy.deepcopy(change.obj))]
        return []

    async def watch(
        self, request: web.Request, kind: Kind, ns: str | None, render: Callable[[Obj], Obj] | None = None
    ) -> web.StreamResponse:
        """A watch stream; `render` turns each object into what is sent (a Table for kubectl -w)."""
        rv_text = request.query.get("resourceVersion", "")
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        watcher = Watcher(kind, ns, labels, fields)
        # Synchronously (no await): take the backlog and subscribe, so no change falls in between.
        initial: list[tuple[str, Obj]] = []
        expired = False
        # The bookmark's resourceVersion may only cover changes this watch has passed on (or filtered
        # out): it starts at what the backlog reflects and moves with each change taken from the queue.
        seen = self.rv
        if rv_text in ("", "0"):
            initial = [("ADDED", copy.deepcopy(o)) for _, o in self.items(kind, ns, labels, fields)]
        else:
            since = parse_rv(rv_text)
            if since < self.compacted:
                expired = True
            else:
                for past in self.history:
                    if past.rv > since and past.kind == kind:
                        initial.extend(self.translate(watcher, past))
        if not expired and not self.closing:
            self.watchers.add(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(etype: str, obj: Obj) -> None:
            if render is not None and etype != "ERROR":
                obj = render(obj)
            await response.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

        try:
            if expired:
                err = ApiError(410, "Expired", f"too old resource version: {rv_text} ({self.compacted})")
                await send("ERROR", err.status())
                return response
            for etype, obj in initial:
                await send(etype, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not self.closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    change = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if change is None:
                    break
                for etype, obj in self.translate(watcher, change):
                    await send(etype, obj)
                seen = max(seen, change.rv)
            if bookmarks and not self.closing and render is None:
                await send(
                    "BOOKMARK",
                    {
                        "kind": kind.kind,
                        "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": str(seen)},
                    },
                )
        finally:
            self.watchers.discard(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
