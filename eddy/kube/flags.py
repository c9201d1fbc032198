"""The command-line flags of every part that talks to the Kubernetes API, named as kubectl names them.

`add_kube_args(parser)` adds `--kubeconfig`, `--context` and `--kube-url` (and, with `watch_namespace`,
the `--namespace` a controller watches); `connect(args)` opens the `Kube` they describe. Importing this
module loads no client library (the webhook's local mode registers these flags without using them).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eddy.kube.client import Kube

ALL_NAMESPACES = ("", "all")


def add_kube_args(parser: argparse.ArgumentParser, *, watch_namespace: bool = False) -> None:
    """Where the API server is; with `watch_namespace`, also `--namespace NS` (default: all namespaces)."""
    group = parser.add_argument_group(
        "Kubernetes API", "default: in-cluster, else $KUBECONFIG or ~/.kube/config")
    group.add_argument("--kubeconfig", metavar="FILE", help="use this kubeconfig file")
    group.add_argument("--context", metavar="NAME",
                       help="the kubeconfig context to use (default: its current-context)")
    group.add_argument("--kube-url", metavar="URL",
                       help="API server URL, plain HTTP without credentials (tests, `kubectl proxy`)")
    if watch_namespace:
        group.add_argument("--namespace", metavar="NS", default=None,
                           help="watch only this namespace (default, or 'all': every namespace)")


def watched_namespace(args: argparse.Namespace) -> str | None:
    """The `--namespace` of `add_kube_args(watch_namespace=True)`; None means every namespace."""
    namespace: str | None = args.namespace
    return None if namespace is None or namespace in ALL_NAMESPACES else namespace


async def connect(args: argparse.Namespace) -> Kube:
    """The `Kube` the flags of `add_kube_args` name (the caller closes it)."""
    from eddy.kube.client import Kube

    return await Kube.connect(args.kube_url, args.kubeconfig, args.context)
