"""The demo's data set: one large file plus many small ones, uploaded to the local S3 server.

The mix is what a model-serving or training pod typically reads: a big weights/shard file and a tree
of small files (configs, vocabularies, samples). Contents are pseudo-random from a seed, so every run
checks the copied bytes against SHA-256 sums computed while generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from dataclasses import dataclass, field

from aiobotocore.session import get_session
from botocore.config import Config

MiB = 1024 * 1024
LARGE_SHARE = 0.6  # of the total, in the one large file


@dataclass
class DataSet:
    bucket: str
    prefix: str
    files: dict[str, int] = field(default_factory=dict)  # relative path -> size
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.files.values())


def plan_files(total: int, seed: int = 13) -> dict[str, int]:
    """Relative path -> size: 60% in `model/weights.bin`, the rest in small files of 4 KiB..2 MiB."""
    rng = random.Random(seed)
    large = int(total * LARGE_SHARE)
    files = {"model/weights.bin": large}
    left = total - large
    i = 0
    while left > 0:
        size = min(left, rng.choice([4096, 65536, 262144, 1 * MiB, 2 * MiB]) + rng.randrange(4096))
        folder = ("samples", "vocab", "configs")[i % 3]
        files[f"{folder}/part-{i // 3 // 50:02d}/file-{i:05d}.dat"] = size
        left -= size
        i += 1
    files["README.txt"] = 0  # an empty file: readers must handle it too
    return files


def file_content(path: str, size: int) -> bytes:
    rng = random.Random(hashlib.sha256(path.encode()).digest())
    return rng.randbytes(size)


async def upload(
    endpoint: str,
    access_key: str,
    secret_key: str,
    bucket: str,
    prefix: str,
    total: int,
    concurrency: int = 16,
) -> DataSet:
    """Create the bucket and upload the generated files under `prefix`; returns sizes and checksums."""
    data = DataSet(bucket, prefix, plan_files(total))
    session = get_session()
    config = Config(s3={"addressing_style": "path"}, max_pool_connections=concurrency)
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=config,
    ) as s3:
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            await s3.create_bucket(Bucket=bucket)
        gate = asyncio.Semaphore(concurrency)

        async def put(path: str, size: int) -> None:
            async with gate:
                body = await asyncio.to_thread(file_content, path, size)
                data.sha256[path] = await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
                await s3.put_object(Bucket=bucket, Key=f"{prefix}{path}", Body=body)

        await asyncio.gather(*(put(p, s) for p, s in data.files.items()))
    return data
