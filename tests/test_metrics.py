"""Every part's /metrics endpoint, scraped over HTTP: names and types (counters end in `_total`), and
the Grafana dashboard's queries against what the parts expose.

The controller and the preloader run as `eddy` processes against the sandbox's API server; the worker,
the webhook and the sidecar's health server run their real aiohttp apps in-process (the sidecar's
without a FUSE mount: the endpoint is the same object the mount serves).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from eddy.api import parse_dataset
from eddy.manifests import Manifests
from eddy_cli.procs import stop_child
from preloader.metrics import MeteredApi, PreloaderMetrics
from sandbox.apiserver import KubeApiServer
from sidecar.lifecycle import HealthServer
from sidecar.metrics import SidecarMetrics
from webhook.profiles import InjectorSettings
from webhook.server import FileResolver, make_app
from worker.server import WorkerServer, WorkerSettings
from worker.tierstore import LevelConfig

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "manifests" / "monitoring" / "grafana-dashboard.json"
EDDY = str(Path(sys.executable).parent / "eddy")
Families = dict[str, str]  # family name -> type


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(url: str, timeout: float = 20.0) -> tuple[Families, set[str]]:
    """GET a /metrics URL (retrying until it answers): families by type, and every sample name."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    assert resp.status == 200, f"{url}: HTTP {resp.status}"
                    text = await resp.text()
                    break
            except aiohttp.ClientConnectionError:
                assert loop.time() < deadline, f"{url} never answered"
                await asyncio.sleep(0.1)
    families: Families = {}
    samples: set[str] = set()
    for fam in text_string_to_metric_families(text):
        assert fam.name not in families, f"{url}: family {fam.name} twice"
        families[fam.name] = fam.type
        samples.update(s.name for s in fam.samples)
    return families, samples


def check_types(part: str, families: Families, samples: set[str], text_names: set[str]) -> None:
    """Counters are exposed as `<name>_total`; nothing else ends in `_total`."""
    for name, kind in families.items():
        if kind == "counter":
            assert f"{name}_total" in text_names or not any(s.startswith(name) for s in samples), (
                f"{part}: counter {name} has no {name}_total sample")
        else:
            assert not name.endswith("_total"), f"{part}: {name} is a {kind} named like a counter"
    for sample in samples:
        if sample.endswith("_total"):
            assert families.get(sample.removesuffix("_total")) == "counter", f"{part}: {sample} is no counter"


async def eddy_families(part: str, url: str) -> Families:
    families, samples = await scrape(url)
    names = {s for s in samples} | {f"{n}_total" for n, k in families.items() if k == "counter"}
    check_types(part, families, samples, names)
    return families


@pytest.fixture
async def processes(kube_api: KubeApiServer) -> AsyncIterator[dict[str, str]]:
    """`eddy controller` and `eddy preloader` with --metrics-port, against the sandbox's API server."""
    ports = {"controller": free_port(), "preloader": free_port()}
    argv = {
        "controller": [EDDY, "controller", "--kube-url", kube_api.url, "--allow-fluid", "--image", "x:1",
                       f"--metrics-port={ports['controller']}"],
        "preloader": [EDDY, "preloader", "--kube-url", kube_api.url, f"--metrics-port={ports['preloader']}"],
    }
    procs = [await asyncio.create_subprocess_exec(*a, stdout=asyncio.subprocess.DEVNULL,
                                                  stderr=asyncio.subprocess.DEVNULL) for a in argv.values()]
    try:
        yield {part: f"http://127.0.0.1:{port}/metrics" for part, port in ports.items()}
    finally:
        await asyncio.gather(*(stop_child(proc) for proc in procs))


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"


def dataset_doc() -> dict[str, object]:
    return {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "m", "namespace": "default", "uid": "u-1"},
            "spec": {"mounts": [{"mountPoint": "oss://bucket/data", "name": "data",
                                 "options": {"fs.oss.endpoint": "http://127.0.0.1:1"}}]}}


async def all_parts(processes: dict[str, str], tmp_path: Path) -> dict[str, Families]:
    parts: dict[str, Families] = {}
    runners: list[web.AppRunner] = []
    health = HealthServer(SidecarMetrics())
    try:
        settings = WorkerSettings(dataset=parse_dataset(dataset_doc()),
                                  levels=[LevelConfig("MEM", tmp_path / "mem", 1 << 20, 0.95, 0.7)],
                                  meta_dir=tmp_path / "meta")
        runner, worker_url = await serve(WorkerServer(settings).app())
        runners.append(runner)
        runner, webhook_url = await serve(make_app(FileResolver(Manifests()), InjectorSettings()))
        runners.append(runner)
        await health.start(0, "0.0.0.0")  # the opt-in: reachable at the pod's address
        health.metrics.cache_hits.set(3)
        parts["worker"] = await eddy_families("worker", worker_url)
        parts["webhook"] = await eddy_families("webhook", webhook_url)
        parts["sidecar"] = await eddy_families("sidecar", f"http://{pod_address()}:{health.port}/metrics")
        for part, url in processes.items():
            parts[part] = await eddy_families(part, url)
    finally:
        await health.close()
        for runner in runners:
            await runner.cleanup()
    return parts


def pod_address() -> str:
    """An address of this host other than loopback (what a Prometheus outside the pod dials)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the route's source
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.2"  # no route at all: still not the 127.0.0.1 the old bind was limited to


EXPECTED = {
    "controller": {"eddy_controller_reconciles": "counter", "eddy_controller_queue_depth": "gauge"},
    "preloader": {"eddy_preloader_dataloads": "gauge", "eddy_preloader_warmed_bytes": "counter",
                  "eddy_preloader_warmed_blocks": "counter", "eddy_preloader_dataload_failures": "counter",
                  "eddy_preloader_queue_depth": "gauge", "eddy_preloader_executing": "gauge",
                  "eddy_preloader_api_requests": "counter"},
    "worker": {"eddy_worker_block_hits": "counter", "eddy_worker_warm_blocks": "counter",
               "eddy_objectstore_requests": "counter", "eddy_objectstore_read_bytes": "counter"},
    "webhook": {"eddy_webhook_admissions": "counter"},
    "sidecar": {"eddy_sidecar_cache_hits": "counter", "eddy_sidecar_cache_misses": "counter",
                "eddy_sidecar_fetched_bytes": "counter", "eddy_sidecar_fallbacks": "counter",
                "eddy_sidecar_cache_bytes": "gauge"},
}


async def test_every_part_serves_typed_metrics(processes: dict[str, str], tmp_path: Path) -> None:
    parts = await all_parts(processes, tmp_path)
    for part, expected in EXPECTED.items():
        got = {name: parts[part].get(name) for name in expected}
        assert got == expected, f"{part}: {got}"
    dashboard = json.loads(DASHBOARD.read_text())
    known = set()
    for families in parts.values():
        for name, kind in families.items():
            known.add(name)
            if kind == "counter":
                known.add(f"{name}_total")
            if kind == "histogram":
                known.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    queried = dashboard_metric_names(dashboard)
    assert queried, "the dashboard queries no metric"
    assert queried <= known, f"the dashboard queries metrics no part exposes: {sorted(queried - known)}"
    # The preloader counts its own API requests (a request hook on its Kube): its informer's list and watch.
    for verb in ("list", "watch"):
        labels = {"verb": verb, "resource": "dataloads"}
        assert await sample_value(processes["preloader"], "eddy_preloader_api_requests_total", labels) >= 1


async def sample_value(url: str, name: str, labels: dict[str, str], timeout: float = 20.0) -> float:
    """The value of one sample at a /metrics URL, scraped again until it is there (or `timeout` ends)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as resp:
                text = await resp.text()
            for fam in text_string_to_metric_families(text):
                for sample in fam.samples:
                    if sample.name == name and sample.labels == labels:
                        return float(sample.value)
            assert loop.time() < deadline, f"{url}: no {name}{labels} after {timeout}s"
            await asyncio.sleep(0.1)


def dashboard_metric_names(dashboard: dict[str, object]) -> set[str]:
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    return {m for e in exprs for m in re.findall(r"\beddy_[a-z_]+", e)}


async def test_preloader_metrics_follow_the_status_it_writes() -> None:
    class Api:
        async def patch_status(self, *args: object) -> None:
            return None

    metrics = PreloaderMetrics()
    api = MeteredApi(Api(), metrics)  # type: ignore[arg-type]
    await api.patch_status("DataLoad", "ns", "a", {"phase": "Executing"})
    await api.patch_status("DataLoad", "ns", "a", {"progress": {"loadedBytes": 10, "fetchedBlocks": 1}})
    await api.patch_status("DataLoad", "ns", "a", {"phase": "Complete", "progress": {
        "loadedBytes": 30, "fetchedBlocks": 2, "alreadyCachedBlocks": 1}})
    assert metrics.value("eddy_preloader_warmed_bytes_total") == 30
    assert metrics.value("eddy_preloader_warmed_blocks_total", result="fetched") == 2
    assert metrics.value("eddy_preloader_warmed_blocks_total", result="cached") == 1
    await api.patch_status("DataLoad", "ns", "b", {"phase": "Failed", "conditions": [
        {"type": "Failed", "reason": "ListingFailed"}]})
    assert metrics.value("eddy_preloader_dataload_failures_total", reason="ListingFailed") == 1
    assert metrics.value("eddy_preloader_dataloads", phase="Complete") == 1
    assert metrics.value("eddy_preloader_dataloads", phase="Failed") == 1
