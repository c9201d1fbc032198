"""Pure bookkeeping of the tiered store: which block is on which level, LRU order, and where blocks go.

No file I/O here. `TierIndex.plan_insert` decides, for a block about to land on a level, which blocks
must leave which levels first, and returns the moves in the order the file layer must perform them.

The rule (Fluid/Alluxio watermarks): when a level's usage *with the incoming block* would pass
`high * quota`, least-recently-used blocks leave it until usage with the incoming block is at most
`low * quota` — demoted to the next level (which applies the same rule in turn) or dropped from the
last. A level's usage therefore never passes its quota: a block bigger than a level's quota skips that
level, and a block bigger than every level's quota is refused (`CacheFull`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field


class CacheFull(Exception):
    """The block fits in no level (bigger than every quota)."""


@dataclass
class Entry:
    digest: str
    size: int  # bytes the block's file takes (header + data): what counts against the quota
    data_len: int = 0
    payload: object = None  # what the file layer keeps about the block (its header)
    verified: object = None  # the file's stamp when its checksum last passed (file layer's business)


@dataclass
class Level:
    name: str
    quota: int
    high: float = 0.95
    low: float = 0.7
    used: int = 0
    data_bytes: int = 0  # data bytes (headers excluded) of the blocks here
    entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)  # least recent first

    @property
    def high_bytes(self) -> int:
        return int(self.high * self.quota)

    @property
    def low_bytes(self) -> int:
        return int(self.low * self.quota)


@dataclass(frozen=True)
class Move:
    """One step for the file layer: `dest` None means drop the block (delete its file)."""

    digest: str
    source: int
    dest: int | None


class TierIndex:
    def __init__(self, levels: list[Level]) -> None:
        if not levels:
            raise ValueError("a tiered store needs at least one level")
        self.levels = levels
        self._where: dict[str, int] = {}
        self.evictions = [0] * len(levels)  # blocks that left each level by eviction

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, digest: str) -> bool:
        return digest in self._where

    def locate(self, digest: str) -> tuple[int, Entry] | None:
        i = self._where.get(digest)
        if i is None:
            return None
        return i, self.levels[i].entries[digest]

    def touch(self, digest: str) -> None:
        """Mark a block most recently used."""
        i = self._where.get(digest)
        if i is not None:
            self.levels[i].entries.move_to_end(digest)

    def add(self, level: int, entry: Entry, *, recent: bool = True) -> None:
        """Record a block on a level (its room must have been planned); replaces a stale record."""
        self.remove(entry.digest)
        lvl = self.levels[level]
        lvl.entries[entry.digest] = entry
        if not recent:
            lvl.entries.move_to_end(entry.digest, last=False)
        lvl.used += entry.size
        lvl.data_bytes += entry.data_len
        self._where[entry.digest] = level

    def remove(self, digest: str) -> tuple[int, Entry] | None:
        i = self._where.pop(digest, None)
        if i is None:
            return None
        entry = self.levels[i].entries.pop(digest)
        self.levels[i].used -= entry.size
        self.levels[i].data_bytes -= entry.data_len
        return i, entry

    def target_level(self, size: int, start: int = 0) -> int:
        """The first level from `start` whose quota can hold a block of `size` bytes."""
        for i in range(start, len(self.levels)):
            if size <= self.levels[i].quota:
                return i
        raise CacheFull(f"a {size}-byte block is bigger than every level's quota")

    def plan_insert(self, level: int, digest: str, size: int) -> list[Move]:
        """Moves that make room for a block of `size` bytes on `level`, applied to the index already.

        The incoming block itself is not added (the caller adds it once its file is written). Moves
        are in execution order: room is made on a lower level before anything is demoted into it.
        """
        moves: list[Move] = []
        self._make_room(level, size, exclude=digest, moves=moves)
        return moves

    def _make_room(self, level: int, size: int, exclude: str, moves: list[Move]) -> None:
        lvl = self.levels[level]
        if lvl.used + size <= lvl.high_bytes and lvl.used + size <= lvl.quota:
            return
        victims: list[Entry] = []
        for entry in list(lvl.entries.values()):
            if lvl.used + size <= lvl.low_bytes:
                break
            if entry.digest == exclude:
                continue
            self.remove(entry.digest)
            victims.append(entry)
            self.evictions[level] += 1
        nxt = level + 1
        for entry in victims:
            dest = self._demotion_target(nxt, entry.size)
            if dest is None:
                moves.append(Move(entry.digest, level, None))
                continue
            self._make_room(dest, entry.size, exclude=entry.digest, moves=moves)
            # Demoted blocks are the coldest of their old level; they arrive as the newest of the
            # next one (they were used more recently than anything already demoted there).
            self.add(dest, entry)
            moves.append(Move(entry.digest, level, dest))

    def _demotion_target(self, start: int, size: int) -> int | None:
        for i in range(start, len(self.levels)):
            if size <= self.levels[i].quota:
                return i
        return None

    def iter_entries(self) -> Iterator[tuple[int, Entry]]:
        for i, lvl in enumerate(self.levels):
            for entry in lvl.entries.values():
                yield i, entry

    def clear(self) -> list[tuple[int, Entry]]:
        """Forget every block; returns what was there (for the file layer to delete)."""
        everything = list(self.iter_entries())
        for lvl in self.levels:
            lvl.entries.clear()
            lvl.used = 0
            lvl.data_bytes = 0
        self._where.clear()
        return everything
