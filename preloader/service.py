"""`eddy preloader`: wire the consumer to the Kubernetes API and run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from eddy.blocks import DEFAULT_BLOCK_SIZE
from eddy.kube import Kube
from eddy.secrets import SecretSource
from preloader.consumer import Consumer, ConsumerSettings
from preloader.kubeapi import KubeApi, dataload_informer

log = logging.getLogger(__name__)


def settings_from_args(args: argparse.Namespace) -> ConsumerSettings:
    return ConsumerSettings(
        max_concurrent_loads=max(1, args.max_concurrent_loads),
        workers=tuple(u.rstrip("/") for u in args.worker or ()),
        secrets=SecretSource.from_dir(args.secret_dir) if args.secret_dir else None,
        block_size=args.block_size or DEFAULT_BLOCK_SIZE,
    )


async def run_consumer(args: argparse.Namespace) -> int:
    kube = await Kube.connect(args.kube_url, args.kubeconfig)
    namespace = None if args.namespace in ("", "all") else args.namespace
    consumer = Consumer(KubeApi(kube), settings_from_args(args))
    informer = dataload_informer(kube, consumer.on_event, namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    informer.start()
    log.info("preloader watching DataLoads in %s", namespace or "all namespaces")
    try:
        await stop.wait()
    finally:
        await informer.stop()
        await consumer.close()
        await kube.close()
    return 0
