"""The HTTPS transport: aiohttp app with `POST /mutate`, `/healthz`, `/readyz`, `/metrics`.

The decision is `webhook.review.decide` (pure); claims are resolved by a `Resolver` (files in local mode,
watch-fed caches in cluster mode). Bodies over `max_body` get 413 (aiohttp's client_max_size).

Before it listens, the app admits a sample pod once (`review.warm_up`, in a thread: the first admission's
one-off work would otherwise stall the first pods by 0.2-0.45 s) and freezes the start-up heap
(`gc.freeze()`): a full collection of it takes ~50 ms, more with large informer caches, and would
land in some admission's latency (docs/webhook.md, "Latency").
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from eddy.api import Dataset
from eddy.manifests import Manifests
from webhook.profiles import InjectorSettings
from webhook.review import BadReview, Resolved, decide, parse_review, pod_claims, request_namespace, warm_up

log = logging.getLogger("eddy.webhook")

MAX_BODY = 3 * 1024 * 1024  # an AdmissionReview carries the object (etcd caps objects near 1.5 MiB)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Resolver(Protocol):
    """Claim name -> Dataset for one namespace (claims that are no Dataset's are left out)."""

    async def resolve(self, namespace: str, claims: list[str]) -> dict[str, Resolved]: ...

    def ready(self) -> bool: ...


class FileResolver:
    """Local mode: a claim is the Dataset of the same name from the manifest files (DESIGN.md)."""

    def __init__(self, manifests: Manifests) -> None:
        self.manifests = manifests

    def _find(self, namespace: str, name: str) -> Dataset | None:
        exact = self.manifests.dataset(name, namespace)
        if exact is not None:
            return exact
        return next((d for d in self.manifests.datasets if d.meta.name == name), None)

    async def resolve(self, namespace: str, claims: list[str]) -> dict[str, Resolved]:
        out: dict[str, Resolved] = {}
        for claim in claims:
            dataset = self._find(namespace, claim)
            if dataset is None:
                continue
            runtime = self.manifests.runtime(claim, dataset.meta.namespace)
            if dataset.meta.namespace != namespace:  # files without a namespace serve any namespace
                dataset = dataclasses.replace(
                    dataset, meta=dataclasses.replace(dataset.meta, namespace=namespace)
                )
            out[claim] = Resolved(dataset, runtime=runtime)
        return out

    def ready(self) -> bool:
        return True


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.admissions = Counter(
            "eddy_webhook_admissions",
            "Admission reviews answered, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eddy_webhook_admission_seconds",
            "Time to answer one admission review",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


SettingsSource = Callable[[], InjectorSettings]


def freeze_heap() -> None:
    """Collect once, then move every object alive (modules, caches filled so far) to the permanent
    generation, so that later collections no longer traverse them. Once per process: objects frozen by
    a later call would be those of the running server, not of its start-up."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


_heap_frozen = False

RESOLVER_KEY = web.AppKey("resolver", object)
METRICS_KEY = web.AppKey("metrics", Metrics)


def make_app(
    resolver: Resolver,
    settings: InjectorSettings | SettingsSource,
    *,
    metrics: Metrics | None = None,
    max_body: int = MAX_BODY,
    live: Callable[[], bool] = lambda: True,
) -> web.Application:
    """The webhook app; `settings` may be a callable (native-sidecar support can change at runtime)."""
    if isinstance(settings, InjectorSettings):
        fixed = settings

        def current() -> InjectorSettings:
            return fixed
    else:
        current = settings
    stats = metrics or Metrics()

    async def mutate(request: web.Request) -> web.Response:
        started = time.perf_counter()
        outcome = "error"
        try:
            body = await request.read()  # raises 413 over client_max_size
            try:
                review = parse_review(body)
            except BadReview as bad:
                outcome = "bad_request"
                return web.json_response({"error": str(bad)}, status=400)
            claims = pod_claims(review)
            resolved = await resolver.resolve(request_namespace(review), claims) if claims else {}
            decision = decide(review, resolved, current())
            outcome = decision.outcome
            if decision.outcome == "denied" or decision.warnings:
                log.info(
                    "admission %s %s/%s: %s%s",
                    review.get("uid"),
                    request_namespace(review),
                    ((review.get("object") or {}).get("metadata") or {}).get("name")
                    or ((review.get("object") or {}).get("metadata") or {}).get("generateName", ""),
                    decision.outcome,
                    f" ({'; '.join(decision.warnings)})" if decision.warnings else "",
                )
            return web.json_response(decision.response)
        except web.HTTPRequestEntityTooLarge:
            outcome = "too_large"
            return web.json_response({"error": f"body exceeds {max_body} bytes"}, status=413)
        finally:
            stats.admissions.labels(outcome).inc()
            stats.latency.observe(time.perf_counter() - started)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok") if live() else web.Response(text="not live", status=503)

    async def readyz(_: web.Request) -> web.Response:
        if resolver.ready():
            return web.Response(text="ready")
        return web.Response(text="caches not synced", status=503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(stats.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def prepare(_: web.Application) -> None:
        try:
            await asyncio.to_thread(warm_up, current())
        except Exception as exc:  # the server still works; only its first admission is slower
            log.warning("warm-up admission failed: %s", exc)
        freeze_heap()

    app = web.Application(client_max_size=max_body)
    app.on_startup.append(prepare)
    app[RESOLVER_KEY] = resolver
    app[METRICS_KEY] = stats
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_https(
    app: web.Application, ssl_context: ssl.SSLContext, host: str, port: int
) -> web.AppRunner:
    """Serve `app` over TLS; returns the runner (`await runner.cleanup()` to stop)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=512)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("server has no TCP address")
