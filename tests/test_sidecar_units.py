"""Pure parts of the sidecar: namespace, snapshot format, read-ahead policy, block cache, breaker."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import yaml

from eddy.blocks import BlockRef
from eddy.listing import ObjectInfo
from eddy.snapshot import SnapshotError, decode_snapshot, encode_snapshot
from sidecar.blockcache import BlockCache
from sidecar.namespace import ROOT_INODE, Namespace, split_key
from sidecar.readahead import MiB, ReadaheadPolicy, ReadaheadState


def objs(*rows: tuple[str, int]) -> list[ObjectInfo]:
    return [ObjectInfo(key, size, f"etag-{i}", 1_700_000_000.0 + i) for i, (key, size) in enumerate(rows)]


# ---------------------------------------------------------------------------------------- namespace
def test_namespace_builds_dirs_from_prefixes_and_markers() -> None:
    ns = Namespace()
    listing = objs(("a/b/c.txt", 3), ("a/d.bin", 10), ("empty/", 0), ("top", 0))
    stats = ns.load({"demo": listing}, {"demo": "/"})
    assert stats.files == 3 and stats.bytes == 13 and stats.skipped == 0
    root = ns.get(ROOT_INODE)
    assert root is not None and root.sorted_names() == ["a", "empty", "top"]
    a = ns.resolve("/a")
    assert a is not None and a.is_dir and a.sorted_names() == ["b", "d.bin"]
    c = ns.resolve("a/b/c.txt")
    assert c is not None and not c.is_dir and c.size == 3 and c.key == "a/b/c.txt" and c.mount == "demo"
    empty = ns.resolve("empty")
    assert empty is not None and empty.is_dir and empty.sorted_names() == []
    top = ns.resolve("top")
    assert top is not None and not top.is_dir and top.size == 0
    assert [p for p, _ in ns.files()] == ["a/b/c.txt", "a/d.bin", "top"]
    assert [p for p, n in ns.walk() if n.is_dir] == ["a", "a/b", "empty"]


def test_namespace_mount_path_places_the_listing() -> None:
    ns = Namespace()
    ns.load({"one": objs(("x", 1)), "two": objs(("y", 2))}, {"one": "/", "two": "/sub/two"})
    assert ns.resolve("x") is not None
    y = ns.resolve("sub/two/y")
    assert y is not None and y.mount == "two" and y.key == "y"


def test_namespace_skips_bad_keys_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    bad = ["a//b", "/lead", "./x", "a/../b", "n\x00ul", "x" * 256, "ok/" + "y" * 256, "", "/"]
    ns = Namespace()
    with caplog.at_level(logging.WARNING, logger="sidecar.namespace"):
        stats = ns.load({"m": objs(*[(k, 1) for k in bad], ("fine/" + "z" * 255, 5))}, {"m": "/"})
    assert stats.files == 1 and stats.skipped == len(bad)
    assert ns.resolve("fine/" + "z" * 255) is not None
    assert sum("skipped" in r.getMessage() for r in caplog.records) == len(bad)
    assert isinstance(split_key("a//b"), str) and split_key("a/b/") == (["a", "b"], True)


def test_namespace_file_and_dir_conflict_keeps_the_directory() -> None:
    ns = Namespace()
    for order in (objs(("a", 4), ("a/b", 1)), objs(("a/b", 1), ("a", 4))):
        stats = ns.load({"m": order}, {"m": "/"})
        a = ns.resolve("a")
        assert a is not None and a.is_dir and stats.files == 1 and stats.skipped == 1
        assert ns.resolve("a/b") is not None


def versions(*rows: tuple[str, int, str]) -> list[ObjectInfo]:
    return [ObjectInfo(key, size, etag, 1_700_000_000.0) for key, size, etag in rows]


def test_namespace_inodes_stable_across_reloads_and_lookup_dots() -> None:
    ns = Namespace()
    ns.load({"m": versions(("d/f1", 5, "v1"), ("d/f2", 2, "x"))}, {"m": "/"})
    f1, d = ns.resolve("d/f1"), ns.resolve("d")
    assert f1 is not None and d is not None
    ns.load({"m": versions(("d/f0", 1, "y"), ("d/f1", 5, "v1"), ("e", 1, "z"))}, {"m": "/"})
    f1b, db = ns.resolve("d/f1"), ns.resolve("d")
    assert f1b is not None and db is not None
    assert (f1b.ino, db.ino) == (f1.ino, d.ino) and f1b.size == 5 and ns.is_live(f1.ino)
    assert ns.resolve("d/f2") is None
    assert ns.lookup(d.ino, "..") is ns.get(ROOT_INODE) and ns.lookup(d.ino, ".") is db


def test_namespace_new_version_gets_a_new_inode_and_retires_the_old() -> None:
    """One inode = one version: the kernel's page cache (per inode) can never mix two."""
    ns = Namespace()
    told: list[tuple[int, str]] = []
    ns.on_retire = lambda parent, name: told.append((parent, name))
    ns.load({"m": versions(("d/f", 5, "v1"), ("d/g", 1, "g1"))}, {"m": "/"})
    v1, d = ns.resolve("d/f"), ns.resolve("d")
    assert v1 is not None and d is not None
    # a listing refresh that finds a new ETag: new inode; the old one is retired (kept, not reachable)
    ns.load({"m": versions(("d/f", 7, "v2"), ("d/g", 1, "g1"))}, {"m": "/"})
    v2 = ns.resolve("d/f")
    assert v2 is not None and v2.ino != v1.ino and v2.etag == "v2" and v2.size == 7
    assert not ns.is_live(v1.ino) and ns.get(v1.ino) is not None and ns.get(v1.ino).etag == "v1"  # type: ignore[union-attr]
    assert ns.lookup(d.ino, "f") is v2 and told == [(d.ino, "f")] and ns.retired == 1
    ns.forget(v1.ino)
    assert ns.get(v1.ino) is None and ns.retired == 0
    # a HEAD that learns v3: the same, through update_file
    v3 = ns.update_file("m", "d/f", ObjectInfo("d/f", 9, "v3", 1.0))
    assert v3 is not None and v3.ino not in (v1.ino, v2.ino) and ns.resolve("d/f") is v3
    assert not ns.is_live(v2.ino) and told[-1] == (d.ino, "f") and ns.file("m", "d/f") is v3
    # the same ETag again only refreshes when it was confirmed
    assert ns.update_file("m", "d/f", ObjectInfo("d/f", 9, "v3", 1.0)) is v3 and ns.retired == 1
    # a listing that started before the HEAD learnt v3 does not bring v2 back
    built = ns.build({"m": versions(("d/f", 7, "v2"), ("d/g", 1, "g1"))}, {"m": "/"})
    v4 = ns.update_file("m", "d/f", ObjectInfo("d/f", 4, "v4", 1.0))
    ns.install(built)
    assert ns.resolve("d/f") is v4 and v4 is not None and ns.is_live(v4.ino)
    # gone: retired, no longer found
    assert ns.update_file("m", "d/f", None) is None and ns.resolve("d/f") is None
    assert ns.get(v4.ino) is not None and not ns.is_live(v4.ino)


def test_namespace_large_directory_offsets_resume_exactly() -> None:
    names = [f"f{i:05d}" for i in range(5000)]
    ns = Namespace()
    ns.load({"m": objs(*[(f"big/{n}", 1) for n in names])}, {"m": "/"})
    big = ns.resolve("big")
    assert big is not None
    seen: list[str] = []
    offset = 0
    while True:  # a reader that takes 97 entries per readdir call, like a small getdents buffer
        batch = []
        for next_off, node in ns.entries(big.ino, offset):
            batch.append(node.name)
            offset = next_off
            if len(batch) == 97:
                break
        if not batch:
            break
        seen.extend(batch)
    assert seen == names
    assert list(ns.entries(big.ino, len(names))) == []


def test_namespace_update_file_after_change() -> None:
    ns = Namespace()
    ns.load({"m": objs(("f", 3), ("g", 1))}, {"m": "/"})
    node = ns.update_file("m", "f", ObjectInfo("f", 9, "new", 5.0))
    assert node is not None and node.size == 9 and node.etag == "new"
    assert ns.update_file("m", "g", None) is None
    root = ns.get(ROOT_INODE)
    assert ns.resolve("g") is None and root is not None and root.sorted_names() == ["f"]


# ---------------------------------------------------------------------------------------- snapshot
def test_snapshot_round_trip_and_exact_format() -> None:
    listed = objs(("a/b", 3), ("dir/", 0))
    blob = encode_snapshot({"demo": listed})
    doc = json.loads(gzip.decompress(blob))
    assert doc == {"version": 1, "mounts": {"demo": [["a/b", 3, "etag-0", 1_700_000_000.0],
                                                      ["dir/", 0, "etag-1", 1_700_000_001.0]]}}
    assert decode_snapshot(blob) == {"demo": listed}


@pytest.mark.parametrize(
    "blob",
    [b"not gzip", gzip.compress(b"[]"), gzip.compress(b'{"version": 2, "mounts": {}}'),
     gzip.compress(b'{"version": 1, "mounts": {"m": [["k", "x", "e", 1]]}}')],
)
def test_snapshot_rejects_malformed(blob: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot(blob)


# ---------------------------------------------------------------------------------------- read-ahead
def test_readahead_window_doubles_with_streak_up_to_cap() -> None:
    policy = ReadaheadPolicy(initial=8 * MiB, cap=64 * MiB, tolerance=2 * MiB)
    state = ReadaheadState(policy)
    windows = [state.observe(i * MiB, MiB) for i in range(7)]
    assert windows == [0, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 64 * MiB, 64 * MiB]


def test_readahead_tolerates_small_seeks_and_reordering() -> None:
    state = ReadaheadState(ReadaheadPolicy(initial=MiB, cap=8 * MiB, tolerance=512 * 1024))
    state.observe(0, 131072)
    assert state.observe(262144, 131072) > 0  # kernel read-ahead request arriving early
    assert state.observe(131072, 131072) > 0  # ...and the one it overtook
    assert state.observe(393216 + 200_000, 4096) > 0  # a small forward skip


def test_readahead_random_reader_never_triggers() -> None:
    state = ReadaheadState(ReadaheadPolicy())
    offsets = [700 * MiB, 3 * MiB, 512 * MiB, 90 * MiB, 900 * MiB, 40 * MiB, 300 * MiB]
    assert all(state.observe(o, 4096) == 0 for o in offsets)
    # a random reader that once touches offset 0 still needs a second sequential read
    assert state.observe(0, 4096) == 0


# ---------------------------------------------------------------------------------------- block cache
def ref(i: int, size: int = 4 * MiB) -> BlockRef:
    return BlockRef("m", "k", "e", i, size * 100, size)


async def test_block_cache_single_flight_and_lru_bound() -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def fetch(r: BlockRef) -> bytes:
        calls.append(r.index)
        await gate.wait()
        return bytes([r.index]) * r.length

    cache = BlockCache(capacity=10 * MiB, prefetch_budget=4 * MiB)
    readers = [asyncio.create_task(cache.get(ref(0), fetch)) for _ in range(8)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*readers)
    assert calls == [0] and all(r == b"\x00" * 4 * MiB for r in results)
    await cache.get(ref(1), fetch)
    await cache.get(ref(2), fetch)  # 3 x 4 MiB > 10 MiB: block 0 is evicted
    assert cache.cached_bytes == 8 * MiB and ref(0) not in cache and ref(2) in cache
    # read-ahead is bounded by the in-flight budget
    gate.clear()
    assert cache.prefetch(ref(3), fetch) is True
    assert cache.prefetch(ref(4), fetch) is False
    assert cache.prefetch(ref(3), fetch) is False
    gate.set()
    assert await cache.get(ref(3), fetch) == b"\x03" * 4 * MiB
    assert calls == [0, 1, 2, 3]
    await cache.close()


async def test_block_cache_failure_is_shared_and_not_cached() -> None:
    attempts = 0

    async def flaky(r: BlockRef) -> bytes:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise OSError("boom")
        return b"x" * r.length

    cache = BlockCache(capacity=64 * MiB, prefetch_budget=0)
    results = await asyncio.gather(*(cache.get(ref(5), flaky) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results) and attempts == 1
    assert await cache.get(ref(5), flaky) == b"x" * 4 * MiB and attempts == 2


# ---------------------------------------------------------------------------------------- settings
def test_settings_from_config_file_or_manifests(tmp_path: Any) -> None:
    from eddy.config import build_config
    from sidecar.settings import ReaderOptions, load_settings

    dataset = {
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "ds"},
        "spec": {"mounts": [{"mountPoint": "oss://b/dir", "name": "demo", "path": "/",
                             "options": {"fs.oss.endpoint": "http://127.0.0.1:9"}}]},
    }
    runtime = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "JindoRuntime", "metadata": {"name": "ds"},
               "spec": {"replicas": 3}}
    config = tmp_path / "eddy.yaml"
    build_config(dataset, runtime, worker_urls=("http://w0:1",), block_size=MiB).write(config)
    cfg = load_settings(str(config))
    assert cfg.workers() == ["http://w0:1"] and cfg.block_size == MiB
    assert load_settings(str(config), workers=["http://x:2"]).workers() == ["http://x:2"]
    assert load_settings(str(config), no_workers=True).workers() == []
    manifest = tmp_path / "dataset.yaml"
    manifest.write_text(yaml.safe_dump_all([dataset, runtime]))
    from_files = load_settings(None, [str(manifest)])
    assert from_files.dataset.meta.name == "ds" and from_files.workers() == []  # no cluster DNS locally
    assert load_settings(None, [str(manifest)], workers=["http://w:3"], block_size=4096).block_size == 4096
    # read-ahead is kept inside the cache so prefetched blocks survive until read
    opts = ReaderOptions(cache_bytes=16 * MiB, readahead=ReadaheadPolicy(cap=64 * MiB)).bounded()
    assert opts.readahead.cap == 8 * MiB and opts.prefetch_budget == 8 * MiB


def test_downward_api_annotations_parse_and_stop_request() -> None:
    from sidecar.stopfile import parse_downward_annotations, stop_requested

    text = 'a.io/x="1"\nnote="line \\"quoted\\"\\nsecond"\nbroken line\neddy.fluid.io/sidecar-stop="true"\n'
    parsed = parse_downward_annotations(text)
    assert parsed == {"a.io/x": "1", "note": 'line "quoted"\nsecond', "eddy.fluid.io/sidecar-stop": "true"}
    assert stop_requested(text)
    assert not stop_requested('eddy.fluid.io/sidecar-stop="false"\n')
    assert not stop_requested("")


# ---------------------------------------------------------------------------------------- walk-ahead
def test_walkahead_prefetches_the_next_files_of_an_ordered_walk() -> None:
    from sidecar.walkahead import WalkaheadPolicy, WalkaheadState

    sizes = [1 * MiB] * 40
    walk = WalkaheadState(WalkaheadPolicy(window_bytes=8 * MiB, max_files=32, max_file_size=4 * MiB))
    assert list(walk.observe(7, 0, len(sizes), sizes.__getitem__)) == []  # one open is not a walk yet
    assert list(walk.observe(7, 1, len(sizes), sizes.__getitem__)) == list(range(2, 10))  # 8 MiB ahead
    # the next open asks only for what is not already ahead of the reader
    assert list(walk.observe(7, 2, len(sizes), sizes.__getitem__)) == [10]
    assert list(walk.observe(7, 3, len(sizes), sizes.__getitem__)) == [11]


def test_walkahead_looks_at_each_entry_about_once_and_restarts_after_a_jump() -> None:
    from sidecar.walkahead import WalkaheadPolicy, WalkaheadState

    sizes = [100 * 1024] * 1000
    looked: list[int] = []

    def size_of(i: int) -> int:
        looked.append(i)
        return sizes[i]

    walk = WalkaheadState(WalkaheadPolicy(window_bytes=4 * MiB, max_files=32, max_file_size=4 * MiB))
    ahead: list[int] = []
    for index in range(500):
        ahead.extend(walk.observe(3, index, len(sizes), size_of))
    assert ahead == list(range(2, 532))  # every file after the second, once, up to 32 ahead of the reader
    assert len(looked) <= 2 * 500 + 32  # the opened entry and the new ones: not the whole window each time
    # a jump ends the streak; the next streak asks again from the reader on (the cache skips blocks it has)
    assert list(walk.observe(3, 100, len(sizes), size_of)) == []
    assert list(walk.observe(3, 101, len(sizes), size_of)) == list(range(102, 134))


def test_walkahead_ignores_random_opens_and_stops_at_big_files_and_the_end() -> None:
    from sidecar.walkahead import WalkaheadPolicy, WalkaheadState

    policy = WalkaheadPolicy(window_bytes=8 * MiB, max_files=4, max_file_size=4 * MiB)
    sizes = [MiB, MiB, 0, -1, MiB, 64 * MiB, MiB]
    walk = WalkaheadState(policy)
    for index in (5, 0, 3, 6, 2):  # a random-access reader never forms a streak
        assert list(walk.observe(1, index, len(sizes), sizes.__getitem__)) == []
    walk = WalkaheadState(policy)
    walk.observe(1, 0, len(sizes), sizes.__getitem__)
    # empty files and directories cost nothing; the 64 MiB file ends the window (it has byte read-ahead)
    assert list(walk.observe(1, 1, len(sizes), sizes.__getitem__)) == [2, 3, 4]
    # another directory starts over
    assert list(walk.observe(2, 1, len(sizes), sizes.__getitem__)) == []
    walk.observe(1, 5, len(sizes), sizes.__getitem__)
    assert list(walk.observe(1, 6, len(sizes), sizes.__getitem__)) == []  # nothing after the last file
    off = WalkaheadState(WalkaheadPolicy(window_bytes=0))
    off.observe(1, 0, 3, [1, 1, 1].__getitem__)
    assert list(off.observe(1, 1, 3, [1, 1, 1].__getitem__)) == []


def test_block_query_carries_the_worker_api_parameters() -> None:
    from urllib.parse import parse_qs

    from eddy.blocks import BlockRef
    from eddy.wire import DATASET_PARAM, ref_to_params
    from sidecar.blockclient import block_query

    for key in ("stream/data.bin", "a b/c+d&e=f?#%/\u00fc.bin"):
        ref = BlockRef("demo", key, "abc-1", 3, 12345, 8 * MiB)
        expected = {**ref_to_params(ref), DATASET_PARAM: "default/bench data"}
        assert {k: v[0] for k, v in parse_qs(block_query(ref, "default/bench data")).items()} == expected
    assert DATASET_PARAM not in parse_qs(block_query(ref, None))


def test_uninitialized_bytearray_is_a_writable_buffer_of_the_size() -> None:
    from sidecar.buffers import uninitialized_bytearray

    for size in (0, 10, 65536, 8 * MiB + 3):
        buf = uninitialized_bytearray(size)
        assert isinstance(buf, bytearray) and len(buf) == size
        memoryview(buf)[:] = b"\x5a" * size
        assert buf == b"\x5a" * size
    with pytest.raises(ValueError):
        uninitialized_bytearray(-1)


# ------------------------------------------------------------------------------- fast block client
@contextlib.asynccontextmanager
async def fast_client_against(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[Any, str]]:
    """A FastBlockClient and the URL of a raw HTTP server on 127.0.0.1 answering with `serve`."""
    from eddy.workerclient import WorkerClient
    from sidecar.blockclient import FastBlockClient

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = FastBlockClient(WorkerClient(timeout=5))
    try:
        yield client, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_fast_block_client_checks_the_crc_in_place() -> None:
    """The raw client checks X-Eddy-Crc32c over the received bytearray (no copy): a right CRC returns
    the body, a wrong one is a WorkerUnavailable (the reader then tries elsewhere)."""
    import google_crc32c

    from eddy.workerclient import WorkerUnavailable

    body = bytes(range(256)) * 4096  # 1 MiB
    good = int(google_crc32c.value(body))
    crcs = [good, good ^ 1]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            crc = crcs.pop(0)
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Eddy-Crc32c: {crc}\r\n\r\n"
                         .encode() + body)
            await writer.drain()
            if not crcs:
                break
        writer.close()

    ref = BlockRef("demo", "k", "e", 0, len(body), 8 << 20)
    async with fast_client_against(serve) as (client, url):
        got = await client.get_block(url, ref)
        assert bytes(got) == body
        with pytest.raises(WorkerUnavailable, match="CRC32C mismatch"):
            await client.get_block(url, ref)


async def test_fast_block_client_hands_odd_answers_to_workerclient_and_fails_broken_ones() -> None:
    """Over eddy/rawhttp.py: a chunked answer is redone by the regular WorkerClient (here it gets a
    plain answer), and a connection closed mid-body is a WorkerUnavailable, not a short block."""
    from eddy.workerclient import WorkerUnavailable

    body = bytes(range(256)) * 64
    plain = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    chunked = (f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode() + body
               + b"\r\n0\r\n\r\n")
    answers = [chunked, plain, plain[: len(plain) - 100]]  # raw, then WorkerClient's redo, then cut short
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while answers:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                answer = answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if answer is not plain and answer is not chunked:
                    break  # closes mid-body
        writer.close()

    ref = BlockRef("demo", "k", "e", 0, len(body), 8 << 20)
    async with fast_client_against(serve) as (client, url):
        assert bytes(await client.get_block(url, ref)) == body
        with pytest.raises(WorkerUnavailable, match=r"mid-response|lost"):
            await client.get_block(url, ref)
    assert len(heads) == 3 and b"aiohttp" not in heads[0] and b"aiohttp" in heads[1].lower()


async def test_fast_block_client_reads_a_head_split_across_reads() -> None:
    """A response head that arrives in pieces (here: two writes with a pause between) is assembled
    before it is parsed; one that arrives whole is parsed where it landed. Both give the body."""
    body = bytes(range(256)) * 300  # larger than a first read's share, smaller than a block
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Eddy-Cache: hit\r\n\r\n".encode()
    splits = [20, 0]  # first response: head cut after 20 bytes; second: in one piece

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while splits and await reader.readuntil(b"\r\n\r\n"):
            cut = splits.pop(0)
            if cut:
                writer.write(head[:cut])
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(head[cut:] + body)
            await writer.drain()
        writer.close()

    ref = BlockRef("demo", "k", "e", 0, len(body), 8 << 20)
    async with fast_client_against(serve) as (client, url):
        for _ in range(2):
            assert bytes(await client.get_block(url, ref)) == body


# ------------------------------------------------------------------------------- FUSE loop plumbing
async def test_handoff_lock_is_exclusive_in_order_and_survives_cancellation() -> None:
    """pyfuse3's read lock (sidecar/fuseloop.py): one holder at a time, waiters served in arrival
    order, and a waiter cancelled while waiting (or right as the lock is handed to it) passes it on."""
    from sidecar.fuseloop import HandoffLock

    lock = HandoffLock()
    order: list[str] = []
    inside = 0

    async def hold(name: str, rounds: int = 1) -> None:
        nonlocal inside
        for _ in range(rounds):
            async with lock:
                inside += 1
                assert inside == 1
                order.append(name)
                await asyncio.sleep(0)
                inside -= 1

    await asyncio.gather(*(hold(n, 3) for n in "abc"))
    assert sorted(order) == sorted("abc" * 3)
    await asyncio.wait_for(hold("free"), 5)  # released: taken at once
    assert order[:3] == ["a", "b", "c"]

    async with lock:
        waiter = asyncio.create_task(hold("cancelled"))
        after = asyncio.create_task(hold("after"))
        await asyncio.sleep(0)
        waiter.cancel()  # cancelled while waiting: its place goes to the next waiter
    await after
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert order[-1] == "after"
    await asyncio.wait_for(hold("free"), 5)

    async with lock:
        handed = asyncio.create_task(hold("handed"))
        last = asyncio.create_task(hold("last"))
        await asyncio.sleep(0)
    handed.cancel()  # the lock was just handed to it, before it ran: it passes the lock on
    await last
    assert order[-1] == "last"
    await asyncio.wait_for(hold("free"), 5)


async def test_fuse_fd_wait_returns_only_when_a_read_would_not_block() -> None:
    """sidecar/fuseloop.py's wait for /dev/fuse, on a pipe: it returns at once when data is queued, and
    a readiness report that is out of date by the time the woken task runs (its request was read by
    another task through the poll path) sends the task back to waiting instead of into a blocking
    read, which would stop the whole event loop."""
    import os

    from sidecar.fuseloop import ReadableFd

    r, w = os.pipe()
    state = ReadableFd(asyncio.get_running_loop(), r)
    try:
        os.write(w, b"x")
        await asyncio.wait_for(state.wait(), 5)  # queued: no wait
        assert os.read(r, 1) == b"x"

        waiter = asyncio.create_task(state.wait())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiter.done() and state.registered
        state._on_readable()  # a report of a request that is gone by now (read by someone else)
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiter.done()  # back to waiting: a read now would block
        os.write(w, b"y")
        await asyncio.wait_for(waiter, 5)
        assert os.read(r, 1) == b"y"

        # nobody waits while data sits there: reported twice, the reader is removed; the next wait
        # still sees the data at once
        os.write(w, b"z")
        for _ in range(5):
            await asyncio.sleep(0)
        assert not state.registered
        await asyncio.wait_for(state.wait(), 5)
        assert os.read(r, 1) == b"z"
    finally:
        state.close()
        os.close(r)
        os.close(w)
