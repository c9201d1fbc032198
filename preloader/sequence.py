"""A DataLoad's place in a sequence: `spec.runAfter` (wait for another DataLoad to complete) and
`spec.ttlSecondsAfterFinished` (delete the DataLoad that long after it completed or failed).

As Fluid: runAfter names an operation (Eddy runs DataLoads only, so the CRD allows `kind: DataLoad`);
this one stays `Pending` with `status.waitingFor.operationComplete: true` until the named DataLoad is
`Complete`, and fails if that one `Failed`. The TTL applies to `policy: Once` only (Fluid gives Cron and
OnEvent none); `OnEvent` otherwise runs as `Once` does, as Fluid's status handler for it does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from eddy.api import DataLoad
from eddy.retry import RetryPolicy
from preloader import status as st
from preloader.schedule import WAIT_BACKOFF, Clock

log = logging.getLogger(__name__)


class SequenceApi(Protocol):
    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    async def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...

    async def delete(self, kind: str, namespace: str, name: str) -> None: ...


class PredecessorFailed(Exception):
    """The DataLoad named in runAfter failed; the message says which."""


async def wait_run_after(api: SequenceApi, dl: DataLoad, obj: Mapping[str, Any], clock: Clock,
                         conditions: list[dict[str, Any]], *, backoff: RetryPolicy = WAIT_BACKOFF,
                         rng: random.Random | None = None,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Return once `spec.runAfter`'s DataLoad is Complete (at once without runAfter)."""
    ref = dl.run_after
    if ref is None:
        return
    ns, name = dl.meta.namespace, dl.meta.name
    attempt = 0
    while True:
        doc = await api.get("DataLoad", ref.namespace, ref.name)
        phase = ((doc or {}).get("status") or {}).get("phase")
        if phase == st.COMPLETE:
            if attempt:
                log.info("DataLoad %s/%s: %s/%s completed, starting", ns, name, ref.namespace, ref.name)
            return
        if phase == st.FAILED:
            raise PredecessorFailed(f"spec.runAfter: DataLoad {ref.namespace}/{ref.name} failed")
        attempt += 1
        if attempt == 1:
            state = "does not exist yet" if doc is None else f"is {phase or 'not started'}"
            message = f"waiting for DataLoad {ref.namespace}/{ref.name} (spec.runAfter): it {state}"
            status = st.pending_status("WaitingForRunAfter", message, clock.now(), conditions)
            status["waitingFor"] = {"operationComplete": True}
            conditions[:] = status["conditions"]
            await api.patch_status("DataLoad", ns, name, status)
            await api.event(obj, "Normal", "WaitingForRunAfter", message)
        await sleep(backoff.delay(attempt, rng or random.Random()))


async def expire(api: SequenceApi, dl: DataLoad, clock: Clock) -> bool:
    """Delete a finished `Once` DataLoad `ttlSecondsAfterFinished` after its completionTime; False when
    it has no TTL (or is not finished)."""
    ttl = dl.ttl_seconds_after_finished
    if ttl is None or dl.policy != "Once":
        return False
    ns, name = dl.meta.namespace, dl.meta.name
    doc = await api.get("DataLoad", ns, name)
    status = (doc or {}).get("status") or {}
    if doc is None or status.get("phase") not in (st.COMPLETE, st.FAILED):
        return False
    finished = st.parse_time(status.get("completionTime")) or clock.now()
    await clock.sleep_until(finished + timedelta(seconds=ttl))
    log.info("DataLoad %s/%s: ttlSecondsAfterFinished (%ds) passed, deleting it", ns, name, ttl)
    await api.delete("DataLoad", ns, name)
    return True
