"""The DataLoad consumer: turns DataLoad events into runs, one run per DataLoad at a time.

Events come from an informer (list, then watch; see preloader/kubeapi.py) and go to `on_event`, which
never blocks and never raises: each DataLoad gets one task, keyed `namespace/name`, running
preloader/runner.py's `DataLoadRunner.handle` (what a run does: policy Once or Cron, attempts, status).

- Deleting a DataLoad cancels its task (its warm requests stop at once). Events for a DataLoad that
  is already being handled are ignored (our own status patches come back as MODIFIED events): never
  two runs of one DataLoad in parallel. A DataLoad whose handling ended is not started again by a late
  event carrying an older status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from preloader.runner import ConsumerSettings, DataLoadRunner, PreloaderApi, dataload_key
from preloader.schedule import Clock, SystemClock

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    uid: str
    task: asyncio.Task[None]


class Consumer:
    """DataLoad events in, one `DataLoadRunner.handle` task per DataLoad out."""

    def __init__(self, api: PreloaderApi, settings: ConsumerSettings | None = None,
                 clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.api = api
        self.settings = settings or ConsumerSettings()
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.entries: dict[tuple[str, str], _Entry] = {}
        # uid of each DataLoad whose handling ended in this process: a late event carrying an older
        # status (say "Executing" from a progress patch) must not start it again.
        self.finished: dict[tuple[str, str], str] = {}
        self.runner = DataLoadRunner(self.api, self.settings, self.clock, self.rng)

    @property
    def runs_started(self) -> int:
        """Loads started in this process (a resumed or retried DataLoad counts once per run)."""
        return self.runner.runs_started

    # ------------------------------------------------------------------------------------- events
    def on_event(self, type_: str, obj: Mapping[str, Any]) -> None:
        key = dataload_key(obj)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        entry = self.entries.get(key)
        if type_ == "DELETED":
            self.finished.pop(key, None)
            if entry is not None and (not uid or entry.uid == uid):
                log.info("DataLoad %s/%s deleted: cancelling its work", *key)
                entry.task.cancel()
                self.entries.pop(key, None)
            return
        if self.finished.get(key) == uid:
            return
        if entry is not None and not entry.task.done():
            if entry.uid == uid:
                return  # already being handled (our own status patches come back as events)
            entry.task.cancel()  # deleted and re-created under the same name
        task = asyncio.create_task(self.runner.handle(dict(obj)), name=f"dataload {key[0]}/{key[1]}")
        self.entries[key] = _Entry(uid, task)
        task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.task is task:
            self.entries.pop(key, None)
            if not task.cancelled():
                self.finished[key] = entry.uid
        if not task.cancelled() and task.exception() is not None:
            log.error("DataLoad %s/%s: handler crashed: %r", *key, task.exception())

    async def close(self) -> None:
        tasks = [e.task for e in self.entries.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.entries.clear()
