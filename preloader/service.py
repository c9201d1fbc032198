"""`eddy preloader`: wire the consumer to the Kubernetes API and run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Metric, start_http_server
from prometheus_client.registry import Collector

from eddy.blocks import DEFAULT_BLOCK_SIZE
from eddy.kube.flags import connect, watched_namespace
from eddy.kube.leader import run_elected
from eddy.secrets import SecretSource
from preloader.consumer import Consumer
from preloader.kubeapi import KubeApi, dataload_informer
from preloader.metrics import MeteredApi, PreloaderMetrics, observed
from preloader.runner import ConsumerSettings

log = logging.getLogger(__name__)


def settings_from_args(args: argparse.Namespace) -> ConsumerSettings:
    return ConsumerSettings(
        max_concurrent_loads=max(1, args.max_concurrent_loads),
        workers=tuple(u.rstrip("/") for u in args.worker or ()),
        secrets=SecretSource.from_dir(args.secret_dir) if args.secret_dir else None,
        block_size=args.block_size or DEFAULT_BLOCK_SIZE,
    )


async def run_consumer(args: argparse.Namespace) -> int:
    kube = await connect(args)
    namespace = watched_namespace(args)
    metrics = PreloaderMetrics()
    kube.add_request_hook(metrics.count_request)
    consumer = Consumer(MeteredApi(KubeApi(kube), metrics), settings_from_args(args))
    metrics.watch(consumer)
    if getattr(args, "metrics_port", 0):
        start_http_server(args.metrics_port, registry=with_process_registry(metrics.registry))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def consume() -> None:
        """Watch and load until cancelled (stop, or leadership lost)."""
        informer = dataload_informer(kube, observed(consumer.on_event, metrics), namespace)
        informer.start()
        log.info("preloader watching DataLoads in %s", namespace or "all namespaces")
        try:
            await stop.wait()
        finally:
            await informer.stop()
            await consumer.close()

    try:
        kept = await run_elected(kube, args, consume, stop, "preloader")
    finally:
        await consumer.close()
        await kube.close()
    return 0 if kept else 1


def with_process_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """`registry` plus the process-wide one (the object store's counters, eddy/objectstore.py, and the
    process collectors), served together on one port."""

    class Process(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from REGISTRY.collect()

    registry.register(Process())
    return registry


