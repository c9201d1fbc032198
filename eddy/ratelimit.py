"""One token bucket: a rate cap (bytes or requests per second) shared by many coroutines. Pure: the
clock and the sleep are injected, no I/O library is imported.

`reserve(n)` takes n tokens at once, even into debt, and says how long the caller must wait for that
debt to be paid back; `acquire(n)` reserves and sleeps that long. Waiters are served in the order they
reserve, and one asking for more than the burst simply waits its share instead of never fitting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from eddy.retry import Sleep


class TokenBucket:
    """`rate` tokens a second, up to `burst` saved up (default: one second's worth); `rate <= 0` means
    unlimited."""

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(0.0, self.rate))
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.burst
        self.stamp = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def reserve(self, amount: float) -> float:
        """Take `amount` tokens now; the seconds to wait before using them (0 while the bucket holds them)."""
        if self.unlimited:
            return 0.0
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    async def acquire(self, amount: float) -> None:
        """Wait until `amount` tokens may be used."""
        wait = self.reserve(amount)
        if wait > 0:
            await self.sleep(wait)
