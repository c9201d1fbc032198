"""The S3 test bed: a real SeaweedFS on 127.0.0.1 for the whole session, with helpers.

Fixtures:
- `s3_server` (session): an `S3Server` — `.endpoint`, `.access_key`, `.secret_key`, sync helpers
  `create_bucket`, `put_object`, `put_objects`, `delete_object`, `secrets()`, `write_secret_dir(root)`,
  `dataset_doc(bucket, prefix)`, `mount(bucket, prefix)`.
- `s3_bucket` (function): a fresh, empty, uniquely named bucket on that server.
- `fault_proxy` (function, async): a `FaultProxy` in front of the server (see tests/support/faultproxy.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import botocore.session
import pytest
from botocore.config import Config

from eddy.api import Mount, parse_dataset
from eddy.secrets import SecretSource
from sandbox.s3server import LocalS3, start_seaweedfs
from tests.support.faultproxy import FaultProxy

SECRET_NAME = "access-key"
_bucket_counter = itertools.count()


@dataclass
class S3Server:
    local: LocalS3
    _client: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return self.local.endpoint

    @property
    def access_key(self) -> str:
        return self.local.access_key

    @property
    def secret_key(self) -> str:
        return self.local.secret_key

    @property
    def client(self) -> Any:
        """A plain sync botocore S3 client (thread-safe; fine in tests)."""
        if self._client is None:
            self._client = make_client(self.endpoint, self.access_key, self.secret_key)
        return self._client

    def create_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def put_object(self, bucket: str, key: str, data: bytes) -> str:
        """Upload one object; returns its ETag without quotes."""
        resp = self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return str(resp["ETag"]).strip('"')

    def put_objects(self, bucket: str, items: Iterable[tuple[str, bytes]], concurrency: int = 16) -> None:
        """Seed many objects fast: concurrent PUTs to SeaweedFS's filer API (the bucket must exist).

        Bulk seeding only: the objects are plain S3 objects afterwards; what a test checks still goes
        through S3. Keys ending in "/" (directory markers) go through S3 itself. Callable from sync
        and async tests alike (it runs its own event loop in a worker thread).
        """
        pending = list(items)
        markers = [(k, v) for k, v in pending if k.endswith("/")]
        files = [(k, v) for k, v in pending if not k.endswith("/")]
        for key, data in markers:
            self.put_object(bucket, key, data)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._filer_put(bucket, files, concurrency)).result()

    async def _filer_put(self, bucket: str, items: list[tuple[str, bytes]], concurrency: int) -> None:
        base = f"{self.local.filer_url}/buckets/{bucket}/"
        limit = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def put(key: str, data: bytes) -> None:
                async with limit, session.put(base + quote(key, safe="/"), data=data) as resp:
                    if resp.status not in (200, 201):
                        raise RuntimeError(f"filer PUT {key}: HTTP {resp.status}: {await resp.text()}")

            await asyncio.gather(*(put(k, v) for k, v in items))

    def delete_object(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def delete_bucket(self, bucket: str) -> None:
        """Empty and remove a bucket: SeaweedFS then drops its collection's volumes. Without this a long
        session fills the volume server's slots (a few volumes per bucket) and PutObject starts to
        answer InternalError late in the suite."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            for item in page.get("Contents") or []:
                self.client.delete_object(Bucket=bucket, Key=item["Key"])
        self.client.delete_bucket(Bucket=bucket)

    def secrets(self, scheme: str = "oss") -> SecretSource:
        """The credentials as the Secret `access-key` of the seed's secret.yaml."""
        return SecretSource.from_mapping({
            SECRET_NAME: {
                f"fs.{scheme}.accessKeyId": self.access_key,
                f"fs.{scheme}.accessKeySecret": self.secret_key,
            }
        })

    def write_secret_dir(self, root: Path, scheme: str = "oss") -> Path:
        """The Secret as files `<root>/access-key/<key>` (what a mounted Secret volume looks like)."""
        return self.local.write_secret_dir(root, SECRET_NAME, scheme)

    def dataset_doc(
        self, bucket: str, prefix: str = "", name: str = "serverless-data", *, scheme: str = "oss",
        namespace: str = "default", endpoint: str | None = None,
    ) -> dict[str, Any]:
        """A Dataset manifest shaped like the seed's dataset.yaml, pointing at this server.

        `endpoint` overrides the server's (e.g. a FaultProxy or an OSS-like Link in front of it).
        """
        inner = prefix.strip("/")
        mount_point = f"{scheme}://{bucket}/{inner}" if inner else f"{scheme}://{bucket}"
        return {
            "apiVersion": "data.fluid.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "mounts": [{
                    "mountPoint": mount_point,
                    "name": "demo",
                    "path": "/",
                    "options": {f"fs.{scheme}.endpoint": endpoint or self.endpoint},
                    "encryptOptions": [
                        {"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}
                        for key in (f"fs.{scheme}.accessKeyId", f"fs.{scheme}.accessKeySecret")
                    ],
                }]
            },
        }

    def mount(
        self, bucket: str, prefix: str = "", *, scheme: str = "oss", endpoint: str | None = None
    ) -> Mount:
        """The parsed mount of `dataset_doc(bucket, prefix)`."""
        doc = self.dataset_doc(bucket, prefix, scheme=scheme, endpoint=endpoint)
        return parse_dataset(doc).mounts[0]


def make_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=32,
            retries={"mode": "standard", "max_attempts": 3},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with tempfile.TemporaryDirectory(prefix="eddy-s3-") as tmp:
        local = start_seaweedfs(Path(tmp))
        try:
            yield S3Server(local)
        finally:
            local.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket, unique per test (and per pytest process, since sessions may share a machine),
    removed after the test."""
    name = s3_server.create_bucket(f"t{os.getpid()}-{next(_bucket_counter)}")
    yield name
    try:
        s3_server.delete_bucket(name)
    except Exception as exc:  # a test that broke the server must not also fail its teardown
        print(f"could not remove bucket {name}: {exc}")


@pytest.fixture
async def fault_proxy(s3_server: S3Server) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(s3_server.endpoint) as proxy:
        yield proxy
