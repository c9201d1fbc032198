"""`eddy controller`: reconcile Dataset + JindoRuntime into PV/PVC, workers, config and status."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from prometheus_client import start_http_server

from controller.kubeio import count_request
from controller.loop import Controller
from controller.objects import Settings
from controller.reconciler import Reconciler
from eddy.fluidcheck import FluidInstalled, refuse_beside_fluid
from eddy.kube import own_image
from eddy.kube.flags import add_kube_args, connect, watched_namespace
from eddy.kube.leader import add_leader_args, run_elected
from eddy.names import WORKER_PORT

log = logging.getLogger("eddy.controller")
DEFAULT_IMAGE = "ghcr.io/eddy/eddy:0.1.0"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "controller", help="reconcile Datasets and JindoRuntimes (cluster mode)",
        description="Reconcile Dataset + JindoRuntime into a PV/PVC, worker StatefulSet, config and "
                    "status; stop classic sidecars of finished Job pods (docs/controller.md).",
    )
    add_kube_args(parser, watch_namespace=True)
    parser.add_argument("--resync", type=float, default=60.0, metavar="S",
                        help="re-queue every object this often (default 60)")
    parser.add_argument("--ufs-period", type=float, default=300.0, metavar="S",
                        help="list the object store for ufsTotal this often (default 300)")
    parser.add_argument("--image", metavar="IMG",
                        help="image of the workers (default: the controller's own image, read from its "
                             f"Pod named by $POD_NAME, else {DEFAULT_IMAGE})")
    parser.add_argument("--worker-port", type=int, default=WORKER_PORT, help="workers' HTTP port")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="serve /metrics on this port (0: off)")
    add_leader_args(parser, "eddy-controller", "reconcile")
    parser.add_argument("--allow-fluid", action="store_true",
                        help="start even where Fluid is installed (two controllers would act on Datasets)")
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    if args.metrics_port:
        start_http_server(args.metrics_port)
    kube = await connect(args)
    kube.add_request_hook(count_request)
    namespace = watched_namespace(args)
    if not args.allow_fluid:
        try:
            await refuse_beside_fluid(kube, "controller")
        except FluidInstalled as exc:  # one line on stderr, as every refusal to start
            print(exc, file=sys.stderr)
            await kube.close()
            return 1
    image = args.image or await own_image(kube, "controller") or DEFAULT_IMAGE
    reconciler = Reconciler(kube, Settings(image=image, worker_port=args.worker_port),
                            ufs_period=args.ufs_period)
    controller = Controller(kube, reconciler, namespace=namespace, resync=args.resync)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("controller started (namespace=%s, image=%s)", namespace or "*", image)
    try:
        kept = await run_elected(kube, args, controller.run, stop, "controller")
    finally:
        await reconciler.close()
        await kube.close()
    if not kept:
        return 1
    log.info("controller stopped")
    return 0
