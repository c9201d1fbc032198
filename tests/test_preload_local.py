"""Loads against the real S3 server (SeaweedFS) and real workers on 127.0.0.1 (no Kubernetes API)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from eddy.api import DataLoad, LoadTarget, ObjectMeta, parse_dataload
from eddy.blocks import owners
from eddy.retry import RetryPolicy
from eddy.snapshot import decode_snapshot
from eddy.wire import LISTING_SNAPSHOT
from eddy.workerclient import WorkerClient
from preloader.dispatch import Progress
from preloader.load import LoadError, LoadJob, run_load
from preloader.status import COMPLETE, FAILED
from tests.support.s3 import S3Server
from tests.support.seed import SEED
from tests.test_preload_env import BS, SMALL_FILES, bed_for, cache_state

FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, maximum=0.02)
ROOT = Path(__file__).resolve().parents[1]


def _seed_dataload(**spec: object) -> DataLoad:
    doc = yaml.safe_load((SEED / "dataload.yaml").read_text())
    doc["spec"].update(spec)
    return parse_dataload(doc)


async def test_seed_dataload_caches_every_block_on_its_owner(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=2) as bed,
        WorkerClient(dataset="default/serverless-data") as client,
    ):
        dl = _seed_dataload()
        assert dl.load_metadata
        result = await run_load(LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS), client)
        assert result.outcome.phase == COMPLETE, result.outcome.message
        assert result.outcome.reason == "DataLoadComplete" and not result.outcome.partial
        p = result.progress
        assert (p.files_total, p.bytes_total) == (len(SMALL_FILES), bed.total_bytes)
        assert (p.files_loaded, p.bytes_loaded, p.blocks_loaded) == (
            len(SMALL_FILES),
            bed.total_bytes,
            len(bed.refs()),
        )
        assert result.whole_dataset and result.verification.share == 1.0
        # Every block is now a hit on its owner (read straight from the worker, past the gate).
        direct = {w.url: w.direct for w in bed.workers}
        async with aiohttp.ClientSession() as session:
            for ref in bed.refs():
                (owner,) = owners(ref, bed.urls, 1)
                assert await cache_state(session, direct[owner], ref, "default/serverless-data") == "hit"
        # loadMetadata: the listing snapshot is on every worker.
        for url in bed.urls:
            blob = await client.get_meta(url, LISTING_SNAPSHOT)
            assert blob is not None
            listed = {o.key: (o.size, o.etag) for o in decode_snapshot(blob)["demo"]}
            assert listed == {k: (len(d), e) for k, (d, e) in bed.objects.items()}
        # Loading again is cheap: every block answers "cached", nothing is fetched.
        again = await run_load(LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS), client)
        assert again.progress.warm_fetched == 0 and again.progress.warm_cached == len(bed.refs())


async def test_target_subset_loads_only_that_subset(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=1) as bed,
        WorkerClient(dataset="default/serverless-data") as client,
    ):
        dl = _seed_dataload(loadMetadata=False, target=[{"path": "/train"}])
        result = await run_load(LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS), client)
        assert result.outcome.phase == COMPLETE and not result.whole_dataset
        train = bed.refs("train/")
        assert result.progress.files_total == 3 and result.progress.blocks_loaded == len(train)
        stats = await client.stats(bed.urls[0])
        assert stats["blocks"] == len(train)
        assert stats["cached_bytes"] == sum(
            len(d) for k, (d, _) in bed.objects.items() if k.startswith("train/")
        )


async def test_replicas_two_puts_each_block_on_two_workers(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=3) as bed,
        WorkerClient(dataset="default/serverless-data") as client,
    ):
        dl = _seed_dataload(target=[{"path": "/", "replicas": 2}])
        result = await run_load(LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS), client)
        assert result.outcome.phase == COMPLETE, result.outcome.message
        assert result.progress.warm_fetched == 2 * len(bed.refs())
        direct = {w.url: w.direct for w in bed.workers}
        async with aiohttp.ClientSession() as session:
            for ref in bed.refs():
                pair = owners(ref, bed.urls, 2)
                assert len(pair) == 2
                for url in pair:
                    assert await cache_state(session, direct[url], ref, "default/serverless-data") == "hit"
        total_blocks = sum([(await client.stats(u))["blocks"] for u in bed.urls])
        assert total_blocks == 2 * len(bed.refs())


async def test_quota_too_small_completes_with_share_and_reason(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    files = {f"f{i}.bin": 2 * BS for i in range(8)}  # 1 MiB of data, 16 blocks
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, files, workers=1, quota=8 * BS) as bed,
        WorkerClient(dataset="default/serverless-data") as client,
    ):
        dl = _seed_dataload(loadMetadata=False)
        result = await run_load(LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS), client)
        o = result.outcome
        assert o.phase == COMPLETE and o.reason == "CacheQuotaTooSmall"
        assert 0 < o.cached_share < 1
        stats = await client.stats(bed.urls[0])
        share = stats["cached_bytes"] / bed.total_bytes
        assert o.cached_share == pytest.approx(share)
        assert o.partial.startswith(f"{100 * share:.1f}% of the target is cached")
        assert "the cache tier quota is too small to hold it" in o.partial
        assert f"{bed.urls[0]} holds" in o.partial and "MEM quota 512.00KiB (high 0.95)" in o.partial


async def test_worker_down_for_part_of_the_load_is_retried(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    files = {f"f{i}.bin": BS for i in range(12)}
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, files, workers=2) as bed,
        WorkerClient(dataset="default/serverless-data", timeout=5) as client,
    ):
        gate = bed.workers[1].gate
        gate.down = True

        async def come_back() -> None:
            while gate.refused < 2:  # noqa: ASYNC110 - polling a counter of the gate
                await asyncio.sleep(0.01)
            gate.down = False

        back = asyncio.create_task(come_back())
        dl = _seed_dataload(loadMetadata=False, options={"batchSize": "2"})
        retry = RetryPolicy(attempts=8, initial=0.05, maximum=0.2)
        result = await run_load(
            LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS, retry=retry), client
        )
        await back
        p = result.progress
        assert gate.refused >= 2 and p.retries >= 1, (gate.refused, p.retries, p.errors)
        assert result.outcome.phase == COMPLETE, result.outcome.message
        assert result.progress.blocks_loaded == 12 and not result.progress.failed_workers


async def test_unreachable_worker_fails_naming_it(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    files = {f"f{i}.bin": BS for i in range(6)}
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, files, workers=2) as bed,
        WorkerClient(dataset="default/serverless-data", timeout=5) as client,
    ):
        dead = bed.workers[0].gate
        dead.down = True
        dl = _seed_dataload(loadMetadata=False)
        result = await run_load(
            LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS, retry=FAST_RETRY), client
        )
        o = result.outcome
        assert o.phase == FAILED and o.reason == "WorkersUnreachable"
        assert o.message.startswith(
            f"1 of the workers could not be reached after retries: {dead.url}: unreachable after 3 attempts"
        )
        # Isolation: the other worker got its blocks.
        alive = bed.urls[1]
        mine = [r for r in bed.refs() if owners(r, bed.urls, 1) == [alive]]
        assert (await client.stats(alive))["blocks"] == len(mine) > 0


async def test_target_path_without_objects_fails(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=1) as bed,
        WorkerClient(dataset="default/serverless-data") as client,
    ):
        dl = _seed_dataload(target=[{"path": "/nothing-here"}])
        with pytest.raises(LoadError) as err:
            await run_load(LoadJob(dl, bed.dataset, bed.urls, s3_server.secrets(), BS), client)
        assert err.value.reason == "NoObjects"
        assert err.value.message == (
            f"target path '/nothing-here' has no objects (oss://{s3_bucket}/data/nothing-here)"
        )


async def test_cancel_stops_warm_requests_and_rerun_resumes(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    files = {f"f{i:02}.bin": BS for i in range(24)}
    async with (
        bed_for(s3_server, s3_bucket, tmp_path, files, workers=1) as bed,
        WorkerClient(dataset="default/serverless-data") as client,
    ):
        gate = bed.workers[0].gate
        # 64 KiB blocks one per request at 512 KiB/s: ~8 requests a second, slow enough to stop midway.
        slow = DataLoad(
            ObjectMeta("slow"),
            "serverless-data",
            "default",
            targets=(LoadTarget(),),
            options={"batchSize": "1", "concurrency": "1", "bandwidth": "512Ki"},
        )
        progress = Progress()
        task = asyncio.create_task(
            run_load(LoadJob(slow, bed.dataset, bed.urls, s3_server.secrets(), BS), client, progress=progress)
        )
        for _ in range(500):
            if gate.warm_requests >= 12:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sent = gate.warm_requests
        assert 12 <= sent < 24
        await asyncio.sleep(0.5)
        assert gate.warm_requests == sent  # nothing more after the cancel
        held = (await client.stats(bed.urls[0]))["blocks"]
        assert held >= 11
        # A restart runs the same load again: cached blocks are answered "cached", not fetched again.
        fast = DataLoad(ObjectMeta("slow"), "serverless-data", "default", targets=(LoadTarget(),))
        again = await run_load(LoadJob(fast, bed.dataset, bed.urls, s3_server.secrets(), BS), client)
        assert again.outcome.phase == COMPLETE
        assert again.progress.warm_cached == held
        assert again.progress.warm_fetched == 24 - held
        assert (await client.stats(bed.urls[0]))["blocks"] == 24


def test_eddy_preload_cli_from_files(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    async def setup_and_run() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        async with bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=2) as bed:
            ds_file = tmp_path / "dataset.yaml"
            ds_file.write_text(yaml.safe_dump(bed.dataset_doc))
            secret_dir = s3_server.write_secret_dir(tmp_path / "secrets")
            base = [
                sys.executable,
                "-m",
                "eddy_cli.main",
                "preload",
                "-f",
                str(SEED / "dataload.yaml"),
                "--secret-dir",
                str(secret_dir),
                "--block-size",
                str(BS),
            ]
            workers = [a for u in bed.urls for a in ("--worker", u)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            ok = await asyncio.to_thread(
                subprocess.run,
                [*base, "-f", str(ds_file), *workers],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=ROOT,
            )
            missing = await asyncio.to_thread(
                subprocess.run,
                [*base, *workers],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=ROOT,
            )
            return ok, missing

    ok, missing = asyncio.run(setup_and_run())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert lines[-2].split() == ["NAME", "DATASET", "PHASE", "AGE", "DURATION"]
    name, dataset, phase, _age, duration = lines[-1].split()
    assert (name, dataset, phase) == ("serverless-data-warmup", "serverless-data", "Complete")
    assert duration.endswith("s") and duration != "Unfinished"
    assert missing.returncode == 1
    assert "Dataset default/serverless-data is in none of the given files" in missing.stdout
    assert missing.stdout.strip().splitlines()[-1].split()[2] == "Failed"
