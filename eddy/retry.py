"""One retry policy for every loop that tries again: exponential backoff with jitter, a limit on tries
and/or on time, and an async helper that runs a call under it. Pure: no I/O library, no global state.

The pause after failed try n (1-based) is drawn from a step `min(maximum, initial * multiplier**(n-1))`:
`jitter` is the share of the step that is random, so 1.0 is "full jitter" (uniform in [0, step], AWS's
advice for many clients hitting one server), 0.5 is uniform in [step/2, step] (never much shorter than
planned), 0 is the step itself. Randomness comes from the `random.Random` the caller passes (a seeded
one in tests), time from the clock and sleep it passes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How long to wait between tries and when to stop; see the module docstring for `jitter`."""

    initial: float = 0.1  # seconds: the step after the first failure
    maximum: float = 5.0  # seconds: no step is longer
    multiplier: float = 2.0
    jitter: float = 1.0  # the random share of each step, 0 to 1
    attempts: int | None = 6  # tries in all, the first included; None: no limit
    budget: float | None = None  # seconds: no pause may end later than this after the first try began

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0 or self.multiplier < 1:
            raise ValueError(f"bad backoff: initial {self.initial}, maximum {self.maximum}, "
                             f"multiplier {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter {self.jitter} is not between 0 and 1")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts {self.attempts} is not at least 1 (None means no limit)")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget {self.budget} is negative")

    def step(self, attempt: int) -> float:
        """The pause before jitter after failed try `attempt` (1-based; below 1 counts as 1)."""
        try:
            grown = self.initial * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # multiplier**n past the float range: the cap, unless there is nothing to grow
            grown = self.maximum if self.initial > 0 else 0.0
        return min(self.maximum, grown)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed try `attempt`: the fixed part of the step plus a random part of the rest."""
        step = self.step(attempt)
        if not self.jitter:
            return step
        return step * (1.0 - self.jitter) + rng.uniform(0.0, step * self.jitter)

    def pause(self, failures: int, elapsed: float, rng: random.Random) -> float | None:
        """The pause before the next try once `failures` tries have failed, `elapsed` seconds after the
        first one began; None when the policy is spent (out of tries, or the pause would end past the
        budget)."""
        if self.attempts is not None and failures >= self.attempts:
            return None
        pause = self.delay(failures, rng)
        if self.budget is not None and elapsed + pause > self.budget:
            return None
        return pause


class RetriesExhausted(Exception):
    """The policy is spent; `last` is the final failure (also the `__cause__`), `tries` how many ran."""

    def __init__(self, tries: int, last: BaseException) -> None:
        super().__init__(f"gave up after {tries} tries: {last}")
        self.tries = tries
        self.last = last


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    rng: random.Random,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
) -> T:
    """`await call()`, tried again after a `retry_on` failure while `policy` allows; any other exception
    propagates at once, a spent policy raises `RetriesExhausted` from the last failure.
    `on_retry(failures, pause, error)` runs before each pause (for logs and counters)."""
    start = clock()
    failures = 0
    while True:
        try:
            return await call()
        except retry_on as exc:
            failures += 1
            pause = policy.pause(failures, clock() - start, rng)
            if pause is None:
                raise RetriesExhausted(failures, exc) from exc
            if on_retry is not None:
                on_retry(failures, pause, exc)
            await sleep(pause)
