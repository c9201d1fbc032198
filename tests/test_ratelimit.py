"""eddy.ratelimit: the one token bucket (the preloader's bandwidth option, the sandbox link), on a fake
clock and sleep."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eddy.ratelimit import TokenBucket
from tests.support.clock import FakeTime


async def test_the_burst_goes_at_once_then_the_rate_paces() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=1000, burst=1000, clock=time.clock, sleep=time.sleep)
    await bucket.acquire(1000)
    assert time.slept == []
    await bucket.acquire(500)
    assert time.slept == [pytest.approx(0.5)]
    time.now += 10  # idle: refills to the burst, not beyond
    await bucket.acquire(1000)
    assert time.slept == [pytest.approx(0.5)]
    await bucket.acquire(1)
    assert time.slept[-1] == pytest.approx(0.001)


def test_the_default_burst_is_one_second_of_the_rate() -> None:
    bucket = TokenBucket(rate=250, clock=lambda: 0.0)
    assert bucket.burst == 250 and bucket.reserve(250) == 0.0 and bucket.reserve(50) == pytest.approx(0.2)


def test_unlimited_never_waits() -> None:
    free = TokenBucket(0, clock=lambda: 0.0)
    assert free.unlimited and free.reserve(10**12) == 0.0 and free.reserve(10**12) == 0.0
    assert TokenBucket(-5, clock=lambda: 0.0).reserve(1) == 0.0


def test_more_than_the_burst_waits_its_share_and_later_callers_queue_behind() -> None:
    bucket = TokenBucket(rate=100, burst=10, clock=lambda: 0.0)
    assert bucket.reserve(210) == pytest.approx(2.0)  # 10 saved up, 200 owed
    assert bucket.reserve(50) == pytest.approx(2.5)  # served after the first: its debt comes first


async def test_concurrent_waiters_share_the_rate_in_order() -> None:
    slept: list[float] = []
    done: list[int] = []

    async def sleep(seconds: float) -> None:  # time stands still: every waiter reserves at t=0
        slept.append(seconds)
        await asyncio.sleep(0)

    bucket = TokenBucket(rate=100, burst=100, clock=lambda: 0.0, sleep=sleep)

    async def send(n: int) -> None:
        await bucket.acquire(100)
        done.append(n)

    await asyncio.gather(*(send(n) for n in range(4)))
    # The first uses the burst; the others owe 1, 2 and 3 seconds of the rate, in the order they asked.
    assert slept == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]
    assert done[0] == 0 and sorted(done) == [0, 1, 2, 3]


@given(rate=st.floats(1.0, 1e9), amounts=st.lists(st.integers(1, 10**8), min_size=1, max_size=30))
def test_with_no_time_passing_the_wait_is_the_debt_over_the_rate(rate: float, amounts: list[int]) -> None:
    """Whatever the sizes, n tokens asked in a burst-sized bucket cost (n - burst) / rate seconds."""
    bucket = TokenBucket(rate=rate, clock=lambda: 0.0)
    waits = [bucket.reserve(n) for n in amounts]
    expected = max(0.0, (sum(amounts) - rate) / rate)
    assert waits[-1] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert waits == sorted(waits)  # later reservations never jump the queue
