"""The tiered store: watermarks, LRU, demotion, quota, restart re-indexing, block file checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eddy.blocks import BlockRef
from worker.blockfile import (
    BlockFileError,
    block_path,
    crc32c,
    decode_header,
    encode_header,
    read_header_file,
    read_verified,
)
from worker.eviction import CacheFull, Entry, Level, TierIndex
from worker.tierstore import LevelConfig, TierStore, TierStoreError

BS = 10_000


def ref(i: int, size: int = BS) -> BlockRef:
    return BlockRef("m", f"obj-{i}", "etag", 0, size, BS)


# ------------------------------------------------------------------------------------- pure index
def test_watermarks_evict_lru_until_low() -> None:
    index = TierIndex([Level("MEM", quota=1000, high=0.9, low=0.5)])
    for i in range(9):  # 900 bytes: at the high mark, not past it
        assert index.plan_insert(0, f"b{i}", 100) == []
        index.add(0, Entry(f"b{i}", 100))
    index.touch("b0")  # b0 is now the most recently used
    moves = index.plan_insert(0, "new", 100)
    # 1000 would pass 900: evict least recently used until used + 100 <= 500 -> 5 leave.
    assert [m.digest for m in moves] == ["b1", "b2", "b3", "b4", "b5"]
    assert all(m.dest is None for m in moves)
    index.add(0, Entry("new", 100))
    assert index.levels[0].used == 500
    assert list(index.levels[0].entries) == ["b6", "b7", "b8", "b0", "new"]
    assert index.evictions == [5]


def test_demotion_cascades_and_respects_lower_quota() -> None:
    index = TierIndex([Level("MEM", 300, 0.9, 0.5), Level("SSD", 400, 0.8, 0.5)])
    for i in range(2):
        index.add(0, Entry(f"m{i}", 100))
    for i in range(3):
        index.add(1, Entry(f"s{i}", 100))
    moves = index.plan_insert(0, "x", 100)
    # MEM: 200 + 100 > 270, so LRU blocks leave until used + 100 <= 150: m0 and m1, demoted to SSD.
    # SSD: 300 + 100 > 320, so before m0 arrives s0 and s1 are dropped (until used + 100 <= 200);
    # then m1 fits under SSD's high mark (300 <= 320).
    assert [(m.digest, m.source, m.dest) for m in moves] == [
        ("s0", 1, None), ("s1", 1, None), ("m0", 0, 1), ("m1", 0, 1),
    ]
    assert index.levels[1].used <= index.levels[1].quota
    assert index.locate("m0") == (1, index.levels[1].entries["m0"])


def test_block_bigger_than_a_level_skips_it_and_cache_full() -> None:
    index = TierIndex([Level("MEM", 100), Level("SSD", 1000)])
    assert index.target_level(500) == 1
    with pytest.raises(CacheFull):
        index.target_level(5000)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.booleans()), min_size=1, max_size=80))
def test_usage_never_passes_quota(ops: list[tuple[int, bool]]) -> None:
    index = TierIndex([Level("MEM", 1000, 0.9, 0.6), Level("SSD", 1500, 0.95, 0.7)])
    for n, (size, touch) in enumerate(ops):
        if touch and len(index):
            first = next(iter(index.levels[0].entries), None)
            if first:
                index.touch(first)
        level = index.target_level(size)
        index.plan_insert(level, f"b{n}", size)
        index.add(level, Entry(f"b{n}", size))
        for lvl in index.levels:
            assert lvl.used <= lvl.quota
            assert lvl.used == sum(e.size for e in lvl.entries.values())


# ----------------------------------------------------------------------------------- block files
def test_header_roundtrip_and_corruption() -> None:
    r = BlockRef("mount", "dir/ключ.bin", "e-1", 3, 123_456, 1 << 16)
    raw = encode_header(r, 42, 7)
    header = decode_header(raw + b"data")
    assert header.ref == r and header.data_len == 42 and header.data_crc == 7
    assert header.header_len == len(raw)
    broken = bytearray(raw)
    broken[-1] ^= 1
    with pytest.raises(BlockFileError, match="header checksum"):
        decode_header(bytes(broken))
    with pytest.raises(BlockFileError, match="magic"):
        decode_header(b"X" * len(raw))


# ------------------------------------------------------------------------------------- tier store
def _levels(tmp: Path, mem: int, ssd: int) -> list[LevelConfig]:
    return [
        LevelConfig("MEM", tmp / "mem", mem, 0.9, 0.5),
        LevelConfig("SSD", tmp / "ssd", ssd, 0.9, 0.5),
    ]


async def test_store_fill_demote_and_quota(tmp_path: Path) -> None:
    store = TierStore(_levels(tmp_path, mem=5 * (BS + 100), ssd=10 * (BS + 100)))
    await store.open()
    try:
        blobs = {i: os.urandom(BS) for i in range(30)}
        peak = [0, 0]
        for i, data in blobs.items():
            level = await store.put(ref(i), data, crc32c(data))
            assert level in ("MEM", "SSD")
            if i == 2:
                assert store.lookup(ref(0)) is not None  # touch block 0: it stays in MEM longer
            for n, root in enumerate(store.roots):
                on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
                assert on_disk == store.index.levels[n].used
                peak[n] = max(peak[n], on_disk)
        stats = store.stats()
        for n, stat in enumerate(stats):
            assert peak[n] <= stat["quota"]
            assert stat["used"] <= stat["high"] * stat["quota"]
        assert stats[0]["evictions"] > 0 and store.demotions > 0 and store.drops > 0
        # The most recent blocks are in MEM, the ones before them were demoted to SSD, the oldest dropped.
        newest = store.lookup(ref(29))
        assert newest is not None and newest.mediumtype == "MEM"
        demoted = [i for i in range(30) if (h := store.lookup(ref(i))) and h.mediumtype == "SSD"]
        assert demoted and max(demoted) < 29
        assert store.lookup(ref(1)) is None  # among the oldest: dropped from the last level
        hit = store.lookup(ref(demoted[-1]))
        assert hit is not None
        assert read_verified(hit.path, hit.header.header_len, hit.header.data_len, hit.header.data_crc) == (
            blobs[demoted[-1]]
        )
    finally:
        await store.close()


async def test_a_block_written_here_counts_as_checked_until_its_file_changes(tmp_path: Path) -> None:
    """The worker computed the CRC32C from the bytes it wrote: no checksum pass on the first hit."""
    from worker.blockfile import file_stamp

    store = TierStore(_levels(tmp_path, mem=4 * (BS + 100), ssd=4 * (BS + 100)))
    await store.open()
    try:
        data = os.urandom(BS)
        await store.put(ref(0), data, crc32c(data))
        hit = store.lookup(ref(0))
        assert hit is not None and isinstance(hit.entry.verified, tuple)
        stamp, _when = hit.entry.verified
        assert stamp == file_stamp(hit.path)
        fd = os.open(hit.path, os.O_WRONLY)  # any write to the file changes its stamp: checked again
        try:
            os.pwrite(fd, b"\x00", hit.header.header_len)
        finally:
            os.close(fd)
        assert file_stamp(hit.path) != stamp
    finally:
        await store.close()


async def test_store_refuses_a_block_bigger_than_every_quota(tmp_path: Path) -> None:
    store = TierStore(_levels(tmp_path, mem=BS // 2, ssd=BS // 2))
    await store.open()
    try:
        data = os.urandom(BS)
        with pytest.raises(CacheFull):
            await store.put(ref(1), data, crc32c(data))
        assert len(store.index) == 0
        assert not any(p.is_file() for p in store.roots[0].rglob("*"))
    finally:
        await store.close()


async def test_restart_reindexes_and_discards_partial_and_bad_files(tmp_path: Path) -> None:
    levels = _levels(tmp_path, mem=3 * (BS + 100), ssd=20 * (BS + 100))
    store = TierStore(levels)
    await store.open()
    blobs = {i: os.urandom(BS) for i in range(6)}
    for i, data in blobs.items():
        await store.put(ref(i), data, crc32c(data))
    where = {i: hit.mediumtype for i in blobs if (hit := store.lookup(ref(i)))}
    await store.close()
    # A write cut short, a file with a broken header, and a file under the wrong name.
    ssd_root = store.roots[1]
    (ssd_root / "ab").mkdir(exist_ok=True)
    (ssd_root / "ab" / ".abcdef.123.tmp").write_bytes(b"partial")
    victim = block_path(ssd_root, ref(0).digest)
    raw = bytearray(victim.read_bytes())
    raw[20] ^= 0xFF
    victim.write_bytes(bytes(raw))
    (ssd_root / "cd").mkdir(exist_ok=True)
    other = block_path(store.roots[1], ref(1).digest).read_bytes()
    (ssd_root / "cd" / ("cd" + "0" * 30)).write_bytes(other)

    again = TierStore(levels)
    await again.open()
    try:
        assert again.discarded_at_start == 3
        assert again.lookup(ref(0)) is None
        for i in range(1, 6):
            hit = again.lookup(ref(i))
            assert hit is not None and hit.mediumtype == where[i]
            assert read_header_file(hit.path).ref == ref(i)
        assert not (ssd_root / "ab" / ".abcdef.123.tmp").exists()
        # Two stores on the same directories: the second is refused.
        third = TierStore(levels)
        with pytest.raises(TierStoreError, match="in use"):
            await third.open()
        await third.close()
    finally:
        await again.close()


async def test_promotion_from_lower_level(tmp_path: Path) -> None:
    store = TierStore(_levels(tmp_path, mem=4 * (BS + 100), ssd=20 * (BS + 100)))
    await store.open()
    try:
        for i in range(5):
            data = os.urandom(BS)
            await store.put(ref(i), data, crc32c(data))
        low = [i for i in range(5) if (h := store.lookup(ref(i))) and h.mediumtype == "SSD"]
        assert low
        await store.purge()
        assert len(store.index) == 0
        data = os.urandom(BS)
        store.index.levels[0].quota = 0  # force the next block to SSD, then give MEM room again
        await store.put(ref(9), data, crc32c(data))
        store.index.levels[0].quota = 4 * (BS + 100)
        hit = store.lookup(ref(9))
        assert hit is not None and hit.mediumtype == "SSD"
        store.maybe_promote(hit)
        await store.settled()
        for task in list(store._tasks):
            await task
        promoted = store.lookup(ref(9))
        assert promoted is not None and promoted.mediumtype == "MEM" and store.promotions == 1
        assert read_verified(promoted.path, promoted.header.header_len, BS, crc32c(data)) == data
    finally:
        await store.close()
