"""eddy.retry: the one backoff policy (steps, jitter, limits) and `retrying`, on a fake clock and sleep."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eddy.retry import RetriesExhausted, RetryPolicy, retrying
from tests.support.clock import FakeTime


def test_steps_grow_by_the_multiplier_up_to_the_maximum() -> None:
    policy = RetryPolicy(initial=0.5, maximum=30.0, jitter=0.0)
    assert [policy.step(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.step(0) == policy.step(-3) == 0.5  # before the first failure counts as the first
    assert policy.step(10**6) == 30.0  # no OverflowError however long it has been failing
    assert RetryPolicy(initial=0.0, maximum=30.0).step(10**6) == 0.0
    assert RetryPolicy(initial=1.0, maximum=100.0, multiplier=3.0).step(4) == 27.0
    no_jitter = RetryPolicy(initial=1.0, maximum=60.0, jitter=0.0)
    assert [no_jitter.delay(n, random.Random(1)) for n in (1, 2, 7)] == [1.0, 2.0, 60.0]


@given(attempt=st.integers(-2, 2000), initial=st.floats(0.0, 10.0), maximum=st.floats(0.0, 100.0),
       jitter=st.sampled_from([0.0, 0.25, 0.5, 1.0]), seed=st.integers(0, 2**32))
def test_delay_stays_within_the_jittered_share_of_the_step(
    attempt: int, initial: float, maximum: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(initial=initial, maximum=maximum, jitter=jitter)
    step = policy.step(attempt)
    assert 0.0 <= step <= maximum
    delay = policy.delay(attempt, random.Random(seed))
    assert step * (1 - jitter) - 1e-9 <= delay <= step + 1e-9


def test_full_and_half_jitter_draw_as_the_copies_they_replace_did() -> None:
    """Same seed, same pauses as the object store's full jitter and the preloader's half jitter."""
    full = RetryPolicy(initial=0.1, maximum=5.0, jitter=1.0)
    half = RetryPolicy(initial=0.25, maximum=4.0, jitter=0.5)
    for n in range(1, 12):
        a, b = random.Random(n), random.Random(n)
        assert full.delay(n, a) == b.uniform(0.0, min(5.0, 0.1 * 2 ** (n - 1)))
        cap = min(4.0, 0.25 * 2.0 ** (n - 1))
        assert half.delay(n, a) == cap / 2 + b.uniform(0, cap / 2)


def test_a_seeded_random_gives_the_same_pauses() -> None:
    policy = RetryPolicy(initial=0.2, maximum=30.0, jitter=0.5)
    first = [policy.delay(n, random.Random(7)) for n in range(1, 10)]
    assert first == [policy.delay(n, random.Random(7)) for n in range(1, 10)]
    assert len(set(policy.delay(3, random.Random(seed)) for seed in range(20))) > 1


def test_pause_stops_at_the_attempt_count_or_the_budget() -> None:
    rng = random.Random(3)
    counted = RetryPolicy(initial=1.0, maximum=1.0, jitter=0.0, attempts=3)
    assert counted.pause(1, 0.0, rng) == 1.0
    assert counted.pause(2, 999.0, rng) == 1.0  # no budget: time does not matter
    assert counted.pause(3, 0.0, rng) is None  # three tries made: spent

    timed = RetryPolicy(initial=1.0, maximum=1.0, jitter=0.0, attempts=None, budget=10.0)
    assert timed.pause(500, 9.0, rng) == 1.0  # ends exactly at the budget: allowed
    assert timed.pause(500, 9.5, rng) is None  # would end past it

    both = RetryPolicy(initial=1.0, maximum=1.0, jitter=0.0, attempts=2, budget=10.0)
    assert both.pause(2, 0.0, rng) is None and both.pause(1, 9.5, rng) is None


@pytest.mark.parametrize("fields", [
    {"initial": -1.0}, {"maximum": -0.1}, {"multiplier": 0.5}, {"jitter": 1.5}, {"jitter": -0.1},
    {"attempts": 0}, {"budget": -1.0},
])
def test_nonsense_policies_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)  # type: ignore[arg-type]


async def test_retrying_retries_the_named_failures_then_returns() -> None:
    time = FakeTime(100.0)
    calls: list[int] = []
    seen: list[tuple[int, float, str]] = []

    async def flaky() -> str:
        calls.append(len(calls))
        if len(calls) < 3:
            raise ConnectionError(f"refused {len(calls)}")
        return "ok"

    policy = RetryPolicy(initial=0.5, maximum=10.0, jitter=0.0, attempts=5)
    result = await retrying(flaky, policy, retry_on=ConnectionError, rng=random.Random(1),
                            sleep=time.sleep, clock=time.clock,
                            on_retry=lambda n, pause, exc: seen.append((n, pause, str(exc))))
    assert result == "ok" and len(calls) == 3
    assert time.slept == [0.5, 1.0]
    assert seen == [(1, 0.5, "refused 1"), (2, 1.0, "refused 2")]


async def test_retrying_gives_up_after_the_attempts_with_the_last_failure() -> None:
    time = FakeTime(100.0)

    async def down() -> None:
        raise TimeoutError(f"try at {time.now:g}")

    policy = RetryPolicy(initial=1.0, maximum=2.0, jitter=0.0, attempts=4)
    with pytest.raises(RetriesExhausted) as info:
        await retrying(down, policy, retry_on=(ConnectionError, TimeoutError), rng=random.Random(1),
                       sleep=time.sleep, clock=time.clock)
    assert info.value.tries == 4 and time.slept == [1.0, 2.0, 2.0]
    assert isinstance(info.value.last, TimeoutError) and info.value.__cause__ is info.value.last
    assert str(info.value.last) == "try at 105"


async def test_retrying_keeps_to_the_time_budget_on_the_injected_clock() -> None:
    time = FakeTime(100.0)

    async def down() -> None:
        raise ConnectionError("down")

    policy = RetryPolicy(initial=1.0, maximum=4.0, jitter=0.0, attempts=None, budget=10.0)
    with pytest.raises(RetriesExhausted) as info:
        await retrying(down, policy, retry_on=ConnectionError, rng=random.Random(1), sleep=time.sleep,
                       clock=time.clock)
    assert time.slept == [1.0, 2.0, 4.0]  # a fourth pause (4 s) would end at 11 s, past the budget
    assert info.value.tries == 4


async def test_retrying_lets_other_failures_through_at_once() -> None:
    time = FakeTime(100.0)
    calls = 0

    async def wrong() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        await retrying(wrong, RetryPolicy(), retry_on=ConnectionError, rng=random.Random(1), sleep=time.sleep,
                       clock=time.clock)
    assert calls == 1 and time.slept == []
