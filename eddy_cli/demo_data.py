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
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiobotocore.session import get_session
from botocore.config import Config

MiB = 1024 * 1024
LARGE_SHARE = 0.6  # of the total, in the one large file
CHUNK = 4 * MiB  # unit of generation: each chunk has its own seed
PART = 64 * MiB  # multipart part size for large files


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


def content_pieces(path: str, size: int, piece: int = 8 * MiB) -> Iterator[bytes]:
    """The file's pseudo-random bytes in pieces of `piece` (a multiple of CHUNK), same for every run.

    Generated per 4 MiB chunk from (path, chunk index): `randbytes` of a whole large file would need a
    bit count beyond a C int, and holding 600 MiB at once is not needed by anyone."""
    assert piece % CHUNK == 0
    for start in range(0, size, piece):
        stop = min(size, start + piece)
        yield b"".join(
            random.Random(f"{path}:{offset // CHUNK}").randbytes(min(CHUNK, stop - offset))
            for offset in range(start, stop, CHUNK)
        )


def file_content(path: str, size: int) -> bytes:
    return b"".join(content_pieces(path, size))


async def upload(
    endpoint: str,
    access_key: str,
    secret_key: str,
    bucket: str,
    prefix: str,
    total: int,
    concurrency: int = 16,
) -> DataSet:
    """Create the bucket and upload the generated files under `prefix`; returns sizes and checksums.

    Files above PART bytes go up as multipart uploads, one part in memory at a time."""
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
            key = f"{prefix}{path}"
            if size <= PART:
                async with gate:
                    body = await asyncio.to_thread(file_content, path, size)
                    data.sha256[path] = await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
                    await s3.put_object(Bucket=bucket, Key=key, Body=body)
                return
            digest = hashlib.sha256()
            upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
            parts = []
            pieces = content_pieces(path, size, PART)
            try:
                for number in range(1, -(-size // PART) + 1):
                    async with gate:
                        body = await asyncio.to_thread(next, pieces)
                        await asyncio.to_thread(digest.update, body)
                        reply = await s3.upload_part(
                            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                        )
                    parts.append({"PartNumber": number, "ETag": reply["ETag"]})
                await s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                raise
            data.sha256[path] = digest.hexdigest()

        await asyncio.gather(*(put(p, s) for p, s in data.files.items()))
    return data
