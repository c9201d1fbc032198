"""One version per open file, end to end (issue 16 §1, §3): real FUSE mounts over the real S3 server.

An object is replaced under an open reader A; the namespace learns the new ETag (from A's failed read,
from an open's HEAD, or from a listing refresh); a second reader B opens. Every byte either reader gets
is compared with the version its descriptor opened: A only ever gets the old version (or EIO), B only the
new one. The kernel's page cache is dropped for the file between reads (posix_fadvise DONTNEED) so the
reads really go through FUSE again. Each test prints its checksums and counts wrong bytes (always 0).

HEAD coalescing is counted through a proxy in front of the S3 server (in-process reader, no FUSE).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from eddy.config import build_config
from sidecar.reader import DatasetReader, ObjectChangedError
from sidecar.settings import ReaderOptions
from tests.support.faultproxy import FaultProxy
from tests.support.fuse import require_fuse
from tests.test_sidecar_mount import Sidecar, Worker

MiB = 1024 * 1024
BS = MiB  # a small block size: many blocks per file, so reads cross many block fetches


def version(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Tally:
    """Bytes each descriptor got, checked against the version it opened."""

    wrong: int = 0
    checked: int = 0
    errors: list[str] = field(default_factory=list)

    def read(self, fd: int, offset: int, size: int, expect: bytes) -> bytes | None:
        try:
            got = os.pread(fd, size, offset)
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ESTALE), exc
            self.errors.append(f"{errno.errorcode[exc.errno or 0]}@{offset}")
            return None
        want = expect[offset : offset + size]
        self.wrong += sum(1 for a, b in zip(got, want, strict=False) if a != b) + abs(len(got) - len(want))
        self.checked += len(got)
        return got


def drop_pages(fd: int) -> None:
    """Drop this file's pages from the kernel's page cache: the next read goes to FUSE again."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def read_whole(fd: int, size: int, tally: Tally, expect: bytes) -> bytes:
    out = bytearray()
    for off in range(0, size, MiB):
        got = tally.read(fd, off, MiB, expect)
        assert got is not None, f"a read of the current version failed: {tally.errors[-1:]}"
        out += got
    return bytes(out)


@pytest.fixture(scope="module")
def bed(s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_fuse()
    work = tmp_path_factory.mktemp("consistency")
    bucket = s3_server.create_bucket(f"cons{os.getpid()}")
    secrets = s3_server.write_secret_dir(work / "secrets")
    return {"work": work, "bucket": bucket, "secrets": secrets}


def manifest_for(s3_server: Any, bed: dict[str, Any], prefix: str) -> Path:
    path: Path = bed["work"] / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump(s3_server.dataset_doc(bed["bucket"], prefix, name=prefix)))
    return path


@pytest.fixture
def mounted(request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Sidecars and workers a test starts; always stopped."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Sidecar):
            thing.stop()
        else:
            thing.kill()


def replaced_under_open_reader(sc: Sidecar, put: Any, v1: bytes, v2: bytes, *, warm: bool,
                               learn: str) -> None:
    """The scenario of issue 16 §1 on a started sidecar; asserts 0 wrong bytes."""
    path = sc.mountpoint / "obj.bin"
    a_tally, b_tally = Tally(), Tally()
    a = os.open(path, os.O_RDONLY)
    b = -1
    try:
        for off in range(0, 4 * MiB, MiB):  # A reads the start of v1 (the kernel caches those pages)
            assert a_tally.read(a, off, MiB, v1) is not None
        put(v2)
        if learn == "failed-read":  # A's next uncached block fails (no v1 anywhere): HEAD -> learnt
            assert a_tally.read(a, len(v1) - MiB, MiB, v1) is None  # beyond the read-ahead so far
            assert sc.metric("eddy_sidecar_heads_total") == 1
        elif learn == "open-head":  # the open after metadata_ttl HEADs the object
            time.sleep(5.3)
        elif learn == "listing":  # the listing refresh (--listing-ttl 1)
            time.sleep(2.5)
        b = os.open(path, os.O_RDONLY)
        st_a, st_b = os.fstat(a), os.fstat(b)
        assert st_a.st_ino != st_b.st_ino, "the new version must be another inode"
        assert (st_a.st_size, st_b.st_size) == (len(v1), len(v2))
        # interleaved: B a chunk of v2, A a chunk of v1, pages dropped in between
        for i, off in enumerate(range(0, max(len(v1), len(v2)), MiB)):
            if i % 3 == 0:
                drop_pages(a)
                drop_pages(b)
            if off < len(v2):
                assert b_tally.read(b, off, MiB, v2) is not None, b_tally.errors[-1:]
            if off < len(v1):
                a_tally.read(a, off, MiB, v1)
        drop_pages(b)
        whole_b = read_whole(b, len(v2), b_tally, v2)
        a_again = a_tally.read(a, 0, MiB, v1)  # A's first range again: v1 or EIO, never v2
        if warm:  # the workers hold v1: the old descriptor reads v1 whole
            drop_pages(a)
            whole_a = read_whole(a, len(v1), a_tally, v1)
            assert sha(whole_a) == sha(v1)
        print(f"\n[{learn}, {'warm workers' if warm else 'no workers'}] v1 {sha(v1)} v2 {sha(v2)}; "
              f"B read {sha(whole_b)} ({b_tally.checked} bytes checked, {b_tally.wrong} wrong); "
              f"A: {a_tally.checked} bytes checked, {a_tally.wrong} wrong, {len(a_tally.errors)} "
              f"EIO/ESTALE (e.g. {a_tally.errors[:2]}), first MiB again: "
              f"{'EIO' if a_again is None else sha(a_again)}; "
              f"HEADs {sc.metric('eddy_sidecar_heads_total'):g}")
        assert sha(whole_b) == sha(v2)
        assert a_tally.wrong == 0 and b_tally.wrong == 0
        # a third reader, opened now, reads the new version whole too
        with open(path, "rb") as f:
            assert sha(f.read()) == sha(v2)
    finally:
        os.close(a)
        if b >= 0:
            os.close(b)


def test_replaced_object_default_settings_learnt_from_a_failed_read(
    s3_server: Any, bed: dict[str, Any], mounted: list[Any]
) -> None:
    v1, v2 = version(64 * MiB, 1), version(20 * MiB, 2)  # v1 longer than the read-ahead reaches
    s3_server.put_object(bed["bucket"], "plain/obj.bin", v1)
    manifest = manifest_for(s3_server, bed, "plain")
    sc = Sidecar(bed["work"], manifest, bed["secrets"], "--no-workers", "--block-size", str(BS),
                 "--listing-ttl", "300", name="plain")
    mounted.append(sc)
    sc.start()

    def put(data: bytes) -> None:
        s3_server.put_object(bed["bucket"], "plain/obj.bin", data)

    replaced_under_open_reader(sc, put, v1, v2, warm=False, learn="failed-read")


def test_replaced_object_warm_workers_learnt_from_the_open_head(
    s3_server: Any, bed: dict[str, Any], mounted: list[Any]
) -> None:
    """Default settings with a warm worker: the old descriptor keeps reading v1 whole (the worker
    holds it); the open after the metadata TTL (5 s by default) HEADs and opens v2."""
    v1, v2 = version(24 * MiB, 3), version(28 * MiB, 4)
    s3_server.put_object(bed["bucket"], "warm/obj.bin", v1)
    manifest = manifest_for(s3_server, bed, "warm")
    worker = Worker(bed["work"], manifest, bed["secrets"], "w-cons", "--block-size", str(BS))
    mounted.append(worker)
    sc = Sidecar(bed["work"], manifest, bed["secrets"], "--worker", worker.url, "--block-size", str(BS),
                 "--listing-ttl", "300", "--cache-mib", "4", "--readahead-mib", "2", name="warm")
    mounted.append(sc)
    sc.start()
    with open(sc.mountpoint / "obj.bin", "rb") as f:  # warm the worker with v1
        assert sha(f.read()) == sha(v1)
    assert sc.metric("eddy_sidecar_fetched_bytes_total", source="worker") > 0

    def put(data: bytes) -> None:
        s3_server.put_object(bed["bucket"], "warm/obj.bin", data)

    replaced_under_open_reader(sc, put, v1, v2, warm=True, learn="open-head")


def test_replaced_object_learnt_from_the_listing_refresh(
    s3_server: Any, bed: dict[str, Any], mounted: list[Any]
) -> None:
    """HEAD-on-open off (--metadata-ttl -1): a listing refresh learns the new ETag; no HEAD at all."""
    v1, v2 = version(16 * MiB, 5), version(16 * MiB, 6)
    s3_server.put_object(bed["bucket"], "listed/obj.bin", v1)
    manifest = manifest_for(s3_server, bed, "listed")
    sc = Sidecar(bed["work"], manifest, bed["secrets"], "--no-workers", "--block-size", str(BS),
                 "--listing-ttl", "1", "--metadata-ttl", "-1", name="listed")
    mounted.append(sc)
    sc.start()

    def put(data: bytes) -> None:
        s3_server.put_object(bed["bucket"], "listed/obj.bin", data)

    replaced_under_open_reader(sc, put, v1, v2, warm=False, learn="listing")
    assert sc.metric("eddy_sidecar_heads_total") == 0


def test_opens_within_the_metadata_ttl_share_one_head(
    s3_server: Any, bed: dict[str, Any], mounted: list[Any]
) -> None:
    """The cost side: 40 opens of a file within the TTL send at most one HEAD."""
    data = version(MiB, 7)
    s3_server.put_object(bed["bucket"], "many/obj.bin", data)
    sc = Sidecar(bed["work"], manifest_for(s3_server, bed, "many"), bed["secrets"], "--no-workers",
                 "--metadata-ttl", "2", name="many")
    mounted.append(sc)
    sc.start()
    time.sleep(2.1)
    for _ in range(40):
        with open(sc.mountpoint / "obj.bin", "rb") as f:
            assert f.read(16) == data[:16]
    assert sc.metric("eddy_sidecar_heads_total") == 1


def test_a_large_directory_is_revalidated_by_one_list(
    s3_server: Any, bed: dict[str, Any], mounted: list[Any]
) -> None:
    """30 files in one directory, opened after the TTL: one LIST page, no HEAD; a replaced file opens
    at its new version, a deleted one is gone (ENOENT), the others unchanged."""
    files = {f"d/f{i:02d}": version(1000 + i, 100 + i) for i in range(30)}
    s3_server.put_objects(bed["bucket"], [(f"dir/{k}", v) for k, v in files.items()])
    sc = Sidecar(bed["work"], manifest_for(s3_server, bed, "dir"), bed["secrets"], "--no-workers",
                 "--metadata-ttl", "1", name="dir")
    mounted.append(sc)
    sc.start()
    s3_server.put_object(bed["bucket"], "dir/d/f03", new := version(5000, 999))
    s3_server.delete_object(bed["bucket"], "dir/d/f07")
    time.sleep(1.2)
    wrong = 0
    for key, data in files.items():
        try:
            got = (sc.mountpoint / key).read_bytes()
        except FileNotFoundError:
            assert key == "d/f07"
            continue
        want = new if key == "d/f03" else data
        wrong += sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(got) - len(want))
    lists, heads = sc.metric("eddy_sidecar_dir_lists_total"), sc.metric("eddy_sidecar_heads_total")
    print(f"\n30 opens after the TTL: {lists:g} LIST, {heads:g} HEADs; wrong bytes {wrong}")
    assert wrong == 0 and (lists, heads) == (1, 0)
    assert not (sc.mountpoint / "d/f07").exists()


# ------------------------------------------------------------------------------ HEAD coalescing
class HeadCountingProxy(FaultProxy):
    """The fault proxy, counting requests by method."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.by_method: dict[str, int] = {}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.by_method[request.method] = self.by_method.get(request.method, 0) + 1
        return await super()._handle(request)


async def test_failed_reads_and_concurrent_opens_share_one_head(s3_server: Any, s3_bucket: str) -> None:
    v1, v2 = version(16 * MiB, 8), version(16 * MiB, 9)
    s3_server.put_object(s3_bucket, "h/obj.bin", v1)
    proxy = HeadCountingProxy(s3_server.endpoint)
    async with proxy:
        doc = s3_server.dataset_doc(s3_bucket, "h", endpoint=proxy.endpoint)
        cfg = build_config(doc, block_size=BS)
        options = ReaderOptions(cache_bytes=2 * MiB, prefetch_budget=0, use_snapshot=False,
                                metadata_ttl=0.0)
        async with await DatasetReader.create(cfg, s3_server.secrets(), options) as reader:
            node = reader.metadata.namespace.resolve("obj.bin")
            assert node is not None
            h = reader.open_file(node)
            first = bytes(await reader.read(h, 0, MiB))
            wrong = sum(a != b for a, b in zip(first, v1[:MiB], strict=True))
            await asyncio.to_thread(s3_server.put_object, s3_bucket, "h/obj.bin", v2)
            heads0 = proxy.by_method.get("HEAD", 0)
            # 15 concurrent reads of blocks not cached, on the old handle: each fails, one HEAD in all
            results = await asyncio.gather(*(reader.read(h, i * MiB, MiB) for i in range(1, 16)),
                                           return_exceptions=True)
            assert all(isinstance(r, ObjectChangedError) for r in results), results
            after_reads = proxy.by_method.get("HEAD", 0) - heads0
            # and 100 more failed reads later: the namespace already knows v2, no HEAD
            for i in range(100):
                with pytest.raises(ObjectChangedError):
                    await reader.read(h, (1 + i % 15) * MiB, 4096)
            after_more = proxy.by_method.get("HEAD", 0) - heads0
            live = reader.metadata.namespace.resolve("obj.bin")
            assert live is not None and live.etag != h.etag and live.ino != h.ino
            # 50 concurrent opens that all revalidate (metadata_ttl 0): one HEAD shared by them
            await asyncio.to_thread(s3_server.put_object, s3_bucket, "h/obj.bin", v1)
            before = proxy.by_method.get("HEAD", 0)
            nodes = await asyncio.gather(*(reader.metadata.revalidate(live) for _ in range(50)))
            opens_heads = proxy.by_method.get("HEAD", 0) - before
            assert len({n.ino for n in nodes if n is not None}) == 1
            fresh = nodes[0]
            assert fresh is not None and fresh.etag != live.etag
            got = b"".join([bytes(await reader.read(reader.open_file(fresh), off, MiB))
                            for off in range(0, len(v1), MiB)])
            wrong += sum(a != b for a, b in zip(got, v1, strict=True))
            print(f"\nHEADs: {after_reads} for 15 concurrent failed reads, {after_more} after 100 more, "
                  f"{opens_heads} for 50 concurrent revalidating opens; reread {sha(got)} = v1 "
                  f"{sha(v1)}; wrong bytes {wrong}")
            assert (after_reads, after_more, opens_heads) == (1, 1, 1)
            assert reader.metrics.value("eddy_sidecar_heads_total") == 2
            assert wrong == 0
