"""Webhook benchmark: AdmissionReviews over HTTPS keep-alive on loopback against ONE webhook process.

The webhook runs in cluster mode against the Kubernetes API test server (`tests/support/kube.py`,
started inside this process; it counts calls), with the seed's Dataset, its PVC and runtime in it.
Figures: `max_per_s` (closed loop on 16 connections, 5,000 requests max, 10 s max), `p50_ms`/`p99_ms`/
`p999_ms` at a fixed 200/s (10 s, 4 s with --quick, in 20 short rounds that alternate with the
ceiling's, so that both meet the machine's load of the same seconds),
`api_calls_per_admission` (API calls made while admitting / admissions). The client is
bench/webhook_tail.py's: connections opened before the run, open loop timed from each request's due time.
Ceiling: a trivial aiohttp TLS endpoint answering a fixed small JSON body, driven the same way; and the
same endpoint spending the webhook's extra CPU per request in a busy loop (`tail.ceiling_same_cpu`): the
tail any server with the webhook's CPU cost gets on this machine at that moment.
Goals: >= 1,000/s, p99 <= 5 ms, 0 calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import os
import re
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from bench.profiles import profile_during, py_spy
from bench.webhook_tail import (
    GC_WRAPPER,
    ROUNDS,
    WARM_PER_ROUND,
    KeepAliveClient,
    RunCost,
    alternating_runs,
    closed_loop,
    handler_buckets,
    handler_figures,
    open_loop,
    own_gc_pauses,
    read_pauses,
    tail_figures,
)
from eddy_cli.procs import stop_child
from webhook.certs import new_bundle, write_private
from webhook.review import pod_create_review, pod_of_template

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seed"
MAX_REQUESTS = 5000
MAX_SECONDS = 10.0
RATE = 200

# `?burn_us=N` makes it spend N µs of CPU per request: the "same CPU" twin of the webhook.
_CEILING_SERVER = """
import asyncio, ssl, sys, time
from aiohttp import web
body = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}'
async def ok(request):
    await request.read()
    burn = int(request.query.get("burn_us", "0")) / 1e6
    started = time.thread_time()
    while time.thread_time() - started < burn:
        pass
    return web.Response(body=body, content_type="application/json")
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    app = web.Application()
    app.router.add_post("/mutate", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    print("https://127.0.0.1:%d/mutate" % runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def seed_review(namespace: str = "default") -> bytes:
    pod = pod_of_template(yaml.safe_load((SEED / "deployment-eci.yaml").read_text()))
    return json.dumps(pod_create_review(pod, namespace, str(uuid.uuid4()))).encode()


def seed_dataset_docs(namespace: str = "default") -> list[dict[str, Any]]:
    text = (
        (SEED / "dataset.yaml").read_text().replace("<oss_bucket>", "bench").replace("<bucket_dir>", "data")
    )
    docs = [d for d in yaml.safe_load_all(text.replace("<oss_endpoint>", "http://127.0.0.1:9")) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs


async def _start(
    cmd: list[str], pattern: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 1.0)).decode()
        except TimeoutError:
            continue
        if not line and proc.returncode is not None:
            break
        seen += line
        match = re.search(pattern, line)
        if match:
            asyncio.get_running_loop().create_task(_drain(proc))
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start: {seen[-2000:]}")


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def _stop(proc: asyncio.subprocess.Process) -> None:
    await stop_child(proc)


@contextlib.asynccontextmanager
async def cluster_webhook(work: Path, docs: list[dict[str, Any]], gc_mode: str = ""
                          ) -> AsyncIterator[tuple[str, Path, Any, asyncio.subprocess.Process]]:
    """The API test server (in this process) holding the seed's Dataset, its PVC and runtime, and one
    `eddy webhook` process in cluster mode against it; yields (mutate URL, CA file, server, process).
    With `gc_mode` ("on"/"off") the webhook runs under bench/webhook_tail.py's GC_WRAPPER, which records
    its GC pauses to work/gc-<mode>.json ("off": with the collector disabled)."""
    # The Kubernetes API test server (importable without pytest); loaded by name so that mypy's strict
    # check of bench/ does not extend into tests/.
    server_module = importlib.import_module("sandbox.apiserver")
    api = server_module.KubeApiServer()
    await api.start()
    mwc = yaml.safe_load((REPO / "manifests" / "webhook" / "mutatingwebhook.yaml").read_text())
    api.put(mwc)
    for doc in docs:
        api.put({**doc, "status": {"phase": "Bound"}} if doc["kind"] == "Dataset" else doc)
        if doc["kind"] == "Dataset":
            meta = doc["metadata"]
            labels = {
                "fluid.io/dataset-id": f"{meta['namespace']}-{meta['name']}",
                f"fluid.io/s-{meta['namespace']}-{meta['name']}": "true",
            }
            api.put(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": labels},
                    "spec": {"accessModes": ["ReadOnlyMany"]},
                },
            )
    api.put(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-1"},
            "status": {"nodeInfo": {"kubeletVersion": "v1.30.2"}},
        },
    )
    launcher = ["-m", "eddy_cli.main"]
    if gc_mode:
        launcher = ["-c", GC_WRAPPER, gc_mode, str(work / f"gc-{gc_mode}.json")]
    cmd = [
        sys.executable,
        *launcher,
        "--log-level",
        "WARNING",
        "webhook",
        "--kube-url",
        api.url,
        "--namespace",
        "eddy-system",
        "--service",
        "eddy-webhook",
        "--webhook-config",
        "eddy-webhook",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--cert-dir",
        str(work / "hook-tls"),
    ]
    proc, url = await _start(cmd, r"(https://127\.0\.0\.1:\d+/mutate)")
    try:
        config = api.get_object("mutatingwebhookconfigurations", None, "eddy-webhook") or {}
        ca_path = work / "hook-ca.crt"
        ca_path.write_bytes(base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]))
        yield url, ca_path, api, proc
    finally:
        await _stop(proc)
        await api.stop()


async def _watches_open(api: Any, kinds: tuple[str, ...]) -> None:
    """Every informer's watch stream is open: they are set up once, not per admission."""
    async with asyncio.timeout(30):
        while not all(api.calls[("watch", k)] for k in kinds):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def extra_cpu_us(bare_pid: int, bare: KeepAliveClient, hook_pid: int, hook: KeepAliveClient) -> int:
    """The webhook's CPU per admission beyond the bare server's at RATE (2 s of each, µs)."""
    (_, bare_cost), (_, hook_cost) = await alternating_runs([(bare_pid, bare), (hook_pid, hook)], 2.0, RATE,
                                                            rounds=2)
    def per_request(cost: RunCost) -> float:
        return cost.server_cpu / max(1, cost.requests)

    return max(0, round((per_request(hook_cost) - per_request(bare_cost)) * 1e6))


async def run(args: Any) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    seconds = 4.0 if quick else 10.0
    total = 1500 if quick else MAX_REQUESTS
    kinds = ("persistentvolumeclaims", "datasets", "jindoruntimes", "nodes")
    with tempfile.TemporaryDirectory(prefix="eddy-webhook-bench-") as tmp:
        work = Path(tmp)
        bundle = new_bundle(["localhost", "127.0.0.1"])
        write_private(work / "tls.crt", bundle.cert)
        write_private(work / "tls.key", bundle.key)
        write_private(work / "ca.crt", bundle.ca_bundle)
        ceiling_proc, ceiling_url = await _start(
            [sys.executable, "-c", _CEILING_SERVER, str(work / "tls.crt"), str(work / "tls.key")],
            r"(https://\S+)",
        )
        body = seed_review()
        ctx = ssl.create_default_context(cafile=str(work / "ca.crt"))
        assert ceiling_proc.pid is not None
        try:
            async with (
                KeepAliveClient(ceiling_url, ctx, body) as bare,
                cluster_webhook(work, seed_dataset_docs(), "on") as (url, ca_path, api, proc),
                KeepAliveClient(url, ssl.create_default_context(cafile=str(ca_path)), body) as hook,
            ):
                await _watches_open(api, kinds)
                started = time.perf_counter()
                await hook.post()  # the first admission of a fresh process: its one-off work shows here
                first = time.perf_counter() - started
                ceiling, _ = await closed_loop(bare, MAX_SECONDS, total)
                before = sum(api.calls.values())
                best, sent = await closed_loop(hook, MAX_SECONDS, total)
                hook_ctx = ssl.create_default_context(cafile=str(ca_path))
                burn_us = await extra_cpu_us(ceiling_proc.pid, bare, proc.pid, hook)
                async with KeepAliveClient(f"{ceiling_url}?burn_us={burn_us}", ctx, body) as twin:
                    handler_before = await handler_buckets(url, hook_ctx)
                    with own_gc_pauses() as client_gc:
                        targets = [(ceiling_proc.pid, bare), (ceiling_proc.pid, twin), (proc.pid, hook)]
                        bare_run, twin_run, hook_run = await alternating_runs(targets, seconds, RATE)
                    handler = handler_figures(handler_before, await handler_buckets(url, hook_ctx))
                calls = sum(api.calls.values()) - before
                latencies = [s.latency for s in hook_run[0]]
                admissions = 1 + sent + len(latencies) + WARM_PER_ROUND * ROUNDS
                tail = {**tail_figures(hook_run[0], read_pauses(work / "gc-on.json"), client_gc),
                        **hook_run[1].figures(), "handler": handler}
                ceiling_tail = {**tail_figures(bare_run[0]), **bare_run[1].figures()}
                twin_tail = {**tail_figures(twin_run[0]), **twin_run[1].figures(), "burn_us": burn_us}
                profile: dict[str, Any] = {}
                if py_spy() is not None:  # a second pass at 200/s under py-spy (not the measured one)
                    _, profile = await profile_during({"webhook": proc.pid}, "webhook-200",
                                                      open_loop([hook], seconds, RATE),
                                                      f"admissions at {RATE}/s over HTTPS")
            async with (
                KeepAliveClient(ceiling_url, ctx, body) as bare,
                cluster_webhook(work, seed_dataset_docs(), "off") as (url, ca_path, api, proc),
                KeepAliveClient(url, ssl.create_default_context(cafile=str(ca_path)), body) as hook,
            ):
                await _watches_open(api, kinds)
                await closed_loop(hook, MAX_SECONDS, 500)  # warm like the measured run
                off_bare, off_hook = await alternating_runs([(ceiling_proc.pid, bare), (proc.pid, hook)],
                                                            seconds, RATE)
                gc_off = {**tail_figures(off_hook[0], read_pauses(work / "gc-off.json")),
                          **off_hook[1].figures(), "ceiling_server": tail_figures(off_bare[0])}
        finally:
            await _stop(ceiling_proc)
    return {
        "metric": "admissions_per_s",
        "unit": "admissions/s",
        "value": round(best, 1),
        "ceiling": round(ceiling, 1),
        "ratio": round(best / ceiling, 3) if ceiling else 0.0,
        "cores": os.cpu_count() or 1,
        "max_per_s": round(best, 1),
        "p50_ms": tail["p50_ms"],
        "p99_ms": tail["p99_ms"],
        "p999_ms": tail["p999_ms"],
        "first_admission_ms": round(first * 1000, 3),
        # the tail, explained (bench/webhook_tail.py): the same 200/s against the bare TLS server in
        # alternating rounds, and against it burning the webhook's extra CPU per request; GC pauses
        # under the slow requests, run-queue waits, and gc disabled
        "tail": {"webhook": tail, "ceiling_server": ceiling_tail, "ceiling_same_cpu": twin_tail,
                 "webhook_gc_disabled": gc_off},
        "profile": profile,
        "fixed_rate_per_s": RATE,
        "fixed_rate_seconds": seconds,
        "api_calls_per_admission": round(calls / max(1, admissions), 4),
        "api_calls_during_load": calls,
        "goals": {"max_per_s": ">= 1000", "p99_ms": "<= 5", "api_calls_per_admission": "0"},
        "latency_cdf": _cdf_points(latencies),
    }


def _cdf_points(latencies: list[float], points: int = 200) -> list[list[float]]:
    """[[latency ms, fraction of requests at or under it], ...] at up to `points` even quantiles."""
    ordered = sorted(latencies)
    if not ordered:
        return []
    step = max(1, len(ordered) // points)
    picks = [*range(step - 1, len(ordered), step), len(ordered) - 1]
    return [[round(ordered[i] * 1000, 3), round((i + 1) / len(ordered), 4)] for i in dict.fromkeys(picks)]
