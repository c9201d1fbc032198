"""DataLoad `runAfter`, `ttlSecondsAfterFinished` and `policy: OnEvent` (preloader/sequence.py), with the
preloader's real API adapter against the sandbox API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from eddy.api import parse_dataload
from eddy.kube import DATALOADS, Kube
from eddy.retry import RetryPolicy
from preloader import status as st
from preloader.kubeapi import KubeApi
from preloader.schedule import SystemClock
from preloader.sequence import PredecessorFailed, expire, wait_run_after

NS = "default"


def dataload(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "data.fluid.io/v1alpha1", "kind": "DataLoad",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"dataset": {"name": "demo"}, **spec}}


@pytest.fixture
async def kube(kube_api: Any) -> AsyncIterator[Kube]:
    async with await Kube.connect(url=kube_api.url) as client:
        yield client


async def test_run_after_waits_for_the_named_dataload_to_complete(kube: Kube) -> None:
    api = KubeApi(kube)
    first = await kube.create(DATALOADS, dataload("first"), NS)
    await kube.patch_status(DATALOADS, "first", {"status": {"phase": st.EXECUTING}}, NS)
    after = {"kind": "DataLoad", "name": "first"}
    second = await kube.create(DATALOADS, dataload("second", runAfter=after), NS)
    dl = parse_dataload(second)
    conditions: list[dict[str, Any]] = []
    waiting = asyncio.create_task(
        wait_run_after(api, dl, second, SystemClock(), conditions,
                       backoff=RetryPolicy(initial=0.05, maximum=0.1, jitter=0.5, attempts=None)))
    for _ in range(100):
        doc = await kube.get(DATALOADS, "second", NS)
        if (doc.get("status") or {}).get("waitingFor"):
            break
        await asyncio.sleep(0.02)
    assert doc["status"]["phase"] == st.PENDING and doc["status"]["waitingFor"] == {"operationComplete": True}
    assert "first" in doc["status"]["conditions"][0]["message"]
    assert not waiting.done()
    await kube.patch_status(DATALOADS, "first", {"status": {"phase": st.COMPLETE}}, NS)
    await asyncio.wait_for(waiting, 5)
    assert first["metadata"]["name"] == "first"


async def test_run_after_a_failed_dataload_fails(kube: Kube) -> None:
    await kube.create(DATALOADS, dataload("broken"), NS)
    await kube.patch_status(DATALOADS, "broken", {"status": {"phase": st.FAILED}}, NS)
    doc = await kube.create(DATALOADS, dataload("next", runAfter={"kind": "DataLoad", "name": "broken"}), NS)
    with pytest.raises(PredecessorFailed, match="DataLoad default/broken failed"):
        await wait_run_after(KubeApi(kube), parse_dataload(doc), doc, SystemClock(), [])


async def test_ttl_deletes_a_finished_once_dataload_but_not_a_cron_one(kube: Kube) -> None:
    api = KubeApi(kube)
    doc = await kube.create(DATALOADS, dataload("short-lived", ttlSecondsAfterFinished=1), NS)
    done = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    await kube.patch_status(DATALOADS, "short-lived", {"status": {
        "phase": st.COMPLETE, "completionTime": done}}, NS)
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(expire(api, parse_dataload(doc), SystemClock()), 5)
    assert asyncio.get_running_loop().time() - started <= 3
    assert await kube.get_or_none(DATALOADS, "short-lived", NS) is None
    cron = await kube.create(DATALOADS, dataload("nightly", policy="Cron", schedule="0 2 * * *",
                                                 ttlSecondsAfterFinished=0), NS)
    assert not await expire(api, parse_dataload(cron), SystemClock())  # Fluid gives Cron no TTL
    running = await kube.create(DATALOADS, dataload("running", ttlSecondsAfterFinished=0), NS)
    assert not await expire(api, parse_dataload(running), SystemClock())  # not finished


def test_on_event_is_accepted_and_runs_as_once() -> None:
    dl = parse_dataload(dataload("on-event", policy="OnEvent", ttlSecondsAfterFinished=5))
    assert (dl.policy, dl.ttl_seconds_after_finished) == ("OnEvent", 5)
