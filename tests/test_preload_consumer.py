"""`eddy preloader`'s consumer against the Kubernetes API test server (real kubernetes-asyncio client),
the real S3 server and real workers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client as k8s

from eddy.api import GROUP, PLURALS, VERSION
from eddy.blocks import owners
from eddy.kube import Informer, Kube, make_api_client
from eddy.retry import RetryPolicy
from preloader.consumer import Consumer
from preloader.kubeapi import KubeApi, dataload_informer
from preloader.runner import ConsumerSettings
from tests.support.clock import ManualClock
from tests.support.s3 import S3Server
from tests.support.seed import SEED
from tests.test_preload_env import BS, SMALL_FILES, Bed, bed_for, cache_state

ROOT = Path(__file__).resolve().parents[1]
FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, maximum=0.02)
FAST_ATTEMPTS = RetryPolicy(initial=0.05, maximum=0.1, jitter=0.5, attempts=None)  # between attempts


class RecordingApi(KubeApi):
    """The real adapter, remembering every status patch it sent (to check the phase sequence)."""

    def __init__(self, kube: Kube) -> None:
        super().__init__(kube)
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.patches.append((kind, name, dict(status)))
        await super().patch_status(kind, namespace, name, status)

    def phases(self, name: str) -> list[str]:
        out: list[str] = []
        for kind, n, status in self.patches:
            if (
                kind == "DataLoad"
                and n == name
                and "phase" in status
                and (not out or out[-1] != status["phase"])
            ):
                out.append(status["phase"])
        return out


@dataclass
class Env:
    api_client: k8s.ApiClient
    custom: Any
    core: Any
    api: RecordingApi
    kube: Kube
    consumers: list[tuple[Consumer, Informer]] = field(default_factory=list)

    async def create(self, doc: dict[str, Any]) -> None:
        ns = doc["metadata"].setdefault("namespace", "default")
        await self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[doc["kind"]], doc)

    async def get(self, kind: str, name: str, ns: str = "default") -> dict[str, Any]:
        doc: dict[str, Any] = await self.custom.get_namespaced_custom_object(
            GROUP, VERSION, ns, PLURALS[kind], name
        )
        return doc

    async def delete(self, kind: str, name: str, ns: str = "default") -> None:
        await self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name)

    async def start(self, settings: ConsumerSettings, clock: ManualClock | None = None) -> Consumer:
        consumer = Consumer(self.api, settings, clock)
        informer = dataload_informer(self.kube, consumer.on_event, None, watch_timeout=30)
        informer.start()
        self.consumers.append((consumer, informer))
        await informer.wait_synced(10)
        return consumer

    async def stop(self, consumer: Consumer) -> None:
        for c, informer in list(self.consumers):
            if c is consumer:
                await informer.stop()
                await c.close()
                self.consumers.remove((c, informer))

    async def until(
        self,
        kind: str,
        name: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 20.0,
        ns: str = "default",
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with contextlib.suppress(k8s.ApiException):
                doc = await self.get(kind, name, ns)
                if check(doc.get("status") or {}):
                    return doc
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{kind} {name}: condition not reached; status {doc.get('status')}")
            await asyncio.sleep(0.05)

    async def events(self, name: str, ns: str = "default") -> list[tuple[str, str, str]]:
        events = await self.core.list_namespaced_event(ns)
        return [(e.type, e.reason, e.message) for e in events.items if e.involved_object.name == name]


@pytest.fixture
async def env(kube_api: Any) -> AsyncIterator[Env]:
    api_client = await make_api_client(kube_api.url)
    kube = Kube(await make_api_client(kube_api.url))
    e = Env(api_client, k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client), RecordingApi(kube), kube)
    try:
        yield e
    finally:
        for consumer, _ in list(e.consumers):
            await e.stop(consumer)
        await api_client.close()
        await kube.close()


def _seed_dataload(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SEED / "dataload.yaml").read_text())
    doc["spec"].update(spec)
    return doc


def _settings(bed: Bed, **kw: Any) -> ConsumerSettings:
    return ConsumerSettings(
        workers=tuple(bed.urls),
        secrets=bed.s3.secrets(),
        block_size=BS,
        wait_backoff=RetryPolicy(initial=0.1, maximum=0.3, jitter=0.5, attempts=None),
        progress_interval=0.1,
        attempt_backoff=FAST_ATTEMPTS,
        **kw,
    )


def _phase(want: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") == want


async def test_seed_dataload_pending_executing_complete(
    env: Env, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    async with bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=2) as bed:
        await env.start(_settings(bed))
        # The DataLoad first, its Dataset a moment later (one `kubectl apply` of both).
        await env.create(_seed_dataload())
        await env.until("DataLoad", "serverless-data-warmup", _phase("Pending"))
        await env.create(bed.dataset_doc)
        doc = await env.until("DataLoad", "serverless-data-warmup", _phase("Complete"))
        status = doc["status"]
        assert env.api.phases("serverless-data-warmup") == ["Pending", "Executing", "Complete"]
        executing = next(s for k, n, s in env.api.patches if s.get("phase") == "Executing")
        assert executing["duration"] == "Unfinished"
        assert status["duration"].endswith("s") and status["duration"] != "Unfinished"
        assert status["progress"]["loadedFiles"] == status["progress"]["totalFiles"] == len(SMALL_FILES)
        assert status["progress"]["loadedBytes"] == bed.total_bytes
        complete = [c for c in status["conditions"] if c["type"] == "Complete"]
        assert complete and complete[0]["status"] == "True" and complete[0]["reason"] == "DataLoadComplete"
        waiting = next(s for k, n, s in env.api.patches if s.get("phase") == "Pending")
        assert waiting["conditions"][-1]["message"] == (
            "waiting for Dataset default/serverless-data: it does not exist yet"
        )
        # Every block is a hit on its owner; the Dataset reports 100% cached.
        direct = {w.url: w.direct for w in bed.workers}
        async with aiohttp.ClientSession() as session:
            for ref in bed.refs():
                (owner,) = owners(ref, bed.urls, 1)
                assert await cache_state(session, direct[owner], ref, "default/serverless-data") == "hit"
        ds = await env.until(
            "Dataset",
            "serverless-data",
            lambda s: (s.get("cacheStates") or {}).get("cachedPercentage") == "100.0%",
        )
        assert ds["status"]["cacheStates"]["cached"] == f"{bed.total_bytes / 1024:.2f}KiB"
        reasons = [r for _, r, _ in await env.events("serverless-data-warmup")]
        assert {"DatasetNotFound", "LoadStarted", "LoadComplete"} <= set(reasons)


async def test_bad_inputs_fail_with_exact_messages(
    env: Env, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    async with bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=1) as bed:
        await env.create(bed.dataset_doc)
        consumer = await env.start(_settings(bed, retry=FAST_RETRY))
        other_ns = _seed_dataload()
        other_ns["metadata"] = {"name": "elsewhere", "namespace": "team-b"}
        await env.create(other_ns)
        malformed = _seed_dataload(target=[{"path": "train"}])
        malformed["metadata"]["name"] = "malformed"
        await env.create(malformed)
        empty = _seed_dataload(target=[{"path": "/nothing-here"}])
        empty["metadata"]["name"] = "empty"
        await env.create(empty)

        def message(doc: dict[str, Any]) -> str:
            return str(next(c for c in doc["status"]["conditions"] if c["type"] == "Failed")["message"])

        doc = await env.until("DataLoad", "elsewhere", _phase("Failed"), ns="team-b")
        assert message(doc) == (
            "DataLoad team-b/elsewhere is in namespace 'team-b' but its Dataset "
            "default/serverless-data is in 'default'; a DataLoad must be in its "
            "Dataset's namespace"
        )
        doc = await env.until("DataLoad", "malformed", _phase("Failed"))
        assert message(doc) == (
            'invalid DataLoad: spec.target[0].path: "train" must be an absolute path inside the dataset'
        )
        doc = await env.until("DataLoad", "empty", _phase("Failed"))
        assert (
            message(doc)
            == f"target path '/nothing-here' has no objects (oss://{s3_bucket}/data/nothing-here)"
        )
        await env.stop(consumer)
        # Workers unreachable after retries: named.
        dead = "http://127.0.0.1:9"
        await env.start(
            ConsumerSettings(
                workers=(dead,),
                secrets=s3_server.secrets(),
                block_size=BS,
                retry=FAST_RETRY,
                progress_interval=0.1,
                attempt_backoff=FAST_ATTEMPTS,
            )
        )
        down = _seed_dataload(loadMetadata=False)
        down["metadata"]["name"] = "down"
        await env.create(down)
        doc = await env.until("DataLoad", "down", _phase("Failed"))
        assert message(doc).startswith(
            f"1 of the workers could not be reached after retries: {dead}: unreachable after 3 attempts"
        )
        assert ("Warning", "WorkersUnreachable") in [(t, r) for t, r, _ in await env.events("down")]
        # Fluid's backoffLimit (default 3): four attempts, each failure a Retrying condition and Event.
        assert message(doc).endswith("(failed 4 times; backoffLimit 3)")
        assert [r for t, r, _ in await env.events("down")].count("Retrying") == 3
        retrying = next(c for c in doc["status"]["conditions"] if c["type"] == "Retrying")
        assert retrying["status"] == "True" and retrying["message"].startswith("attempt 3 of 4 failed: 1 of")
        # The consumer is still alive: a good DataLoad still completes.
        await env.stop(env.consumers[0][0])
        await env.start(_settings(bed))
        good = _seed_dataload(options={"colour": "red"})
        good["metadata"]["name"] = "good"
        await env.create(good)
        doc = await env.until("DataLoad", "good", _phase("Complete"))
        ignored = next(c for c in doc["status"]["conditions"] if c["type"] == "OptionsIgnored")
        assert "spec.options.colour: unknown option, ignored" in ignored["message"]


async def _slow_load(env: Env, bed: Bed, name: str) -> None:
    slow = _seed_dataload(
        loadMetadata=False, options={"batchSize": "1", "concurrency": "1", "bandwidth": "512Ki"}
    )
    slow["metadata"]["name"] = name
    await env.create(slow)


async def _wait_for(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_delete_mid_load_cancels(env: Env, s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    files = {f"f{i:02}.bin": BS for i in range(24)}
    async with bed_for(s3_server, s3_bucket, tmp_path, files, workers=1) as bed:
        await env.create(bed.dataset_doc)
        consumer = await env.start(_settings(bed))
        gate = bed.workers[0].gate
        await _slow_load(env, bed, "slow")
        await _wait_for(lambda: gate.warm_requests >= 4)
        await env.delete("DataLoad", "slow")
        await _wait_for(lambda: not consumer.entries)
        sent = gate.warm_requests
        await asyncio.sleep(0.5)
        assert gate.warm_requests == sent < 24


async def test_restart_mid_load_resumes_without_refetching(
    env: Env, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    files = {f"f{i:02}.bin": BS for i in range(24)}
    async with bed_for(s3_server, s3_bucket, tmp_path, files, workers=1) as bed:
        await env.create(bed.dataset_doc)
        first = await env.start(_settings(bed))
        gate = bed.workers[0].gate
        await _slow_load(env, bed, "resumable")
        await _wait_for(lambda: gate.warm_requests >= 8)
        await env.stop(first)  # the preloader dies mid-load: the DataLoad stays Executing
        held = await env.until("DataLoad", "resumable", _phase("Executing"))
        assert held["status"]["duration"] == "Unfinished"
        # A warm request the dead preloader left at the worker still finishes its blocks (the work is
        # kept): count the cache once the worker is idle and its block count has settled.
        blocks_before = await _settled_blocks(bed.workers[0].direct)
        assert 0 < blocks_before < 24
        # Speed it up for the second run (a spec edit), then start a new preloader.
        await env.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            "dataloads",
            "resumable",
            {"spec": {"options": {"batchSize": "4"}}},
            _content_type="application/merge-patch+json",
        )
        await env.start(_settings(bed))
        doc = await env.until("DataLoad", "resumable", _phase("Complete"))
        progress = doc["status"]["progress"]
        assert progress["alreadyCachedBlocks"] == blocks_before
        assert progress["fetchedBlocks"] == 24 - blocks_before
        assert progress["loadedBlocks"] == 24


async def _settled_blocks(worker: str) -> int:
    """The worker's block count once nothing is in flight and it stayed the same for five polls."""
    seen: list[int] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            async with session.get(worker + "/v1/stats") as r:
                stats = await r.json()
            seen = [*seen, stats["blocks"]][-5:] if stats["inflight"] == 0 else []
            if len(seen) == 5 and len(set(seen)) == 1:
                return seen[0]
            await asyncio.sleep(0.1)
    raise AssertionError(f"the worker did not settle: {seen}")


async def test_global_bound_runs_loads_one_at_a_time(
    env: Env, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    async with bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=1) as bed:
        await env.create(bed.dataset_doc)
        await env.start(_settings(bed, max_concurrent_loads=1))
        for name in ("one", "two", "three"):
            doc = _seed_dataload(loadMetadata=False)
            doc["metadata"]["name"] = name
            await env.create(doc)
        for name in ("one", "two", "three"):
            await env.until("DataLoad", name, _phase("Complete"))
        order = [(n, s["phase"]) for k, n, s in env.api.patches if k == "DataLoad" and "phase" in s]
        running = 0
        for _, phase in order:
            running += 1 if phase == "Executing" else -1 if phase == "Complete" else 0
            assert running <= 1


@pytest.mark.parametrize(("schedule", "period"), [("*/5 * * * *", timedelta(minutes=5)),
                                                  ("@hourly", timedelta(hours=1))])
async def test_cron_runs_on_schedule_with_injected_clock(
    env: Env, s3_server: S3Server, s3_bucket: str, tmp_path: Path, schedule: str, period: timedelta
) -> None:
    """A schedule `eddy validate` and the CRD accept (macros too) runs in the consumer, on time."""
    from eddy.api import parse_object

    async with bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=1) as bed:
        await env.create(bed.dataset_doc)
        cron = _seed_dataload(loadMetadata=False, policy="Cron", schedule=schedule)
        parse_object(cron)  # what eddy validate checks: it accepts the schedule
        cron["metadata"]["name"] = "nightly"
        await env.create(cron)
        created = (await env.get("DataLoad", "nightly"))["metadata"].get("creationTimestamp")
        from preloader.status import parse_time

        start = parse_time(created)
        assert start is not None
        clock = ManualClock(start)
        consumer = await env.start(_settings(bed), clock)
        await asyncio.sleep(0.3)
        assert consumer.runs_started == 0  # nothing before the first scheduled time
        await clock.advance(period)
        doc = await env.until(
            "DataLoad",
            "nightly",
            lambda s: s.get("phase") == "Complete" and bool(s.get("lastSuccessfulTime")),
        )
        first = doc["status"]["lastScheduleTime"]
        assert consumer.runs_started == 1
        await clock.advance(period)
        doc = await env.until(
            "DataLoad",
            "nightly",
            lambda s: s.get("lastScheduleTime") != first and s.get("phase") == "Complete",
        )
        assert consumer.runs_started == 2
        assert doc["status"]["lastSuccessfulTime"] >= doc["status"]["lastScheduleTime"]


async def test_eddy_preloader_command_end_to_end(
    env: Env, kube_api: Any, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The `eddy preloader` process itself: watches the API, loads, patches status, stops on SIGTERM."""
    async with bed_for(s3_server, s3_bucket, tmp_path, SMALL_FILES, workers=1) as bed:
        await env.create(bed.dataset_doc)
        await env.create(_seed_dataload())
        secret_dir = s3_server.write_secret_dir(tmp_path / "secrets")
        root = ROOT
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "eddy_cli.main",
            "preloader",
            "--kube-url",
            kube_api.url,
            "--namespace",
            "default",
            "--worker",
            bed.urls[0],
            "--secret-dir",
            str(secret_dir),
            "--block-size",
            str(BS),
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            doc = await env.until("DataLoad", "serverless-data-warmup", _phase("Complete"), timeout=30)
            assert doc["status"]["progress"]["loadedBytes"] == bed.total_bytes
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, out.decode()
        assert s3_server.secret_key not in out.decode()
