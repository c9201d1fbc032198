"""The tiered block store: levels (MEM → SSD → HDD) of block files, driven by the pure `TierIndex`.

Reads take no lock: they find a block in the index and read its file (a block that moves or leaves
meanwhile shows up as FileNotFoundError, and the reader looks again once pending moves are done).
Every change (write, eviction, demotion, promotion, discard, purge) runs under one asyncio lock, with
the file work in a thread, so the index and the files never disagree for longer than one such step.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eddy.blocks import BlockRef
from worker.blockfile import (
    BlockHeader,
    Body,
    Stamp,
    block_path,
    body_length,
    encode_header,
    file_stamp,
    move_block,
    remove_block,
    scan_level,
    write_block,
)
from worker.eviction import CacheFull, Entry, Level, Move, TierIndex

log = logging.getLogger(__name__)

INLINE_WRITE_MAX = 512 << 10  # MEM-level blocks up to this size are written on the event loop (see put)

__all__ = ["CacheFull", "CacheWriteError", "Hit", "LevelConfig", "TierStore", "TierStoreError"]


class TierStoreError(Exception):
    """The store cannot start (a level directory is unusable or used by another worker)."""


class CacheWriteError(Exception):
    """Writing a block failed (disk full, I/O error); nothing was kept and nothing is corrupted."""


@dataclass(frozen=True)
class LevelConfig:
    mediumtype: str
    path: Path  # this worker's own directory on the level's medium
    quota: int
    high: float = 0.95
    low: float = 0.7


@dataclass(frozen=True)
class Hit:
    """A block found in the store: where its file is, and its header (offset, length, CRC)."""

    level: int
    mediumtype: str
    path: Path
    header: BlockHeader
    entry: Entry


class TierStore:
    def __init__(self, levels: Sequence[LevelConfig], *, promote: bool = True) -> None:
        self.configs = list(levels)
        self.index = TierIndex([Level(c.mediumtype, c.quota, c.high, c.low) for c in self.configs])
        self.roots = [c.path / "blocks" for c in self.configs]
        self.promote_enabled = promote
        self._lock = asyncio.Lock()
        self._lock_files: list[int] = []
        self._promoting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.discarded_at_start = 0
        self.corrupt = 0
        self.promotions = 0
        self.demotions = 0
        self.drops = 0
        # Told the digest of every block whose file leaves its level (evicted, demoted, dropped,
        # discarded, replaced, purged): the service's mappings of MEM blocks (worker/mapped.py).
        self.on_leave: Callable[[str], None] = lambda digest: None

    # ------------------------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Claim the level directories and rebuild the index from the block files found there."""
        await asyncio.to_thread(self._claim_dirs)
        for i, root in enumerate(self.roots):
            found, discarded = await asyncio.to_thread(scan_level, root)
            self.discarded_at_start += discarded
            dropped: list[str] = []
            for block in found:
                digest = block.header.ref.digest
                if digest in self.index:
                    dropped.append(digest)  # the same block on two levels: a move was cut short
                    continue
                size = block.header.file_size
                if size > self.configs[i].quota:
                    dropped.append(digest)
                    continue
                self.index.add(i, Entry(digest, size, block.header.data_len, block.header))
            lvl = self.index.levels[i]
            while lvl.used > lvl.high_bytes and lvl.entries:  # the quota shrank since the last run
                oldest = next(iter(lvl.entries))
                self.index.remove(oldest)
                dropped.append(oldest)
            for digest in dropped:
                await asyncio.to_thread(remove_block, root, digest)
            self.discarded_at_start += len(dropped)
            log.info(
                "level %s (%s): %d blocks, %d bytes found; %d files discarded",
                lvl.name, self.configs[i].path, len(lvl.entries), lvl.used, discarded + len(dropped),
            )

    def _claim_dirs(self) -> None:
        for config, root in zip(self.configs, self.roots, strict=True):
            try:
                root.mkdir(parents=True, exist_ok=True)
                fd = os.open(config.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise TierStoreError(
                    f"level {config.mediumtype}: cannot use {config.path}: {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise TierStoreError(
                    f"level {config.mediumtype}: {config.path} is in use by another worker"
                ) from None
            self._lock_files.append(fd)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fd in self._lock_files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lock_files.clear()

    # ----------------------------------------------------------------------------------------- reads
    def lookup(self, ref: BlockRef) -> Hit | None:
        """The block's file if the store holds this exact block (same sizes), marking it recently used."""
        digest = ref.digest  # a hash: computed once per lookup
        found = self.index.locate(digest)
        if found is None:
            return None
        level, entry = found
        header = entry.payload
        assert isinstance(header, BlockHeader)
        if header.ref != ref:
            return None  # same identity, other object/block size: the caller refetches and replaces
        self.index.touch(digest)
        path = block_path(self.roots[level], digest)
        return Hit(level, self.configs[level].mediumtype, path, header, entry)

    async def settled(self) -> None:
        """Wait until the change in progress (if any) is done."""
        async with self._lock:
            pass

    def maybe_promote(self, hit: Hit) -> None:
        """After a read from a lower level: move the block up if the top level has room without evicting."""
        if not self.promote_enabled or hit.level == 0 or hit.entry.digest in self._promoting:
            return
        top = self.index.levels[0]
        if top.used + hit.entry.size > top.high_bytes:
            return
        self._promoting.add(hit.entry.digest)
        task = asyncio.create_task(self._promote(hit))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _promote(self, hit: Hit) -> None:
        digest = hit.entry.digest
        try:
            async with self._lock:
                found = self.index.locate(digest)
                if found is None or found[1] is not hit.entry or found[0] == 0:
                    return
                top = self.index.levels[0]
                if top.used + hit.entry.size > top.high_bytes:
                    return
                level = found[0]
                self.index.remove(digest)
                try:
                    await asyncio.to_thread(
                        move_block, block_path(self.roots[level], digest), self.roots[0], digest
                    )
                except OSError as exc:
                    log.warning("promoting a block from %s failed: %s", hit.mediumtype, exc.strerror)
                    await asyncio.to_thread(remove_block, self.roots[level], digest)
                    return
                self.index.add(0, hit.entry)
                self.promotions += 1
        finally:
            self._promoting.discard(digest)

    async def discard(self, hit: Hit) -> bool:
        """Drop a block found corrupt (only if the index still holds that very copy)."""
        async with self._lock:
            found = self.index.locate(hit.entry.digest)
            if found is None or found[1] is not hit.entry:
                return False
            self.index.remove(hit.entry.digest)
            self.on_leave(hit.entry.digest)
            self.corrupt += 1
            await asyncio.to_thread(remove_block, self.roots[found[0]], hit.entry.digest)
            return True

    # ---------------------------------------------------------------------------------------- writes
    async def put(self, ref: BlockRef, data: Body, data_crc: int) -> str:
        """Keep a block; returns the level it landed on. Raises CacheFull or CacheWriteError."""
        digest = ref.digest
        length = body_length(data)
        size = len(encode_header(ref, length, data_crc)) + length
        async with self._lock:
            found = self.index.locate(digest)
            if found is not None:
                old = found[1].payload
                assert isinstance(old, BlockHeader)
                if old.ref == ref and old.data_crc == data_crc:
                    self.index.touch(digest)
                    return self.configs[found[0]].mediumtype
                self.index.remove(digest)
                self.on_leave(digest)
                await asyncio.to_thread(remove_block, self.roots[found[0]], digest)
            level = self.index.target_level(size)
            moves = self.index.plan_insert(level, digest, size)
            await self._apply(moves)
            try:
                if length <= INLINE_WRITE_MAX and self.configs[level].mediumtype.partition(".")[0] == "MEM":
                    # A small block on tmpfs is written here: a memory copy that cannot wait for a disk,
                    # cheaper than the thread hop (84% of the blocks of the preload benchmark's mix).
                    written, stamp = self._write(level, ref, data, data_crc)
                else:
                    written, stamp = await asyncio.to_thread(self._write, level, ref, data, data_crc)
            except OSError as exc:
                raise CacheWriteError(
                    f"writing a block to level {self.configs[level].mediumtype} failed: {exc.strerror}"
                ) from None
            # Its CRC32C was computed from the very bytes just written: the block counts as checked now,
            # so the first hit after a preload costs a `stat`, not a checksum pass (until the file changes
            # or --reverify-after passes, as for any checked block).
            entry = Entry(digest, written.file_size, written.data_len, written)
            entry.verified = (stamp, time.monotonic())
            self.index.add(level, entry)
            return self.configs[level].mediumtype

    def _write(
        self, level: int, ref: BlockRef, data: Body, data_crc: int
    ) -> tuple[BlockHeader, Stamp]:
        header = write_block(self.roots[level], ref, data, data_crc)
        return header, file_stamp(block_path(self.roots[level], ref.digest))

    async def _apply(self, moves: list[Move]) -> None:
        if not moves:
            return
        for move in moves:
            self.on_leave(move.digest)
        failed = await asyncio.to_thread(self._apply_files, moves)
        for move in moves:
            if move.dest is None:
                self.drops += 1
            else:
                self.demotions += 1
        for move in failed:  # a demotion that could not be done became a drop
            self.index.remove(move.digest)

    def _apply_files(self, moves: list[Move]) -> list[Move]:
        failed: list[Move] = []
        for move in moves:
            src_root = self.roots[move.source]
            if move.dest is None:
                remove_block(src_root, move.digest)
                continue
            try:
                move_block(block_path(src_root, move.digest), self.roots[move.dest], move.digest)
            except OSError as exc:
                log.warning("demoting a block failed (%s); dropping it", exc.strerror)
                remove_block(src_root, move.digest)
                remove_block(self.roots[move.dest], move.digest)
                failed.append(move)
        return failed

    async def purge(self) -> tuple[int, int]:
        """Drop every block; returns (blocks, data bytes) removed."""
        async with self._lock:
            removed = self.index.clear()
            for _, entry in removed:
                self.on_leave(entry.digest)
            await asyncio.to_thread(self._wipe)
        return len(removed), sum(entry.data_len for _, entry in removed)

    def _wipe(self) -> None:
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------------- stats
    @property
    def cached_bytes(self) -> int:
        return sum(lvl.data_bytes for lvl in self.index.levels)

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for config, lvl, evictions in zip(self.configs, self.index.levels, self.index.evictions, strict=True):
            out.append({
                "mediumtype": config.mediumtype,
                "path": str(config.path),
                "quota": config.quota,
                "used": lvl.used,
                "cached_bytes": lvl.data_bytes,
                "blocks": len(lvl.entries),
                "high": config.high,
                "low": config.low,
                "evictions": evictions,
            })
        return out
