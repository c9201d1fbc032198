"""Status of a Dataset and its JindoRuntime: pure functions of what the controller observed.

Eddy has no master process and no FUSE DaemonSet, so the runtime's three phases report this:

- `masterPhase` — the control plane of the runtime, i.e. this controller: `Ready` once the runtime's
  objects (config, worker Service and StatefulSet, PV/PVC) are applied and up to date; `NotReady` while
  the Dataset is missing or invalid.
- `workerPhase` — the worker StatefulSet: `Ready` when every replica is ready, `PartialReady` when some
  are, `NotReady` when none (or zero replicas are asked for).
- `fusePhase` — what a FUSE sidecar needs to start: `Ready` once the sidecar config (ConfigMap) and the
  PVC the webhook recognises exist; the sidecars themselves live in application pods.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eddy.api import Dataset, JindoRuntime
from eddy.quantity import human_size, percentage

READY, PARTIAL, NOT_READY = "Ready", "PartialReady", "NotReady"
BOUND, NOT_BOUND, FAILED = "Bound", "NotBound", "Failed"


@dataclass(frozen=True)
class Condition:
    type: str
    ok: bool
    reason: str
    message: str = ""


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None, new: Sequence[Condition], now: str
) -> list[dict[str, Any]]:
    """Conditions as the API stores them; a condition whose status did not change keeps its times."""
    old = {str(c.get("type")): c for c in previous or [] if isinstance(c, Mapping)}
    out: list[dict[str, Any]] = []
    for cond in new:
        status = "True" if cond.ok else "False"
        item = {"type": cond.type, "status": status, "reason": cond.reason, "message": cond.message}
        before = old.get(cond.type)
        same = before is not None and all(before.get(k) == v for k, v in item.items())
        if same and before is not None:
            item["lastTransitionTime"] = str(before.get("lastTransitionTime") or now)
            item["lastUpdateTime"] = str(before.get("lastUpdateTime") or now)
        else:
            item["lastTransitionTime"] = now
            item["lastUpdateTime"] = now
        out.append(item)
    return out


def worker_phase(desired: int, ready: int) -> str:
    if desired > 0 and ready >= desired:
        return READY
    return PARTIAL if ready > 0 else NOT_READY


def read_only_condition(ds: Dataset) -> Condition:
    """Eddy's cache is read-only; a read-write access mode gets this condition (and a warning Event)
    rather than a silent EROFS at the first write."""
    modes = ", ".join(m for m in ds.access_modes if m != "ReadOnlyMany")
    return Condition("ReadOnlyCache", True, "ReadWriteRequested",
                     f"spec.accessModes asks for {modes}, but Eddy serves the dataset read-only: "
                     "writes under the mount fail with EROFS (read-only file system)")


def dataset_status(
    *,
    phase: str,
    ufs_total: int | None,
    cached: int,
    capacity: int,
    conditions: list[dict[str, Any]],
    files: int | None = None,
    runtime: JindoRuntime | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "cacheStates": {
            "cached": human_size(cached),
            "cacheCapacity": human_size(capacity),
            "cachedPercentage": percentage(cached, ufs_total or 0),
        },
        "conditions": conditions,
    }
    if ufs_total is not None:
        status["ufsTotal"] = human_size(ufs_total)
    if files is not None:
        status["fileNum"] = str(files)  # Fluid's type: a string
    if runtime is not None:  # Fluid's binding record (`status.runtimes`)
        status["runtimes"] = [{"name": runtime.meta.name, "namespace": runtime.meta.namespace,
                               "category": "Accelerate", "type": "jindo", "masterReplicas": 1}]
    return status


def runtime_status(
    *, applied: bool, desired: int, ready: int, fuse_ready: bool, conditions: list[dict[str, Any]],
    current: int = 0, fuses: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """Fluid's runtime status. The "master" is this controller (1 once the objects are applied); the
    "fuses" are the injected sidecars of the Dataset's running pods (scheduled, ready)."""
    master = 1 if applied else 0
    return {
        "masterPhase": READY if applied else NOT_READY,
        "workerPhase": worker_phase(desired, ready) if applied else NOT_READY,
        "fusePhase": READY if fuse_ready else NOT_READY,
        "workerNumberReady": ready,
        "workerNumberAvailable": ready,
        "workerNumberUnavailable": max(0, desired - ready),
        "desiredWorkerNumberScheduled": desired,
        "currentWorkerNumberScheduled": current,
        "desiredMasterNumberScheduled": 1,
        "currentMasterNumberScheduled": master,
        "masterNumberReady": master,
        "desiredFuseNumberScheduled": fuses[0],
        "currentFuseNumberScheduled": fuses[0],
        "fuseNumberReady": fuses[1],
        "fuseNumberAvailable": fuses[1],
        "fuseNumberUnavailable": max(0, fuses[0] - fuses[1]),
        "conditions": conditions,
    }


def setup_duration(created: str, status: dict[str, Any], now: str) -> str:
    """Go's Duration.String() from the runtime's creation to its workers being Ready ("" before)."""
    if status.get("workerPhase") != READY or not created:
        return ""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    try:
        seconds = (dt.datetime.strptime(now, fmt) - dt.datetime.strptime(created, fmt)).total_seconds()
    except ValueError:
        return ""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def differs(desired: Any, live: Any) -> bool:
    """True when `desired` is not contained in `live` (extra live fields, e.g. server defaults, are fine)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return True
        return any(differs(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return True
        return any(differs(d, v) for d, v in zip(desired, live, strict=True))
    return bool(desired != live)
