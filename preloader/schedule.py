"""Time for the consumer: an injectable clock (cron schedules wait on it) and the consumer's backoffs.

Tests pass a clock that moves only when told to (tests/support/clock.py), so a `*/5 * * * *` schedule
is tested without waiting five minutes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol

from eddy.retry import RetryPolicy

# Waiting for an object that does not exist yet (the Dataset, its runtime, a runAfter DataLoad):
# 1 s, 2 s, 4 s... up to 30 s, each between half and all of that, for as long as it takes.
WAIT_BACKOFF = RetryPolicy(initial=1.0, maximum=30.0, jitter=0.5, attempts=None)
# Between two attempts of one DataLoad (backoffLimit counts them): 10 s, 20 s, 40 s... up to 6 min, as
# a Job's pod replacement; jittered like the waits.
ATTEMPT_BACKOFF = RetryPolicy(initial=10.0, maximum=360.0, jitter=0.5, attempts=None)


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime) -> None: ...


class SystemClock:
    """Wall-clock time (UTC); waits in slices so a clock change is noticed within a minute."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        left = (when - self.now()).total_seconds()
        while left > 0:
            await asyncio.sleep(min(left, 60.0))
            left = (when - self.now()).total_seconds()
