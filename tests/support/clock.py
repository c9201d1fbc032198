"""A clock for the consumer's tests (preloader.schedule.Clock) that only moves when told to."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta


class ManualClock:
    """`await clock.advance(timedelta(minutes=5))`: the tasks waiting in `sleep_until` for a time now
    passed wake up and run before `advance` returns."""

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
