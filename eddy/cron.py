"""One cron dialect for a DataLoad's `spec.schedule`: what `eddy validate`, the CRD and the preloader's
consumer all accept, so a schedule that passes one never fails in another.

Five fields (minute hour day-of-month month day-of-week), or one of the macros Fluid's scheduler (robfig
cron) and Kubernetes CronJobs accept: @yearly @annually @monthly @weekly @daily @midnight @hourly.
"""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def schedule_problem(schedule: str) -> str | None:
    """None when `schedule` is valid, else why not (without the field path: callers add theirs)."""
    text = schedule.strip()
    if text.startswith("@"):
        return None if text in MACROS else f'"{schedule}" is not a cron macro ({", ".join(MACROS)})'
    if len(text.split()) != 5:
        return f'"{schedule}" is not a 5-field cron schedule (or a macro such as @hourly)'
    if not croniter.is_valid(text):
        return f'"{schedule}" is not a valid cron schedule'
    return None


def next_run(schedule: str, after: datetime) -> datetime:
    """The first scheduled time strictly after `after` (UTC)."""
    value = croniter(schedule.strip(), after.astimezone(UTC)).get_next(datetime)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
