"""Time for the consumer: an injectable clock, cron schedules (`policy: Cron`) and retry backoff.

Tests drive a `ManualClock` (advance it, the waiting runs wake up) so a `*/5 * * * *` schedule is
tested without waiting five minutes.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Protocol


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


class ManualClock:
    """A clock that only moves when told to: `await clock.advance(timedelta(minutes=5))`."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._changed = asyncio.Condition()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._now >= when)

    async def advance(self, delta: timedelta) -> None:
        async with self._changed:
            self._now += delta
            self._changed.notify_all()
        for _ in range(5):  # let the woken tasks run
            await asyncio.sleep(0)


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry `attempt` (1-based): exponential with jitter, at most `cap` seconds."""
    step = min(cap, base * 2.0 ** (attempt - 1))
    return step / 2 + rng.uniform(0, step / 2)


def seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())
