"""A 503/delay storm on LIST, HEAD and GET (issue 16 §3), ridden out by a DataLoad and a reader.

The object store sits behind a `StormProxy`: 20% of LIST, HEAD and GET requests get `503 SlowDown`,
10% are delayed 0.5 s, and the first 8 LISTs fail in a row (the old fixed 6 attempts failed a whole
DataLoad with `ListingFailed`). The DataLoad runs through the real consumer (Kubernetes API, two
workers) and must end `Complete`; then a sidecar reader reads every file through the workers (falling
back to the stormy store) and HEADs every object: 0 wrong bytes, 0 failed HEADs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from eddy.api import parse_dataset
from eddy.config import build_config
from eddy.objectstore import ObjectStore
from sidecar.readahead import ReadaheadPolicy
from sidecar.reader import DatasetReader
from sidecar.settings import ReaderOptions
from tests.support.s3 import S3Server
from tests.support.stormproxy import StormProxy
from tests.test_preload_consumer import Env, _phase, _seed_dataload, _settings, env  # noqa: F401
from tests.test_preload_env import BS, make_bed

FILES = {f"storm/f{i:02d}.bin": (i * 37_011) % (5 * BS) + 1 for i in range(16)} | {"storm/empty": 0}


async def test_storm_on_list_head_get_is_ridden_out(
    env: Env, s3_server: S3Server, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    async with StormProxy(s3_server.endpoint, fail=0.2, delay=0.1, delay_s=0.5, list_burst=8) as proxy:
        bed = await make_bed(s3_server, s3_bucket, tmp_path, FILES, workers=0)
        try:
            bed.dataset_doc["spec"]["mounts"][0]["options"]["fs.oss.endpoint"] = proxy.endpoint
            bed.dataset = parse_dataset(bed.dataset_doc)
            for _ in range(2):
                await bed.start_worker()
            await env.start(_settings(bed))
            await env.create(bed.dataset_doc)
            await env.create(_seed_dataload())
            doc = await env.until("DataLoad", "serverless-data-warmup", _phase("Complete"), timeout=90)
            progress = doc["status"]["progress"]
            assert progress["loadedFiles"] == len(FILES) and progress["loadedBytes"] == bed.total_bytes
            assert progress["failedBlocks"] == 0
            assert proxy.failed["list"] >= 8  # the burst: more 503s in a row than the old attempt count

            cfg = build_config(bed.dataset_doc, worker_urls=tuple(bed.urls), block_size=BS)
            options = ReaderOptions(cache_bytes=4 * BS, breaker_cooldown=30.0, worker_timeout=5.0,
                                    readahead=ReadaheadPolicy(initial=BS, cap=2 * BS))
            wrong = 0
            async with await DatasetReader.create(cfg, s3_server.secrets(), options) as reader:
                for key, (data, _) in bed.objects.items():
                    got = b"".join([c async for c in reader.read_file(key)])
                    wrong += abs(len(got) - len(data)) + sum(a != b for a, b in zip(got, data, strict=False))
                    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), key
            assert wrong == 0
            async with ObjectStore.for_mount(bed.dataset.mounts[0], s3_server.secrets()) as store:
                for key, (data, etag) in bed.objects.items():
                    info = await store.head(key)
                    assert (info.size, info.etag) == (len(data), etag)
            # The storm really hit every operation.
            assert proxy.failed["head"] > 0 and proxy.failed["get"] > 0 and proxy.failed["list"] > 0
            assert sum(proxy.delayed.values()) > 0
            print(f"storm: seen {dict(proxy.seen)}, 503 {dict(proxy.failed)}, delayed {dict(proxy.delayed)}; "
                  f"wrong bytes {wrong}")
        finally:
            await bed.close()
