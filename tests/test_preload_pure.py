"""Pure parts of the preloader: plan, options, dispatch bookkeeping, status and duration formatting."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from eddy.api import DataLoad, LoadTarget, ObjectMeta, parse_dataset
from eddy.blocks import BlockRef, owners
from eddy.listing import ObjectInfo
from eddy.retry import RetryPolicy
from eddy.snapshot import SnapshotError, decode_snapshot, encode_snapshot
from eddy.workerclient import WarmResult, WorkerUnavailable
from preloader.dispatch import Dispatcher, Progress
from preloader.options import parse_options
from preloader.plan import PlanError, Selection, Totals, plan_blocks, resolve_targets
from preloader.status import (
    COMPLETE,
    FAILED,
    format_duration,
    judge,
    set_condition,
    verify,
)

KiB = 1024


def _dataset(mounts: list[tuple[str, str, str]]) -> object:
    return parse_dataset(
        {
            "apiVersion": "data.fluid.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "ds"},
            "spec": {"mounts": [{"mountPoint": mp, "name": n, "path": p} for n, mp, p in mounts]},
        }
    )


def _load(*targets: tuple[str, int]) -> DataLoad:
    return DataLoad(
        ObjectMeta("dl"),
        "ds",
        "default",
        targets=tuple(LoadTarget(p, r) for p, r in targets) or (LoadTarget(),),
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.4, "0s"),
        (44.6, "45s"),
        (59, "59s"),
        (60, "1m0s"),
        (123, "2m3s"),
        (3600, "1h0m0s"),
        (3720, "1h2m0s"),
        (3725, "1h2m5s"),
        (86400 + 3600, "25h0m0s"),
        (3 * 86400 + 4 * 3600, "76h0m0s"),
        (-5, "0s"),
    ],
)
def test_format_duration_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_resolve_targets_maps_paths_to_mounts() -> None:
    ds = _dataset([("a", "s3://b/x", "/a"), ("b", "s3://b/y", "/b"), ("root", "s3://c", "/r")])
    whole = resolve_targets(ds, _load())  # type: ignore[arg-type]
    assert sorted((s.mount.name, s.prefix) for s in whole) == [("a", ""), ("b", ""), ("root", "")]
    sub = resolve_targets(ds, _load(("/a/train", 2)))  # type: ignore[arg-type]
    assert [(s.mount.name, s.prefix, s.replicas) for s in sub] == [("a", "train", 2)]
    merged = resolve_targets(ds, _load(("/a/train", 3), ("/a", 1)))  # type: ignore[arg-type]
    assert [(s.mount.name, s.prefix, s.replicas) for s in merged] == [("a", "", 3)]
    with pytest.raises(PlanError, match=r"target path '/zzz' is in no mount of Dataset default/ds"):
        resolve_targets(ds, _load(("/zzz", 1)))  # type: ignore[arg-type]


def test_selection_prefix_boundary() -> None:
    ds = _dataset([("m", "s3://b", "/")])
    (sel,) = resolve_targets(ds, _load(("/train", 1)))  # type: ignore[arg-type]
    assert sel.covers("train/a") and sel.covers("train")
    assert not sel.covers("training/a")


async def _aiter(
    items: Sequence[tuple[Selection, ObjectInfo]],
) -> AsyncIterator[tuple[Selection, ObjectInfo]]:
    for item in items:
        yield item


async def test_plan_streams_blocks_with_hrw_owners() -> None:
    ds = _dataset([("m", "s3://b", "/")])
    (sel,) = resolve_targets(ds, _load(("/", 2)))  # type: ignore[arg-type]
    infos = [ObjectInfo("a", 10 * KiB, "e1", 0), ObjectInfo("dir/", 0, "", 0), ObjectInfo("b", 0, "e2", 0)]
    workers = ["http://w0", "http://w1", "http://w2"]
    plan = [a async for a in plan_blocks(_aiter([(sel, i) for i in infos]), workers, block_size=4 * KiB)]
    assert [(a.ref.key, a.ref.index, a.ref.length) for a in plan] == [
        ("a", 0, 4 * KiB),
        ("a", 1, 4 * KiB),
        ("a", 2, 2 * KiB),
        ("b", 0, 0),
    ]
    for a in plan:
        assert list(a.owners) == owners(a.ref, workers, 2)
        assert len(set(a.owners)) == 2
    totals = Totals()
    for info in infos:
        totals.add(info, 2, 3, 4 * KiB)
    assert (totals.files, totals.bytes, totals.blocks, totals.warms) == (2, 10 * KiB, 4, 8)


def test_options_known_unknown_and_malformed() -> None:
    opts = parse_options({"concurrency": "3", "bandwidth": "100Mi", "skipIfCached": "true", "colour": "red"})
    assert (opts.concurrency, opts.bandwidth, opts.skip_if_cached) == (3, 100 << 20, True)
    assert opts.warnings == (
        "spec.options.colour: unknown option, ignored "
        "(known: concurrency, bandwidth, skipIfCached, batchSize, backoffLimit)",
    )
    bad = parse_options({"concurrency": "-1", "bandwidth": "fast"})
    assert bad.concurrency == 8 and bad.bandwidth == 0 and len(bad.warnings) == 2


def test_snapshot_roundtrip_and_errors() -> None:
    mounts = {"demo": [ObjectInfo("a/b.bin", 5, "etag1", 1.5), ObjectInfo("a/", 0, "", 2.0)]}
    blob = encode_snapshot(mounts)
    assert decode_snapshot(blob) == mounts
    assert encode_snapshot(mounts) == blob  # deterministic (no gzip timestamp)
    import gzip
    import json

    raw = json.loads(gzip.decompress(blob))
    assert raw == {"version": 1, "mounts": {"demo": [["a/b.bin", 5, "etag1", 1.5], ["a/", 0, "", 2.0]]}}
    with pytest.raises(SnapshotError):
        decode_snapshot(b"not gzip")
    with pytest.raises(SnapshotError, match="version"):
        decode_snapshot(gzip.compress(b'{"version": 2, "mounts": {}}'))


def test_conditions_keep_transition_time_when_status_unchanged() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    conds = set_condition([], "Waiting", "True", "DatasetNotFound", "waiting", t0)
    later = set_condition(
        conds, "Waiting", "True", "DatasetNotFound", "still waiting", t0 + timedelta(minutes=1)
    )
    assert later[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert later[0]["lastProbeTime"] == "2026-01-01T00:01:00Z"
    flipped = set_condition(later, "Waiting", "False", "Found", "ok", t0 + timedelta(minutes=2))
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:02:00Z"


def test_verify_and_judge_partial_cache_names_the_reason() -> None:
    progress = Progress(files_total=2, bytes_total=200, blocks_total=2, blocks_loaded=2, bytes_loaded=200)
    progress.assigned_bytes = {"http://w0": 200}
    stats = {
        "http://w0": {
            "cached_bytes": 114,
            "levels": [{"mediumtype": "MEM", "quota": 120, "used": 114, "high": 0.95}],
        }
    }
    v = verify(progress.assigned_bytes, stats)
    assert v.share == pytest.approx(0.57)
    outcome = judge(progress, v)
    assert outcome.phase == COMPLETE and outcome.reason == "CacheQuotaTooSmall"
    assert outcome.partial.startswith(
        "57.0% of the target is cached (114.00B of 200.00B): the cache tier "
        "quota is too small to hold it: http://w0 holds 114.00B of the "
        "200.00B assigned to it (MEM quota 120.00B (high 0.95))"
    )
    full = judge(
        progress, verify(progress.assigned_bytes, {"http://w0": {"cached_bytes": 500, "levels": []}})
    )
    assert (full.phase, full.reason, full.partial) == (COMPLETE, "DataLoadComplete", "")
    progress.failed_workers["http://w1"] = "unreachable after 3 attempts: refused"
    down = judge(progress, v)
    assert down.phase == FAILED and down.reason == "WorkersUnreachable"
    assert "http://w1: unreachable after 3 attempts: refused" in down.message


class FakeClient:
    """A stand-in WorkerClient for bookkeeping tests (real workers are in test_preload_local.py)."""

    def __init__(self, down: set[str] | None = None, fail_first: int = 0) -> None:
        self.down = down or set()
        self.fail_first = fail_first
        self.calls: list[tuple[str, int]] = []
        self.inflight = 0
        self.max_inflight = 0

    async def warm(
        self, url: str, refs: Sequence[BlockRef], *, timeout: float | None = None
    ) -> list[WarmResult]:
        self.calls.append((url, len(refs)))
        if url in self.down or self.fail_first > 0:
            self.fail_first -= 1
            raise WorkerUnavailable(f"{url} warm: refused")
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        await asyncio.sleep(0.001)
        self.inflight -= 1
        return [WarmResult(i, "fetched", "MEM", r.length) for i, r in enumerate(refs)]


async def _plan(n_files: int, workers: list[str], replicas: int = 1) -> AsyncIterator[object]:
    ds = _dataset([("m", "s3://b", "/")])
    (sel,) = resolve_targets(ds, _load(("/", replicas)))  # type: ignore[arg-type]
    infos = [(sel, ObjectInfo(f"f{i}", 10 * KiB, f"e{i}", 0)) for i in range(n_files)]
    async for a in plan_blocks(_aiter(infos), workers, block_size=4 * KiB):
        yield a


async def test_dispatch_bounds_batches_and_counts() -> None:
    workers = ["http://w0", "http://w1"]
    client = FakeClient()
    progress = Progress(files_total=20, bytes_total=200 * KiB, blocks_total=60)
    d = Dispatcher(
        client,
        workers,
        progress=progress,
        concurrency=3,
        per_worker=2,
        batch_size=4,  # type: ignore[arg-type]
        retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.002),
    )
    await d.run(_plan(20, workers, replicas=2))  # type: ignore[arg-type]
    assert progress.files_loaded == 20 and progress.blocks_loaded == 60 and progress.bytes_loaded == 200 * KiB
    assert progress.warm_fetched == 120  # each block on 2 workers
    assert all(n <= 4 for _, n in client.calls)
    assert client.max_inflight <= 3
    assert progress.assigned_bytes == {"http://w0": 200 * KiB, "http://w1": 200 * KiB}


async def test_dispatch_retries_then_isolates_a_dead_worker() -> None:
    workers = ["http://w0", "http://w1"]
    client = FakeClient(down={"http://w1"}, fail_first=1)
    progress = Progress()
    d = Dispatcher(
        client,
        workers,
        progress=progress,
        batch_size=2,  # type: ignore[arg-type]
        retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.002),
        rng=random.Random(1),
    )
    await d.run(_plan(10, workers))  # type: ignore[arg-type]
    assert list(progress.failed_workers) == ["http://w1"]
    assert progress.failed_workers["http://w1"].startswith("unreachable after 3 attempts")
    w1_calls = [c for c in client.calls if c[0] == "http://w1"]
    assert len(w1_calls) <= 3 + 4 * 3  # in-flight batches at the time of failure; none after
    assert progress.blocks_loaded + progress.blocks_failed == 30
    assert progress.blocks_loaded == sum(
        1
        for a in [a async for a in _plan(10, workers)]  # type: ignore[attr-defined]
        if a.owners == ("http://w0",)
    )


def test_backoff_limit_option_and_default() -> None:
    from preloader.options import DEFAULT_BACKOFF_LIMIT
    from preloader.runner import RETRIED_REASONS, backoff_limit

    assert DEFAULT_BACKOFF_LIMIT == 3  # Fluid's dataloader chart: the loader Job's backoffLimit
    assert parse_options({}).backoff_limit == 3
    assert parse_options({"backoffLimit": "0"}).backoff_limit == 0
    bad = parse_options({"backoffLimit": "-1"})
    assert bad.backoff_limit == 3 and "backoffLimit" in bad.warnings[0]
    assert backoff_limit({"spec": {}}, 5) == 5
    assert backoff_limit({"spec": {"backoffLimit": 1}}, 5) == 1
    assert backoff_limit({"spec": {"backoffLimit": True}}, 5) == 5
    assert "NoObjects" not in RETRIED_REASONS and "ListingFailed" in RETRIED_REASONS
