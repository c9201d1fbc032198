"""eddy.objectstore and eddy.secrets against a real S3 server (SeaweedFS) and a real misbehaving proxy."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import traceback
from pathlib import Path
from typing import Any

import botocore.utils
import pytest

from eddy.api import parse_dataset
from eddy.blocks import blocks_for_range, blocks_of
from eddy.objectstore import (
    DEFAULT_RETRY_BUDGET,
    ObjectChanged,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreDenied,
    ObjectStoreError,
    ObjectStoreUnavailable,
    endpoint_settings,
    retry_budget,
)
from eddy.objectstore_meta import parse_s3_timestamp
from eddy.retry import RetryPolicy
from eddy.secrets import SecretError, SecretSource, credentials_for
from sandbox.s3server import start_seaweedfs
from tests.support.faultproxy import FaultProxy
from tests.support.s3 import S3Server, make_client

FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, budget=0.3)
KiB = 1024


def _store(s3: S3Server, bucket: str, prefix: str = "", *, endpoint: str | None = None,
           **kwargs: object) -> ObjectStore:
    mount = s3.mount(bucket, prefix, endpoint=endpoint)
    return ObjectStore.for_mount(mount, s3.secrets(), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ listing
async def test_list_2500_keys_across_pages(s3_server: S3Server, s3_bucket: str,
                                           fault_proxy: FaultProxy) -> None:
    keys = [f"data/part-{i // 100:02d}/obj-{i:05d}.bin" for i in range(2500)]
    s3_server.put_objects(s3_bucket, [(k, k.encode()) for k in keys], concurrency=32)
    s3_server.put_object(s3_bucket, "data/empty-dir/", b"")
    s3_server.put_object(s3_bucket, "outside.txt", b"not under the mount")

    async with _store(s3_server, s3_bucket, "data", endpoint=fault_proxy.endpoint) as store:
        before = fault_proxy.requests
        listed = [info async for info in store.list(page_size=400)]
        pages = fault_proxy.requests - before

    expected = sorted([k.removeprefix("data/") for k in keys] + ["empty-dir/"])
    assert [info.key for info in listed] == expected
    assert pages == -(-len(expected) // 400)  # 2501 keys at 400 per page: 7 real requests
    by_key = {info.key: info for info in listed}
    assert by_key["empty-dir/"].size == 0
    assert by_key["part-07/obj-00712.bin"].size == len(b"data/part-07/obj-00712.bin")
    assert all(len(info.etag) == 32 and '"' not in info.etag for info in listed)
    assert all(info.mtime > 1.6e9 for info in listed)

    async with _store(s3_server, s3_bucket, "data") as store:
        sub = [info.key async for info in store.list("part-03/", page_size=30)]
    assert sub == sorted(k.removeprefix("data/") for k in keys if "/part-03/" in k)
    assert len(sub) == 100


async def test_list_retries_a_throttled_page(s3_server: S3Server, s3_bucket: str,
                                             fault_proxy: FaultProxy) -> None:
    s3_server.put_objects(s3_bucket, [(f"k{i:03d}", b"x") for i in range(50)])
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=FAST_RETRY) as store:
        seen = []
        async for info in store.list(page_size=20):
            seen.append(info.key)
            if len(seen) == 1:
                fault_proxy.fail_next(2, "slowdown")  # the second page is throttled twice
    assert seen == [f"k{i:03d}" for i in range(50)]
    assert fault_proxy.faults_served == 2


def test_the_fast_timestamp_parser_gives_what_botocores_default_gives() -> None:
    """LIST pages' timestamps go through parse_s3_timestamp (set on the shared session's parsers): the
    forms S3 and SeaweedFS send, and the ones botocore's parser keeps (HEAD's RFC 822, epochs, offsets),
    parse to the same instant and zone as botocore's default parser gives."""
    forms = [
        "2024-01-02T03:04:05.000Z",  # S3, OSS
        "2024-01-02T03:04:05Z",  # SeaweedFS
        "2024-02-29T23:59:59.5Z", "1999-12-31T00:00:00.123456Z", "2024-01-02T03:04:05.123456789Z",
        "Tue, 02 Jan 2024 03:04:05 GMT", "2024-01-02T03:04:05+02:00", "1704164645", "2024-01-02T03:04:05",
    ]
    for value in forms:
        ours, theirs = parse_s3_timestamp(value), botocore.utils.parse_timestamp(value)
        assert ours == theirs and ours.utcoffset() == theirs.utcoffset(), value
        assert ours.timestamp() == theirs.timestamp(), value


async def test_listed_mtimes_equal_the_default_parsers_on_the_real_server(
        s3_server: S3Server, s3_bucket: str) -> None:
    """The timestamps SeaweedFS really sends in a LIST page take the fast form, and the store's mtimes
    equal those of a plain botocore client (default parser) for the same page, and for a HEAD."""
    keys = [f"data/t{i:02d}" for i in range(20)]
    s3_server.put_objects(s3_bucket, [(k, b"x" * i) for i, k in enumerate(keys)])
    raw: list[bytes] = []
    client = make_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    client.meta.events.register("before-parse.s3.ListObjectsV2",
                                lambda response_dict, **_: raw.append(response_dict["body"]))
    page: dict[str, Any] = await asyncio.to_thread(client.list_objects_v2, Bucket=s3_bucket, Prefix="data/")
    head: dict[str, Any] = await asyncio.to_thread(client.head_object, Bucket=s3_bucket, Key=keys[3])
    client.close()
    sent = re.findall(rb"<LastModified>([^<]*)</LastModified>", raw[0])
    assert len(sent) == len(keys)
    assert all(re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", t) for t in sent), sent[:3]
    expected = {str(item["Key"]).removeprefix("data/"): item["LastModified"].timestamp()
                for item in page["Contents"]}
    async with _store(s3_server, s3_bucket, "data") as store:
        listed = {info.key: info.mtime async for info in store.list()}
        headed = await store.head(keys[3].removeprefix("data/"))
    assert listed == expected
    assert headed.mtime == head["LastModified"].timestamp()


# ------------------------------------------------------------------------------------------ reading
async def test_ranged_reads_equal_written_bytes(s3_server: S3Server, s3_bucket: str) -> None:
    block = 256 * KiB
    data = random.Random(7).randbytes(3 * block + 12345)  # 3 full blocks and a short last one
    etag = s3_server.put_object(s3_bucket, "ds/big.bin", data)
    s3_server.put_object(s3_bucket, "ds/empty.bin", b"")
    exact = random.Random(8).randbytes(2 * block)
    s3_server.put_object(s3_bucket, "ds/exact.bin", exact)

    async with _store(s3_server, s3_bucket, "ds/", max_connections=4) as store:
        info = await store.head("big.bin")
        assert (info.key, info.size, info.etag) == ("big.bin", len(data), etag)

        for start, end in [(0, 1), (0, block), (block - 10, block + 10), (5, len(data)),
                           (len(data) - 1, len(data)), (3 * block, len(data))]:
            assert await store.get_range("big.bin", start, end, etag=etag) == data[start:end]
        # A range past the end is clipped to the object, like read(2); one starting at the end is empty.
        assert await store.get_range("big.bin", len(data) - 100, len(data) + 5000) == data[-100:]
        assert await store.get_range("big.bin", len(data), len(data) + 10) == b""
        assert await store.get_range("empty.bin", 0, 10) == b""

        refs = list(blocks_of("m", "big.bin", etag, len(data), block))
        assert [r.length for r in refs] == [block, block, block, 12345]
        parts = [await store.get_range("big.bin", r.start, r.end, etag=r.etag) for r in refs]
        assert b"".join(parts) == data

        refs = blocks_for_range("m", "big.bin", etag, len(data), block - 1, 2, block)
        assert [r.index for r in refs] == [0, 1]

        exact_refs = list(blocks_of("m", "exact.bin", "e", len(exact), block))
        assert len(exact_refs) == 2
        got = [await store.get_range("exact.bin", r.start, r.end) for r in exact_refs]
        assert b"".join(got) == exact

        empty = await store.head("empty.bin")
        assert empty.size == 0
        (only,) = blocks_of("m", "empty.bin", empty.etag, 0, block)
        assert await store.get_range("empty.bin", only.start, only.end, etag=empty.etag) == b""

        with pytest.raises(ValueError):
            await store.get_range("big.bin", 10, 5)


async def test_get_range_chunks(s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy) -> None:
    """The body as received, unjoined (what the worker writes with writev): same bytes as get_range,
    through a retry; the end of the object clips it, past the end is empty, another ETag is refused."""
    data = random.Random(12).randbytes(700 * KiB + 3)
    etag = s3_server.put_object(s3_bucket, "chunks.bin", data)
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=FAST_RETRY) as store:
        fault_proxy.fail_next(1, "reset")
        chunks = await store.get_range_chunks("chunks.bin", 5, 600 * KiB, etag=etag)
        assert all(isinstance(c, bytes) for c in chunks) and b"".join(chunks) == data[5:600 * KiB]
        assert b"".join(await store.get_range_chunks("chunks.bin", 512 * KiB, 1024 * KiB)) == data[512 * KiB:]
        assert await store.get_range_chunks("chunks.bin", len(data), len(data) + 9) == []
        assert await store.get_range_chunks("chunks.bin", 3, 3) == []
        with pytest.raises(ObjectChanged):
            await store.get_range_chunks("chunks.bin", 0, 10, etag="f" * 32)


async def test_keys_with_unusual_characters(s3_server: S3Server, s3_bucket: str) -> None:
    keys = ["dir with space/ü ñ+plus%percent#hash?q=1&x;y.bin", "a~tilde/(paren)[b]{c}!'*$@,=:.txt"]
    for i, key in enumerate(keys):
        s3_server.put_object(s3_bucket, f"odd/{key}", f"payload {i}".encode())
    async with _store(s3_server, s3_bucket, "odd") as store:
        listed = [info.key async for info in store.list()]
        assert sorted(listed) == sorted(keys)
        for i, key in enumerate(keys):
            info = await store.head(key)
            assert await store.get_range(key, 0, 9, etag=info.etag) == f"payload {i}".encode()


def test_object_urls_for_both_addressing_styles() -> None:
    virtual = ObjectStore("oss", "bkt", "pre/", "https://s3.oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou")
    assert virtual._object_url("a b/ü+.bin") == (
        "https://bkt.s3.oss-cn-hangzhou.aliyuncs.com/pre/a%20b/%C3%BC%2B.bin")
    path = ObjectStore("s3", "bkt", "", "http://127.0.0.1:9000", path_style=True)
    assert path._object_url("x/y~z") == "http://127.0.0.1:9000/bkt/x/y~z"


async def test_many_concurrent_reads_through_a_small_pool(s3_server: S3Server, s3_bucket: str) -> None:
    import asyncio

    data = random.Random(9).randbytes(64 * KiB)
    s3_server.put_object(s3_bucket, "c.bin", data)
    async with _store(s3_server, s3_bucket, max_connections=2) as store:
        ranges = [(i * 1000, i * 1000 + 1500) for i in range(60)]
        got = await asyncio.gather(*(store.get_range("c.bin", a, b) for a, b in ranges))
    assert got == [data[a:b] for a, b in ranges]


async def test_etag_pinning_detects_a_replaced_object(s3_server: S3Server, s3_bucket: str) -> None:
    old = s3_server.put_object(s3_bucket, "v.bin", b"version one" * 100)
    async with _store(s3_server, s3_bucket) as store:
        assert await store.get_range("v.bin", 0, 11, etag=old) == b"version one"
        new = s3_server.put_object(s3_bucket, "v.bin", b"version two" * 100)
        assert new != old
        with pytest.raises(ObjectChanged) as caught:
            await store.get_range("v.bin", 0, 11, etag=old)
        assert caught.value.status == 412
        assert "v.bin" in str(caught.value)
        assert await store.get_range("v.bin", 0, 11, etag=new) == b"version two"
        assert (await store.head("v.bin")).etag == new


async def test_returned_etag_is_checked_even_if_the_server_ignores_if_match(
        s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy) -> None:
    etag = s3_server.put_object(s3_bucket, "w.bin", b"abcdef")
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint) as store:
        fault_proxy.override_response_headers = {"ETag": '"0123456789abcdef0123456789abcdef"'}
        with pytest.raises(ObjectChanged) as caught:
            await store.get_range("w.bin", 0, 3, etag=etag)
        assert caught.value.code == "ETagMismatch"
        assert await store.get_range("w.bin", 0, 3) == b"abc"  # unpinned reads do not care
        fault_proxy.override_response_headers = {}
        assert await store.get_range("w.bin", 0, 3, etag=etag) == b"abc"


async def test_missing_object_and_bucket(s3_server: S3Server, s3_bucket: str) -> None:
    async with _store(s3_server, s3_bucket, "p") as store:
        with pytest.raises(ObjectNotFound, match=r"oss://.*/p/nope"):
            await store.head("nope")
        with pytest.raises(ObjectNotFound):
            await store.get_range("nope", 0, 10)
        assert [i async for i in store.list()] == []
    async with _store(s3_server, f"{s3_bucket}-absent") as store:
        with pytest.raises(ObjectNotFound):
            await store.get_range("x", 0, 1)


async def test_s3_scheme_with_plain_options(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.put_object(s3_bucket, "under/x.txt", b"hello s3")
    doc = {
        "apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "plain"},
        "spec": {"mounts": [{
            "mountPoint": f"s3://{s3_bucket}/under", "name": "m",
            "options": {"fs.s3.endpoint": s3_server.endpoint, "fs.s3.region": "us-east-1",
                        "fs.s3.accessKeyId": s3_server.access_key,
                        "fs.s3.accessKeySecret": s3_server.secret_key},
        }]},
    }
    mount = parse_dataset(doc).mounts[0]
    async with ObjectStore.for_mount(mount) as store:
        assert [i.key async for i in store.list()] == ["x.txt"]
        assert await store.get_range("x.txt", 6, 8) == b"s3"


# ------------------------------------------------------------------------------------------ retries
@pytest.mark.parametrize("fault", ["slowdown", "throttle", "500", "reset"])
async def test_retries_succeed_after_transient_faults(s3_server: S3Server, s3_bucket: str,
                                                      fault_proxy: FaultProxy, fault: str) -> None:
    s3_server.put_object(s3_bucket, "r.bin", b"0123456789")
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=FAST_RETRY) as store:
        fault_proxy.fail_next(3, fault)  # type: ignore[arg-type]
        assert await store.get_range("r.bin", 2, 6) == b"2345"
        assert fault_proxy.faults_served == 3
        assert fault_proxy.pending == 0
        fault_proxy.fail_next(1, fault)  # type: ignore[arg-type]
        assert (await store.head("r.bin")).size == 10


async def test_retry_budget_exhausted_is_unavailable(s3_server: S3Server, s3_bucket: str,
                                                     fault_proxy: FaultProxy) -> None:
    s3_server.put_object(s3_bucket, "r.bin", b"0123456789")
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=FAST_RETRY) as store:
        fault_proxy.fail_next(10, "slowdown")
        before = fault_proxy.requests
        with pytest.raises(ObjectStoreUnavailable) as caught:
            await store.get_range("r.bin", 0, 4)
        assert fault_proxy.requests - before == FAST_RETRY.attempts  # bounded: exactly the budget
        assert caught.value.code == "SlowDown" and caught.value.status == 503
        assert "gave up after 4 attempts" in str(caught.value)
        fault_proxy.clear()
        assert await store.get_range("r.bin", 0, 4) == b"0123"


async def test_list_and_head_retry_for_a_time_budget_not_a_count(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    """Issue 16 §3: six 503s in a row on the one LIST failed a DataLoad. LIST and HEAD now retry until
    their time budget is spent, however many attempts that takes; ranged GETs keep their count."""
    s3_server.put_object(s3_bucket, "r.bin", b"0123456789")
    storm = RetryPolicy(attempts=4, initial=0.01, maximum=0.02, budget=5.0)
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=storm) as store:
        fault_proxy.fail_next(12, "slowdown")  # three times the attempt count
        assert [i.key async for i in store.list()] == ["r.bin"]
        assert fault_proxy.faults_served == 12
        fault_proxy.fail_next(12, "500")
        assert (await store.head("r.bin")).size == 10
        assert fault_proxy.pending == 0
    short = RetryPolicy(attempts=100, initial=0.05, maximum=0.1, budget=0.5)
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=short) as store:
        fault_proxy.fail_next(1000, "slowdown")
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(ObjectStoreUnavailable, match=r"in the 0.5s retry budget"):
            await store.head("r.bin")
        elapsed = asyncio.get_running_loop().time() - t0
        assert 0.3 <= elapsed <= 2.0, elapsed
        fault_proxy.clear()


def test_retry_budget_mount_option() -> None:
    assert retry_budget({}) == DEFAULT_RETRY_BUDGET >= 60
    assert retry_budget({"fs.eddy.retry-budget-seconds": "120"}) == 120.0
    for bad in ("soon", "-1", "1e9"):
        with pytest.raises(ValueError, match=r"fs\.eddy\.retry-budget-seconds"):
            retry_budget({"fs.eddy.retry-budget-seconds": bad})
    doc = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"},
           "spec": {"mounts": [{"mountPoint": "s3://b/p/", "name": "m",
                                "options": {"fs.s3.endpoint": "http://127.0.0.1:9",
                                            "fs.eddy.retry-budget-seconds": "7"}}]}}
    mount = parse_dataset(doc).mounts[0]
    assert ObjectStore.for_mount(mount).retry.budget == 7.0


async def test_a_hung_request_times_out_and_is_retried(s3_server: S3Server, s3_bucket: str,
                                                       fault_proxy: FaultProxy) -> None:
    s3_server.put_object(s3_bucket, "h.bin", b"abcdef")
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=FAST_RETRY,
                      request_timeout=0.5) as store:
        fault_proxy.fail_next(1, "hang")
        assert await store.get_range("h.bin", 1, 3) == b"bc"
        assert fault_proxy.faults_served == 1


async def test_not_found_and_precondition_are_not_retried(s3_server: S3Server, s3_bucket: str,
                                                          fault_proxy: FaultProxy) -> None:
    etag = s3_server.put_object(s3_bucket, "n.bin", b"abc")
    async with _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=FAST_RETRY) as store:
        before = fault_proxy.requests
        with pytest.raises(ObjectNotFound):
            await store.get_range("missing", 0, 1)
        with pytest.raises(ObjectChanged):
            await store.get_range("n.bin", 0, 1, etag=etag[::-1])
        assert fault_proxy.requests - before == 2


async def test_a_dead_endpoint_is_unavailable_after_the_budget(s3_server: S3Server) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes
    async with _store(s3_server, "bkt", endpoint=dead, retry=FAST_RETRY, request_timeout=2) as store:
        with pytest.raises(ObjectStoreUnavailable, match="gave up after 4 attempts"):
            await store.get_range("k", 0, 1)
        with pytest.raises(ObjectStoreUnavailable):
            await store.head("k")
        with pytest.raises(ObjectStoreUnavailable):
            [i async for i in store.list()]


# ------------------------------------------------------------------------------------- credentials
async def test_bad_credentials_give_a_clear_error(s3_server: S3Server, s3_bucket: str,
                                                  fault_proxy: FaultProxy) -> None:
    s3_server.put_object(s3_bucket, "a.txt", b"a")
    mount = s3_server.mount(s3_bucket, endpoint=fault_proxy.endpoint)
    wrong_secret = SecretSource.from_mapping({"access-key": {
        "fs.oss.accessKeyId": s3_server.access_key, "fs.oss.accessKeySecret": "not-the-secret-1234"}})
    unknown_key = SecretSource.from_mapping({"access-key": {
        "fs.oss.accessKeyId": "AKNOTAKEY0000", "fs.oss.accessKeySecret": "whatever-secret-5678"}})
    for secrets, code in [(wrong_secret, "SignatureDoesNotMatch"), (unknown_key, "InvalidAccessKeyId")]:
        async with ObjectStore.for_mount(mount, secrets, retry=FAST_RETRY) as store:
            before = fault_proxy.requests
            with pytest.raises(ObjectStoreDenied) as caught:
                await store.get_range("a.txt", 0, 1)
            assert fault_proxy.requests - before == 1  # a refusal is final, not retried
            assert caught.value.code == code and caught.value.status == 403
            text = "".join(traceback.format_exception(caught.value))
            assert "not-the-secret-1234" not in text and "whatever-secret-5678" not in text
            assert "AKNOTAKEY0000" not in text and s3_server.access_key not in text


async def test_no_credential_in_logs_or_errors(s3_server: S3Server, s3_bucket: str,
                                               fault_proxy: FaultProxy,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s3_server.put_object(s3_bucket, "a.txt", b"abc")
    texts: list[str] = []
    store = _store(s3_server, s3_bucket, endpoint=fault_proxy.endpoint, retry=FAST_RETRY)
    texts += [repr(store), str(store), repr(store.credentials), repr(s3_server.secrets())]
    async with store:
        fault_proxy.fail_next(2, "slowdown")
        assert await store.get_range("a.txt", 0, 3) == b"abc"
        for fault, call in [("500", store.head("a.txt")), (None, store.head("gone")),
                            (None, store.get_range("a.txt", 0, 1, etag="0" * 32))]:
            if fault:
                # every call fails until clear(): the 0.3 s budget, not a fault count, ends the retries
                fault_proxy.fail_next(10_000, fault)  # type: ignore[arg-type]
            with pytest.raises(ObjectStoreError) as caught:
                await call
            fault_proxy.clear()
            formatted = "".join(traceback.format_exception(caught.value))
            texts += [str(caught.value), repr(caught.value), formatted]
    assert len(caplog.records) >= 2  # the retries were logged
    texts.append(caplog.text)
    for text in texts:
        assert s3_server.access_key not in text
        assert s3_server.secret_key not in text


def test_secret_files_and_errors(tmp_path: Path) -> None:
    folder = tmp_path / "access-key"
    folder.mkdir()
    (folder / "fs.oss.accessKeyId").write_text("AKIDFROMFILE\n")
    (folder / "fs.oss.accessKeySecret").write_text("s3cr3t-from-file")
    encrypt = [{"name": k, "valueFrom": {"secretKeyRef": {"name": "access-key", "key": k}}}
               for k in ("fs.oss.accessKeyId", "fs.oss.accessKeySecret")]
    doc = {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"},
           "spec": {"mounts": [{"mountPoint": "oss://bkt/dir", "name": "m",
                                "options": {"fs.oss.endpoint": "oss-cn-hangzhou.aliyuncs.com"},
                                "encryptOptions": encrypt}]}}
    mount = parse_dataset(doc).mounts[0]
    creds = credentials_for(mount, SecretSource.from_dir(tmp_path))
    assert creds == ("AKIDFROMFILE", "s3cr3t-from-file")
    assert "s3cr3t" not in repr(creds) and "AKID" not in str(creds)

    os.remove(folder / "fs.oss.accessKeySecret")
    with pytest.raises(SecretError) as caught:
        credentials_for(mount, SecretSource.from_dir(tmp_path))
    assert "'access-key'" in str(caught.value) and "'fs.oss.accessKeySecret'" in str(caught.value)
    assert "AKIDFROMFILE" not in str(caught.value)

    with pytest.raises(SecretError, match="no secret source"):
        credentials_for(mount, None)
    with pytest.raises(SecretError, match="has no key"):
        SecretSource.from_mapping({"access-key": {}}).value(mount.encrypt_options[0].secret)

    half = parse_dataset({**doc, "spec": {"mounts": [{"mountPoint": "s3://b/x", "name": "m",
                                                      "options": {"fs.s3.accessKeyId": "AK"}}]}}).mounts[0]
    with pytest.raises(SecretError, match=r"fs\.s3\.accessKeySecret"):
        credentials_for(half, None)
    bare = parse_dataset({**doc, "spec": {"mounts": [{"mountPoint": "s3://b/x", "name": "m"}]}}).mounts[0]
    assert credentials_for(bare, None) is None


def test_endpoint_addressing_rules() -> None:
    assert endpoint_settings("oss", "oss-cn-hangzhou.aliyuncs.com", {}) == (
        "https://s3.oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou", False)
    assert endpoint_settings("oss", "oss-cn-beijing-internal.aliyuncs.com", {}) == (
        "https://s3.oss-cn-beijing-internal.aliyuncs.com", "cn-beijing", False)
    assert endpoint_settings("oss", "http://127.0.0.1:9000", {}) == (
        "http://127.0.0.1:9000", "us-east-1", True)
    assert endpoint_settings("oss", "http://localhost:9000", {})[2] is True
    assert endpoint_settings("s3", "minio.example:9000", {"fs.s3.path-style-access": "true"}) == (
        "https://minio.example:9000", "us-east-1", True)
    assert endpoint_settings("s3", "", {"fs.s3.region": "eu-west-1"}) == (None, "eu-west-1", False)
    assert endpoint_settings("s3", "https://s3.example.com", {})[2] is False


# --------------------------------------------------------------------------------- the local server
def test_local_server_instances_are_independent_and_stop_cleanly(s3_server: S3Server, tmp_path: Path) -> None:
    """A second server beside the session's: own ports and key pair, credentials enforced, clean stop."""
    import socket

    import botocore.exceptions

    local = start_seaweedfs(tmp_path / "second")
    try:
        assert local.endpoint != s3_server.endpoint
        assert local.access_key != s3_server.access_key
        assert set(local.ports.values()).isdisjoint(s3_server.local.ports.values())
        good = make_client(local.endpoint, local.access_key, local.secret_key)
        good.create_bucket(Bucket="second")
        assert good.list_buckets()["Buckets"][0]["Name"] == "second"
        foreign = make_client(local.endpoint, s3_server.access_key, s3_server.secret_key)
        with pytest.raises(botocore.exceptions.ClientError, match="InvalidAccessKeyId"):
            foreign.list_objects_v2(Bucket="second")
        assert "secret_key" not in repr(local) and local.secret_key not in repr(local)
    finally:
        local.stop()
    assert local.process.poll() is not None
    local.stop()  # idempotent
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", local.port)) != 0  # nothing listens any more
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{local.port}.sock"))
