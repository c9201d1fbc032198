"""Block identity, block ranges and rendezvous placement (eddy.blocks)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from eddy.blocks import DEFAULT_BLOCK_SIZE, BlockRef, block_count, blocks_for_range, blocks_of, owners

MiB = 1024 * 1024
WORKERS_16 = [f"http://serverless-data-eddy-worker-{i}.serverless-data-eddy-worker.default.svc:8080"
              for i in range(16)]
ETAG = "9b2cf535f27731c974343645a3985328"
SHARD = 64 * DEFAULT_BLOCK_SIZE
BLOCKS = [BlockRef("oss://bucket/dir", f"train/shard-{i // 64:05d}.tar", ETAG, i % 64, SHARD)
          for i in range(100_000)]


def test_placement_is_balanced_and_moves_little_when_a_worker_joins() -> None:
    identities = [b.identity for b in BLOCKS]
    before = [owners(ident, WORKERS_16)[0] for ident in identities]
    load = Counter(before)
    assert set(load) == set(WORKERS_16)
    mean = len(BLOCKS) / len(WORKERS_16)
    assert max(load.values()) <= 1.1 * mean, load.most_common(3)

    seventeen = [*WORKERS_16, WORKERS_16[0].replace("worker-0.", "worker-16.")]
    after = [owners(ident, seventeen)[0] for ident in identities]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert 0.04 <= len(moved) / len(BLOCKS) <= 0.08, len(moved)
    # Only the newcomer gains blocks: nothing moves between the old workers.
    assert {b for _, b in moved} == {seventeen[-1]}


def test_replicas_are_distinct_balanced_and_nested() -> None:
    sample = BLOCKS[:20_000]
    second: Counter[str] = Counter()
    for block in sample:
        top3 = owners(block, WORKERS_16, 3)
        assert len(set(top3)) == 3
        assert owners(block, WORKERS_16, 2) == top3[:2]  # replicas = a prefix of the fallback order
        second[top3[1]] += 1
    assert max(second.values()) <= 1.15 * len(sample) / len(WORKERS_16)


def test_owners_edge_cases() -> None:
    block = BLOCKS[0]
    assert owners(block, []) == []
    assert owners(block, WORKERS_16, 0) == []
    assert owners(block, WORKERS_16[:3], 10) == owners(block, WORKERS_16[:3], 3)  # k > n: all n
    assert len(owners(block, WORKERS_16[:3], 10)) == 3
    # A repeated worker counts once.
    assert owners(block, [WORKERS_16[0], WORKERS_16[0], WORKERS_16[1]], 2) == owners(
        block, WORKERS_16[:2], 2)
    assert owners(block, WORKERS_16, 16) == owners(block.identity, WORKERS_16, 16)


@settings(max_examples=100, deadline=None)
@given(
    workers=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12, unique=True),
    k=st.integers(0, 14),
    seed=st.integers(0, 2**32),
    index=st.integers(0, 10_000),
)
def test_owners_properties(workers: list[str], k: int, seed: int, index: int) -> None:
    block = BlockRef("m", "key", "etag", index, 100 * MiB, MiB)
    chosen = owners(block, workers, k)
    assert len(chosen) == min(k, len(workers))
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(workers)
    shuffled = workers[:]
    random.Random(seed).shuffle(shuffled)
    assert owners(block, shuffled, k) == chosen  # the order of the worker list does not matter
    if chosen:
        # Removing a worker that does not own the block leaves its owner alone.
        others = [w for w in workers if w != chosen[0]]
        if others:
            spare = others[seed % len(others)]
            assert owners(block, [w for w in workers if w != spare], 1) == chosen[:1]


def test_block_identity_includes_the_etag() -> None:
    a = BlockRef("m", "k", "etag-1", 0, 10, 4)
    b = BlockRef("m", "k", "etag-2", 0, 10, 4)
    assert a.identity != b.identity and a.digest != b.digest
    assert len(a.digest) == 32 and int(a.digest, 16) >= 0  # a hex hash, not the key


def test_blocks_of_edge_cases() -> None:
    bs = 4 * MiB
    (empty,) = blocks_of("m", "e", "t", 0, bs)
    assert (empty.index, empty.start, empty.end, empty.length) == (0, 0, 0, 0)
    exact = list(blocks_of("m", "x", "t", 3 * bs, bs))
    assert [(b.start, b.end) for b in exact] == [(0, bs), (bs, 2 * bs), (2 * bs, 3 * bs)]
    short = list(blocks_of("m", "s", "t", 2 * bs + 1, bs))
    assert [b.length for b in short] == [bs, bs, 1]
    assert block_count(1, bs) == 1 and block_count(bs, bs) == 1 and block_count(bs + 1, bs) == 2


def test_blocks_for_range_edge_cases() -> None:
    bs = 4 * MiB
    size = 2 * bs
    idx = lambda off, n, sz=size: [b.index for b in blocks_for_range("m", "k", "t", sz, off, n, bs)]  # noqa: E731
    assert idx(0, 0) == []  # nothing asked
    assert idx(0, 10, sz=0) == []  # empty object
    assert idx(size, 10) == []  # at EOF
    assert idx(size + 5, 10) == []  # past EOF
    assert idx(0, size) == [0, 1]  # exact multiple: no trailing empty block
    assert idx(0, size + 100) == [0, 1]  # clipped to the object
    assert idx(bs - 1, 1) == [0]
    assert idx(bs - 1, 2) == [0, 1]
    assert idx(bs, 1) == [1]
    assert idx(bs, bs) == [1]


@given(
    size=st.integers(0, 50_000),
    block_size=st.integers(1, 5_000),
    offset=st.integers(0, 60_000),
    length=st.integers(0, 60_000),
)
def test_blocks_for_range_covers_exactly_the_range(
    size: int, block_size: int, offset: int, length: int
) -> None:
    refs = blocks_for_range("m", "k", "t", size, offset, length, block_size)
    end = min(size, offset + length)
    if end <= offset:
        assert refs == []
        return
    assert refs[0].start <= offset < refs[0].end
    assert refs[-1].start < end <= refs[-1].end
    assert [r.index for r in refs] == list(range(refs[0].index, refs[-1].index + 1))
    assert all(r.length > 0 and r.object_size == size and r.block_size == block_size for r in refs)
    covered = sum(min(r.end, end) - max(r.start, offset) for r in refs)
    assert covered == end - offset
