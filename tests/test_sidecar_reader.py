"""The sidecar's data path without FUSE (`DatasetReader`), over the real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from eddy.config import build_config
from sidecar.readahead import MiB, ReadaheadPolicy
from sidecar.reader import DatasetReader, ObjectChangedError, copy_dataset
from sidecar.settings import ReaderOptions


def dead_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def small_tree(s3_server: Any, s3_bucket: str) -> dict[str, bytes]:
    rng = random.Random(9)
    files = {f"a/{i}.bin": rng.randbytes(rng.choice([0, 5, 70_000, 2 * MiB + 3])) for i in range(12)}
    files["b/c/deep.bin"] = rng.randbytes(5 * MiB)
    s3_server.put_objects(s3_bucket, [(f"p/{k}", v) for k, v in files.items()])
    s3_server.put_object(s3_bucket, "p/empty-dir/", b"")
    s3_server.put_object(s3_bucket, "p/clash", b"x")  # a file and a directory at once: skipped
    s3_server.put_object(s3_bucket, "p/clash/inner", b"y")
    return files


def options(**kw: Any) -> ReaderOptions:
    base: dict[str, Any] = {"cache_bytes": 16 * MiB, "breaker_cooldown": 30.0, "worker_timeout": 2.0,
                            "readahead": ReadaheadPolicy(initial=MiB, cap=4 * MiB)}
    base.update(kw)
    return ReaderOptions(**base)


async def test_read_file_and_pread_over_store(
    s3_server: Any, s3_bucket: str, small_tree: dict[str, bytes]
) -> None:
    cfg = build_config(s3_server.dataset_doc(s3_bucket, "p"), block_size=MiB)
    async with await DatasetReader.create(cfg, s3_server.secrets(), options()) as reader:
        stats = reader.metadata.namespace.stats
        assert stats.files == len(small_tree) + 1 and stats.skipped == 1
        empty = reader.metadata.namespace.resolve("empty-dir")
        assert empty is not None and empty.is_dir
        for key, data in small_tree.items():
            assert b"".join([c async for c in reader.read_file(key)]) == data
        node = reader.metadata.namespace.resolve("b/c/deep.bin")
        assert node is not None
        h = reader.open_file(node)
        data = small_tree["b/c/deep.bin"]
        for off, size in [(0, 10), (MiB - 5, 10), (3 * MiB + 1, 2 * MiB), (5 * MiB - 1, 100)]:
            assert bytes(await reader.read(h, off, size)) == data[off : off + size]
        # 8 concurrent readers of one block: one fetch
        fetches = reader.metrics.value("eddy_sidecar_fetches_total", source="store")
        reader.cache.clear()
        got = await asyncio.gather(*(reader.read(reader.open_file(node), 0, 4096) for _ in range(8)))
        assert all(bytes(g) == data[:4096] for g in got)
        assert reader.metrics.value("eddy_sidecar_fetches_total", source="store") == fetches + 1


async def test_dead_workers_fall_back_to_store_and_are_skipped(
    s3_server: Any, s3_bucket: str, small_tree: dict[str, bytes]
) -> None:
    workers = (dead_url(), dead_url())
    cfg = build_config(s3_server.dataset_doc(s3_bucket, "p"), worker_urls=workers, block_size=MiB)
    async with await DatasetReader.create(cfg, s3_server.secrets(), options()) as reader:
        assert len(reader.workers) == 2
        data = b"".join([c async for c in reader.read_file("b/c/deep.bin")])
        assert data == small_tree["b/c/deep.bin"]
        m = reader.metrics
        assert m.value("eddy_sidecar_fetched_bytes_total", source="store") == len(data)
        assert m.value("eddy_sidecar_fallbacks_total", reason="unavailable") == 2  # each worker tried once
        assert m.value("eddy_sidecar_fallbacks_total", reason="worker_down") >= 4  # then skipped
        assert sorted(reader.breaker.down()) == sorted(workers)


async def test_changed_object_fails_the_open_file_and_refreshes(
    s3_server: Any, s3_bucket: str, small_tree: dict[str, bytes]
) -> None:
    cfg = build_config(s3_server.dataset_doc(s3_bucket, "p"), block_size=MiB)
    opts = options(cache_bytes=2 * MiB, readahead=ReadaheadPolicy(cap=0))
    async with await DatasetReader.create(cfg, s3_server.secrets(), opts) as reader:
        node = reader.metadata.namespace.resolve("b/c/deep.bin")
        assert node is not None
        old, new = small_tree["b/c/deep.bin"], os.urandom(3 * MiB)
        h = reader.open_file(node)
        assert bytes(await reader.read(h, 0, MiB)) == old[:MiB]
        s3_server.put_object(s3_bucket, "p/b/c/deep.bin", new)
        with pytest.raises(ObjectChangedError):
            await reader.read(h, 2 * MiB, MiB)
        fresh = reader.metadata.namespace.resolve("b/c/deep.bin")
        assert fresh is not None and fresh.size == len(new) and fresh.etag != h.etag
        assert b"".join([c async for c in reader.read_file("b/c/deep.bin")]) == new
        assert reader.metrics.value("eddy_sidecar_changed_objects_total") == 1


async def test_copy_dataset_without_fuse(
    s3_server: Any, s3_bucket: str, small_tree: dict[str, bytes], tmp_path: Path
) -> None:
    manifest = tmp_path / "dataset.yaml"
    manifest.write_text(yaml.safe_dump(s3_server.dataset_doc(s3_bucket, "p")))
    secrets = s3_server.write_secret_dir(tmp_path / "secrets")
    total = await copy_dataset(manifest, tmp_path / "out", secrets, [])
    assert total == sum(len(v) for v in small_tree.values()) + 1
    for key, data in small_tree.items():
        assert hashlib.sha256((tmp_path / "out" / key).read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (tmp_path / "out" / "empty-dir").is_dir()


async def test_worker_first_with_snapshot_and_next_owner(
    s3_server: Any, s3_bucket: str, small_tree: dict[str, bytes], tmp_path: Path
) -> None:
    from eddy.listing import ObjectInfo
    from eddy.snapshot import encode_snapshot
    from eddy.wire import LISTING_SNAPSHOT
    from eddy.workerclient import WorkerClient
    from tests.test_sidecar_mount import Worker

    doc = s3_server.dataset_doc(s3_bucket, "p")
    manifest = tmp_path / "dataset.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    secrets = s3_server.write_secret_dir(tmp_path / "secrets")
    worker = await asyncio.to_thread(Worker, tmp_path, manifest, secrets, "w-snap",
                                    "--block-size", str(MiB))
    try:
        # the preloader's snapshot names only one file: the sidecar mounts from it, without listing
        data = small_tree["b/c/deep.bin"]
        etag = hashlib.md5(data).hexdigest()
        snapshot = encode_snapshot({"demo": [ObjectInfo("b/c/deep.bin", len(data), etag, 1.0e9)]})
        async with WorkerClient() as client:
            await client.put_meta(worker.url, LISTING_SNAPSHOT, snapshot)
        from eddy.blocks import BlockRef, owners

        first = BlockRef("demo", "b/c/deep.bin", etag, 0, len(data), MiB)
        dead = next(u for u in (dead_url() for _ in range(64)) if owners(first, [u, worker.url])[0] == u)
        cfg = build_config(doc, worker_urls=(dead, worker.url), block_size=MiB)
        async with await DatasetReader.create(cfg, s3_server.secrets(), options()) as reader:
            assert reader.metadata.source == "snapshot" and reader.metadata.namespace.stats.files == 1
            assert b"".join([c async for c in reader.read_file("b/c/deep.bin")]) == data
            m = reader.metrics
            assert m.value("eddy_sidecar_fetched_bytes_total", source="worker") == len(data)
            assert m.value("eddy_sidecar_fetched_bytes_total", source="store") == 0
            # blocks the dead worker owns went to the next owner in HRW order
            assert m.value("eddy_sidecar_fallbacks_total", reason="unavailable") >= 1
            assert reader.breaker.down() == [dead]
    finally:
        await asyncio.to_thread(worker.kill)


async def test_ttl_refresh_adds_new_objects_and_keeps_inodes(
    s3_server: Any, s3_bucket: str, small_tree: dict[str, bytes]
) -> None:
    """The refresh builds the new tree off the event loop, then swaps it in: kept paths keep their inode."""
    cfg = build_config(s3_server.dataset_doc(s3_bucket, "p"), block_size=MiB)
    async with await DatasetReader.create(cfg, s3_server.secrets(), options(use_snapshot=False)) as reader:
        before = reader.metadata.namespace.resolve("a/0.bin")
        assert before is not None and reader.metadata.namespace.resolve("new/late.bin") is None
        s3_server.put_object(s3_bucket, "p/new/late.bin", b"late arrival")
        await reader.metadata.refresh()
        after = reader.metadata.namespace.resolve("a/0.bin")
        late = reader.metadata.namespace.resolve("new/late.bin")
        assert after is not None and after.ino == before.ino
        assert late is not None and late.size == len(b"late arrival")
        assert b"".join([c async for c in reader.read_file("new/late.bin")]) == b"late arrival"
        assert reader.metadata.namespace.stats.files == len(small_tree) + 2
