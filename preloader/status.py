"""DataLoad and Dataset status, pure: phases, durations, conditions, progress and the post-load check.

Everything here takes values and returns dicts ready for a merge patch on the status subresource; the
consumer and `eddy preload` only send them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eddy.quantity import human_size, percentage
from preloader.dispatch import Progress

PENDING, EXECUTING, COMPLETE, FAILED = "Pending", "Executing", "Complete", "Failed"
UNFINISHED = "Unfinished"

# Condition types (each with status "True" when it holds).
COND_WAITING = "Waiting"  # Pending for a reason: the Dataset does not exist yet
COND_EXECUTING = "Executing"
COND_COMPLETE = "Complete"
COND_FAILED = "Failed"
COND_PARTIAL = "PartiallyCached"  # Complete, but the cache could not hold all of the target
COND_OPTIONS = "OptionsIgnored"  # unknown or malformed spec.options
COND_RETRYING = "Retrying"  # an attempt failed and another follows (backoffLimit); False once one succeeds


def format_duration(seconds: float) -> str:
    """A duration as Fluid prints a DataLoad's: Go's `Duration.String()` rounded to the second.

    `45s`, `2m0s`, `1h2m5s`, `25h0m0s` (Go has no days). Fluid computes it with
    `finish.Sub(start).Round(time.Second).String()`, and tools that parse the column expect that form.
    """
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]], type_: str, status: str, reason: str, message: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """The list with one condition of `type_` set; its lastTransitionTime moves only if status changes."""
    out: list[dict[str, Any]] = []
    transition = rfc3339(now)
    for cond in conditions:
        if cond.get("type") == type_:
            if cond.get("status") == status and cond.get("lastTransitionTime"):
                transition = str(cond["lastTransitionTime"])
            continue
        out.append(dict(cond))
    out.append({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastProbeTime": rfc3339(now), "lastTransitionTime": transition,
    })
    return out


def progress_status(p: Progress, now: float | None = None) -> dict[str, Any]:
    """Progress as shown in `status.progress` (Fluid reports none; this is Eddy's addition)."""
    rate = p.throughput(now)
    return {
        "totalFiles": p.files_total,
        "loadedFiles": p.files_loaded,
        "totalBytes": p.bytes_total,
        "loadedBytes": p.bytes_loaded,
        "totalBlocks": p.blocks_total,
        "loadedBlocks": p.blocks_loaded,
        "failedBlocks": p.blocks_failed,
        "alreadyCachedBlocks": p.warm_cached,
        "fetchedBlocks": p.warm_fetched,
        "loaded": f"{human_size(p.bytes_loaded)}/{human_size(p.bytes_total)}",
        "percentage": percentage(p.bytes_loaded, p.bytes_total) if p.bytes_total else "100.0%",
        "throughput": f"{human_size(rate)}/s",
    }


@dataclass
class Verification:
    """What the workers' stats say after a load."""

    assigned_bytes: int = 0
    held_bytes: int = 0  # of the assigned bytes, what the workers still hold (capped per worker)
    cached_bytes: int = 0  # everything the workers hold (the Dataset's CACHED)
    capacity_bytes: int = 0
    short_workers: list[str] = field(default_factory=list)  # "url holds X of Y (quota ...)"
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return 1.0 if self.assigned_bytes == 0 else self.held_bytes / self.assigned_bytes


def verify(assigned: Mapping[str, int], stats: Mapping[str, Mapping[str, Any] | str]) -> Verification:
    """Compare what each worker was asked to hold with its `/v1/stats` (a str = the stats call failed).

    A worker serves one dataset, so its `cached_bytes` at least covers the target's blocks it still
    holds; the share is `min(cached, assigned)` summed over workers, divided by the assigned bytes.
    """
    v = Verification()
    for url in sorted(set(assigned) | set(stats)):
        want = assigned.get(url, 0)
        v.assigned_bytes += want
        doc = stats.get(url)
        if not isinstance(doc, Mapping):
            v.unreachable[url] = str(doc) if doc is not None else "no stats"
            continue
        cached = int(doc.get("cached_bytes") or 0)
        levels = doc.get("levels") or []
        quota = sum(int(level.get("quota") or 0) for level in levels if isinstance(level, Mapping))
        v.cached_bytes += cached
        v.capacity_bytes += quota
        held = min(cached, want)
        v.held_bytes += held
        if held < want:
            tiers = ", ".join(
                f"{level.get('mediumtype')} quota {human_size(int(level.get('quota') or 0))}"
                f" (high {level.get('high')})"
                for level in levels if isinstance(level, Mapping)
            )
            v.short_workers.append(
                f"{url} holds {human_size(held)} of the {human_size(want)} assigned to it "
                f"({tiers or 'no tiers'})"
            )
    return v


def executing_status(started: datetime, progress: Progress | None, now: datetime,
                     conditions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": EXECUTING,
        "duration": UNFINISHED,
        "startTime": rfc3339(started),
        "conditions": set_condition(conditions, COND_EXECUTING, "True", "LoadStarted",
                                    "warming the workers' cache", now),
    }
    if progress is not None:
        status["progress"] = progress_status(progress)
    return status


def pending_status(reason: str, message: str, now: datetime,
                   conditions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {
        "phase": PENDING,
        "duration": UNFINISHED,
        "conditions": set_condition(conditions, COND_WAITING, "True", reason, message, now),
    }


def failed_status(reason: str, message: str, started: datetime | None, now: datetime,
                  conditions: Sequence[Mapping[str, Any]] = (), progress: Progress | None = None,
                  ) -> dict[str, Any]:
    conds = [c for c in conditions if c.get("type") not in (COND_WAITING, COND_EXECUTING, COND_COMPLETE)]
    status: dict[str, Any] = {
        "phase": FAILED,
        "duration": format_duration((now - (started or now)).total_seconds()),
        "completionTime": rfc3339(now),
        "conditions": set_condition(conds, COND_FAILED, "True", reason, message, now),
    }
    if progress is not None:
        status["progress"] = progress_status(progress)
    return status


@dataclass(frozen=True)
class Outcome:
    """The end of one load: the final phase with its reason, and the figures behind it."""

    phase: str
    reason: str
    message: str
    partial: str = ""  # the PartiallyCached message, when Complete with less than 100% held
    cached_share: float = 1.0


def judge(progress: Progress, verification: Verification) -> Outcome:
    """Complete, Complete-but-partial, or Failed, with a message that says exactly what."""
    if progress.failed_workers or verification.unreachable:
        down = {**verification.unreachable, **progress.failed_workers}
        which = "; ".join(f"{url}: {why}" for url, why in sorted(down.items()))
        return Outcome(FAILED, "WorkersUnreachable",
                       f"{len(down)} of the workers could not be reached after retries: {which}")
    other_errors = progress.warm_failed - progress.cache_full
    if other_errors > 0:
        return Outcome(FAILED, "BlocksFailed",
                       f"{progress.blocks_failed} of {progress.blocks_total} blocks could not be loaded: "
                       + "; ".join(progress.errors))
    share = verification.share
    if share < 1.0 or progress.cache_full:
        loaded = human_size(verification.held_bytes)
        want = human_size(verification.assigned_bytes)
        why = "; ".join(verification.short_workers)
        if progress.cache_full:
            full = f"{progress.cache_full} blocks did not fit in any cache level"
            why = f"{full}; {why}" if why else full
        message = (f"{percentage(verification.held_bytes, verification.assigned_bytes)} of the target is "
                   f"cached ({loaded} of {want}): the cache tier quota is too small to hold it: {why}")
        return Outcome(COMPLETE, "CacheQuotaTooSmall", "loaded, but not all of it fits in the cache",
                       partial=message, cached_share=share)
    return Outcome(COMPLETE, "DataLoadComplete",
                   f"{progress.files_loaded} files ({human_size(progress.bytes_loaded)}) cached "
                   f"on {len(progress.assigned_bytes)} workers")


def complete_status(outcome: Outcome, progress: Progress, started: datetime, now: datetime,
                    conditions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    if outcome.phase == FAILED:
        return failed_status(outcome.reason, outcome.message, started, now, conditions, progress)
    conds: list[dict[str, Any]] = [
        dict(c) for c in conditions
        if c.get("type") not in (COND_WAITING, COND_EXECUTING, COND_FAILED, COND_PARTIAL)
    ]
    conds = set_condition(conds, COND_COMPLETE, "True", outcome.reason, outcome.message, now)
    if outcome.partial:
        conds = set_condition(conds, COND_PARTIAL, "True", "CacheQuotaTooSmall", outcome.partial, now)
    status: dict[str, Any] = {
        "phase": COMPLETE,
        "duration": format_duration((now - started).total_seconds()),
        "completionTime": rfc3339(now),
        "conditions": conds,
        "progress": progress_status(progress),
    }
    status["progress"]["cachedPercentage"] = percentage(outcome.cached_share, 1.0)
    return status


def dataset_cache_states(cached_bytes: int, total_bytes: int, capacity_bytes: int) -> dict[str, Any]:
    """`status.cacheStates` of the Dataset, as Fluid prints it (`1.16GiB`, `100.0%`)."""
    states: dict[str, Any] = {"cached": human_size(cached_bytes),
                              "cachedPercentage": percentage(cached_bytes, total_bytes)}
    if capacity_bytes:
        states["cacheCapacity"] = human_size(capacity_bytes)
    return states
