"""`eddy preloader` (long-running DataLoad consumer) and `eddy preload` (one load from files)."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from eddy.kube.flags import add_kube_args
from eddy.kube.leader import add_leader_args


def register(subparsers: Any) -> None:
    consumer: argparse.ArgumentParser = subparsers.add_parser(
        "preloader", help="consume DataLoad objects from the Kubernetes API and warm the cache workers",
        description="Watch DataLoads (list, then watch; re-list on 410) and run each: Once, or on a Cron "
                    "schedule. Status goes to the DataLoad's status subresource; see docs/preloader.md.",
    )
    add_kube_args(consumer, watch_namespace=True)
    consumer.add_argument("--max-concurrent-loads", type=int, default=4, metavar="N",
                          help="DataLoads running at once (default 4)")
    consumer.add_argument("--worker", action="append", metavar="URL",
                          help="worker base URL overriding the Dataset's workers (tests, local); repeatable")
    consumer.add_argument("--secret-dir", metavar="DIR",
                          help="Secret volumes <DIR>/<secret>/<key>; default: read Secrets from the API")
    add_leader_args(consumer, "eddy-preloader", "load")
    consumer.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                          help="serve Prometheus /metrics on this port (default 0: off)")
    consumer.add_argument("--block-size", type=int, default=0, help="block size in bytes (default 8 MiB)")
    consumer.set_defaults(func=_consume)

    preload: argparse.ArgumentParser = subparsers.add_parser(
        "preload", help="run one DataLoad from manifest files against local workers (local mode)",
        description="Load a DataLoad's target into the workers once, with a progress bar; exit 1 if Failed.",
    )
    from preloader.local import add_arguments

    add_arguments(preload)
    preload.set_defaults(func=_preload)


def _consume(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from preloader.service import run_consumer

    return run_consumer(args)


def _preload(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from preloader.local import run_preload

    return run_preload(args)
