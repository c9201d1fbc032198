"""Read-ahead policy (pure): how far ahead of a reader to fetch, decided from its recent reads.

A reader whose requests follow each other (within a small seek tolerance, so the kernel's slightly
out-of-order read-ahead requests still count) builds a streak; from the second sequential request on,
the window starts at `initial` bytes and doubles per request up to `cap`. A jump beyond the tolerance
resets the streak, so random readers never trigger read-ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ReadaheadPolicy:
    initial: int = 8 * MiB
    cap: int = 32 * MiB
    tolerance: int = 2 * MiB
    min_streak: int = 2

    def window(self, streak: int) -> int:
        if streak < self.min_streak or self.cap <= 0:
            return 0
        return min(self.cap, self.initial << min(streak - self.min_streak, 32))


class ReadaheadState:
    """Per open file: the furthest byte read so far and the current sequential streak."""

    __slots__ = ("_policy", "frontier", "streak")

    def __init__(self, policy: ReadaheadPolicy) -> None:
        self._policy = policy
        self.frontier = -1
        self.streak = 0

    def observe(self, offset: int, size: int) -> int:
        """Record a read of `size` bytes at `offset`; returns the read-ahead window in bytes (0: none)."""
        end = offset + size
        if self.frontier < 0:
            self.streak = 1 if offset == 0 else 0
            self.frontier = end
        elif abs(offset - self.frontier) <= self._policy.tolerance or (
            self.frontier - self._policy.tolerance <= offset <= self.frontier
        ):
            self.streak += 1
            self.frontier = max(self.frontier, end)
        else:
            self.streak = 0
            self.frontier = end
        return self._policy.window(self.streak)
