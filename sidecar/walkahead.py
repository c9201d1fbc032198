"""Walk-ahead (pure): when a reader opens the files of a directory one after another, fetch the next ones.

`cp -r`, `tar`, `rsync` and most data loaders open a directory's files in order. Each small file then
costs a round trip to a worker that the byte read-ahead cannot hide, because the next file is a new
handle. This detector watches opens: once a file is opened right after its predecessor in the same
directory (sorted names, which is also inode order here and what `readdir` returns), it names the
following files to prefetch, up to a byte and file budget ahead of the reader. A reader that jumps
around (a random-access data loader) never forms a streak and triggers nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class WalkaheadPolicy:
    window_bytes: int = 16 * MiB  # how far ahead of the reader, in file bytes
    max_files: int = 32  # and in files
    max_file_size: int = 8 * MiB  # larger files have byte read-ahead of their own


class WalkaheadState:
    """The last open (directory, index), how far ahead of it prefetch was already asked, and how many
    file bytes lie between the two (so each open costs O(1) plus the files it adds, not O(window))."""

    __slots__ = ("_ahead", "_ahead_bytes", "_last", "_policy")

    def __init__(self, policy: WalkaheadPolicy) -> None:
        self._policy = policy
        self._last: tuple[int, int] = (-1, -1)  # (directory inode, index of the last opened file)
        self._ahead: tuple[int, int] = (-1, -1)  # (directory inode, first index not yet prefetched)
        self._ahead_bytes = 0  # bytes of the files after the last opened one and before `_ahead`

    def observe(self, directory: int, index: int, count: int, size_of: Callable[[int], int]) -> range:
        """Record the open of entry `index` of a directory of `count` entries, `size_of(i)` giving each
        entry's size (-1 for a subdirectory); returns the indexes to prefetch (an empty range if none).

        Only the opened entry and the entries the window grows by are looked at."""
        last_dir, last_index = self._last
        self._last = (directory, index)
        if last_dir != directory or index != last_index + 1 or self._policy.window_bytes <= 0:
            self._ahead, self._ahead_bytes = (-1, -1), 0  # no streak: a new one starts from scratch
            return range(0)
        ahead_dir, ahead = self._ahead
        if ahead_dir == directory and ahead > index:
            self._ahead_bytes -= max(size_of(index), 0)  # this file is the reader's now, not ahead of it
            start = ahead
        else:
            self._ahead_bytes, start = 0, index + 1
        budget, stop = self._policy.window_bytes - self._ahead_bytes, start
        while stop < count and stop - index <= self._policy.max_files and budget > 0:
            size = size_of(stop)
            if size > self._policy.max_file_size:
                break
            budget -= max(size, 0)
            self._ahead_bytes += max(size, 0)
            stop += 1
        if stop <= start:
            return range(0)
        self._ahead = (directory, stop)
        return range(start, stop)
