"""Cluster mode: informers (PVCs with the Fluid label, Datasets, JindoRuntimes, Nodes), the TLS Secret
and caBundle, native-sidecar detection, and the HTTPS server, wired together.

Its API requests are counted by a request hook on the `Kube` (`eddy_webhook_api_requests_total`
{verb,resource}, eddy.kube.metrics): besides the informers' lists and watches, in steady state only
cold Dataset GETs and the certificate renewal checks."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from eddy import kube
from eddy.fluidcheck import FluidInstalled, refuse_beside_fluid
from eddy.kube.flags import connect
from eddy.kube.metrics import api_request_counter
from eddy.names import LABEL_DATASET_ID
from webhook.certs import TlsReloader, service_names
from webhook.profiles import InjectorSettings
from webhook.resolver import CachedResolver
from webhook.server import Metrics, make_app
from webhook.serving import serve_with_renewal, settings_from
from webhook.tlssecret import CertKeeper, Conflict
from webhook.versions import kubelet_version, runs_native_sidecars, server_version

log = logging.getLogger("eddy.webhook.cluster")


class InformerCache:
    """An Informer's store seen as the resolver's ObjectCache."""

    def __init__(self, informer: kube.Informer) -> None:
        self.informer = informer

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.informer.get(namespace, name)

    def synced(self) -> bool:
        return self.informer.synced


class KubeSecretStore:
    """The SecretStore of tlssecret.py over `eddy.kube.Kube`."""

    def __init__(self, client: kube.Kube) -> None:
        self.kube = client

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get_or_none(kube.SECRETS, name, namespace)

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.kube.create(kube.SECRETS, body, namespace)
        except kube.Conflict as exc:
            raise Conflict(str(exc)) from None

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.kube.replace(kube.SECRETS, name, body, namespace)
        except kube.Conflict as exc:
            raise Conflict(str(exc)) from None

    async def get_webhook_config(self, name: str) -> dict[str, Any] | None:
        return await self.kube.get_or_none(kube.MUTATING_WEBHOOK_CONFIGURATIONS, name)

    async def patch_webhook_config(self, name: str, patch: list[dict[str, Any]]) -> None:
        await self.kube.patch(kube.MUTATING_WEBHOOK_CONFIGURATIONS, name, patch, patch_type="json")


class NativeSidecarState:
    """Native sidecars on iff the API server and every node run Kubernetes >= 1.29 (or forced).

    The node informer's handler keeps the names of the nodes whose kubelet is too old (or unknown), so
    an admission reads one set's emptiness instead of scanning every Node (8.7 ms at 5,000). The handler
    re-reads the informer's store for the node an event names rather than trusting the event: the store
    is the newest state, so an event handled late (or twice: the state is seeded from the store when it
    is made, and events queued before that are handled after) cannot leave a stale answer. A re-list
    after 410 Gone delivers its difference to the store as ADDED/MODIFIED/DELETED, handled the same way.
    Until the node list has synced the answer is no: classic sidecars run on every kubelet."""

    def __init__(self, mode: str, server: str, nodes: kube.Informer | None) -> None:
        self.mode = mode
        self.server = server
        self.nodes = nodes
        self.too_old: set[str] = set()  # names of nodes whose kubelet cannot run native sidecars
        self._server_ok = runs_native_sidecars(server)
        if mode == "auto" and nodes is not None:
            nodes.add_handler(self.on_node_event)
            for node in nodes.items():
                self._note(kube.object_key(node)[1])

    def enabled(self) -> bool:
        if self.mode != "auto":
            return self.mode == "on"
        if self.nodes is None:
            return self._server_ok
        return self._server_ok and not self.too_old and self.nodes.synced

    async def on_node_event(self, etype: str, obj: dict[str, Any]) -> None:
        self._note(kube.object_key(obj)[1])

    def _note(self, name: str) -> None:
        node = self.nodes.get(None, name) if self.nodes is not None else None
        if node is None or runs_native_sidecars(kubelet_version(node)):
            self.too_old.discard(name)
        else:
            self.too_old.add(name)


@contextlib.asynccontextmanager
async def informers(
    client: kube.Kube, watch_nodes: bool, sync_timeout: float = 30.0
) -> AsyncIterator[dict[str, kube.Informer]]:
    """The webhook's informers (all namespaces), started; waits up to `sync_timeout` s for their first
    lists, then serves anyway (`/readyz` answers 503 until every cache the resolver reads has synced)."""
    found = {
        "pvcs": kube.Informer(client, kube.PVCS, label_selector=LABEL_DATASET_ID),
        "datasets": kube.Informer(client, kube.DATASETS),
        "runtimes": kube.Informer(client, kube.JINDORUNTIMES),
    }
    if watch_nodes:
        found["nodes"] = kube.Informer(client, kube.NODES)
    try:
        for informer in found.values():
            informer.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(sync_timeout):
                for informer in found.values():
                    await informer.wait_synced()
        yield found
    finally:
        for informer in found.values():
            await informer.stop()


def admission_app(
    client: kube.Kube, args: argparse.Namespace, metrics: Metrics, found: dict[str, kube.Informer],
    version: str,
) -> web.Application:
    """The HTTPS app over the informers' caches: claims resolve from them (a cold miss GETs the Dataset),
    and native sidecars follow the API server's and the nodes' versions (`--native-sidecar auto`)."""
    native = NativeSidecarState(args.native_sidecar, version, found.get("nodes"))
    native_gauge = Gauge(
        "eddy_webhook_native_sidecars", "1 when native sidecars are injected", registry=metrics.registry
    )

    async def fetch_dataset(namespace: str, name: str) -> Mapping[str, Any] | None:
        return await client.get_or_none(kube.DATASETS, name, namespace)

    resolver = CachedResolver(
        InformerCache(found["datasets"]), InformerCache(found["pvcs"]), InformerCache(found["runtimes"]),
        fetch_dataset,
    )
    base = settings_from(args, True)

    def settings() -> InjectorSettings:
        enabled = native.enabled()
        native_gauge.set(1 if enabled else 0)
        return base if enabled == base.native_sidecar else dataclasses.replace(base, native_sidecar=enabled)

    return make_app(resolver, settings, metrics=metrics, max_body=args.max_body)


async def run_cluster(args: argparse.Namespace, stop: asyncio.Event) -> int:
    metrics = Metrics()
    secret_name = args.secret or f"{args.service}-tls"
    hosts = [*service_names(args.service, args.namespace), "127.0.0.1"]
    client = await connect(args)
    client.add_request_hook(api_request_counter("webhook", metrics.registry))
    key_dir = Path(args.cert_dir) if args.cert_dir else Path(tempfile.mkdtemp(prefix="eddy-webhook-tls-"))
    reloader = TlsReloader(key_dir)
    keeper = CertKeeper(KubeSecretStore(client), reloader, namespace=args.namespace, secret=secret_name,
                        webhook_config=args.webhook_config, hosts=hosts)
    host = args.host or "0.0.0.0"

    async def listening(port: int) -> None:
        print(f"eddy webhook (cluster): https://{host}:{port}/mutate, Secret {args.namespace}/{secret_name}, "
              f"config {args.webhook_config}", flush=True)

    try:
        if not getattr(args, "allow_fluid", False):
            try:
                await refuse_beside_fluid(client, "webhook")
            except FluidInstalled as exc:  # one line on stderr, as every refusal to start
                print(exc, file=sys.stderr)
                return 1
        if not args.image:
            args.image = await kube.own_image(client, os.environ.get("CONTAINER_NAME", "webhook"))
            log.info("sidecar image %s", args.image or f"{InjectorSettings.image} (own pod not found)")
        version = server_version(await client.version()) if args.native_sidecar == "auto" else ""
        await keeper.sync()
        async with informers(client, args.native_sidecar == "auto") as found:
            app = admission_app(client, args, metrics, found, version)
            await serve_with_renewal(app, reloader.context, host, args.port, stop=stop,
                                     every=args.renew_check, renew=keeper.sync, listening=listening)
    finally:
        await client.close()
    return 0
