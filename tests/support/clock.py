"""Clocks for tests: `ManualClock` (preloader.schedule.Clock: datetimes, moved by `advance`) and `FakeTime`
(the monotonic seconds eddy.retry and eddy.ratelimit take, moved by `sleep`)."""

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


class FakeTime:
    """Monotonic seconds (eddy.retry / eddy.ratelimit's `clock`) that move only by `sleep`, which also
    records the pauses asked for: `clock=time.clock, sleep=time.sleep`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
