"""`eddy webhook`: the admission webhook, in local mode (manifest files) or cluster mode (API watches).

eddy webhook --local -f dataset.yaml --cert-dir DIR --port 8443
eddy webhook --namespace eddy-system --service eddy-webhook --webhook-config eddy-webhook [--kubeconfig FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from eddy.cliargs import add_filename_arg
from eddy.kube.flags import add_kube_args
from eddy.manifests import ManifestError, load_all
from webhook.certs import TlsReloader, needs_renewal, new_bundle, renew, write_private
from webhook.profiles import FUSE_MODES, InjectorSettings
from webhook.server import MAX_BODY, FileResolver, make_app
from webhook.serving import serve_with_renewal, settings_from, stop_event

log = logging.getLogger("eddy.webhook")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "webhook",
        help="admission webhook that injects the FUSE sidecar into labelled pods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--local", action="store_true", help="resolve claims from manifest files (-f)")
    add_filename_arg(parser, dest="files", help="local: a manifest file holding Datasets (repeatable)")
    parser.add_argument("--cert-dir", type=Path, help="where certificates go (local: ca.crt is written here)")
    parser.add_argument("--host", default=None, help="listen address (local: 127.0.0.1, cluster: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port (0 picks a free one)")
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE") or "eddy-system",
        help="cluster: the webhook's namespace (default: $POD_NAMESPACE, else eddy-system)",
    )
    parser.add_argument("--service", default="eddy-webhook", help="cluster: the webhook's Service name")
    parser.add_argument(
        "--webhook-config", default="eddy-webhook", help="cluster: MutatingWebhookConfiguration"
    )
    parser.add_argument("--secret", default=None, help="cluster: TLS Secret name (default <service>-tls)")
    parser.add_argument(
        "--image",
        default="",
        help="the sidecar image (default: cluster: the webhook's own image, read from its pod "
        f"$POD_NAMESPACE/$POD_NAME; local: {InjectorSettings.image})",
    )
    parser.add_argument("--image-pull-policy", default=InjectorSettings.image_pull_policy)
    parser.add_argument(
        "--native-sidecar",
        choices=["auto", "on", "off"],
        default="auto",
        help="native sidecars (K8s >= 1.29); auto detects from /version and node versions (local: on)",
    )
    parser.add_argument(
        "--fuse-mode", choices=FUSE_MODES, default="privileged", help="how the sidecar gets FUSE"
    )
    parser.add_argument(
        "--fuse-device-resource", default="", help="sys-admin mode: device-plugin resource for /dev/fuse"
    )
    parser.add_argument("--mount-timeout", type=int, default=300, help="seconds a sidecar may take to mount")
    parser.add_argument(
        "--sidecar-metrics-address", default="", metavar="ADDR",
        help="where injected sidecars serve /metrics: 0.0.0.0 makes them scrapeable at the pod's IP "
        "(default: the sidecar's own, 127.0.0.1: inside the pod only)",
    )
    parser.add_argument("--max-body", type=int, default=MAX_BODY, help="largest request body (bytes)")
    parser.add_argument("--allow-fluid", action="store_true",
                        help="cluster: start even where Fluid is installed (two webhooks would inject pods)")
    parser.add_argument(
        "--renew-check", type=float, default=3600.0, help="seconds between certificate renewal checks"
    )
    add_kube_args(parser)
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    if args.local:
        return await run_local(args)
    from webhook.cluster import run_cluster  # imports kubernetes-asyncio only when needed

    return await run_cluster(args, stop_event())


async def run_local(args: argparse.Namespace) -> int:
    if not args.files or args.cert_dir is None:
        print("eddy webhook: --local needs -f FILE and --cert-dir DIR", file=sys.stderr)
        return 2
    try:
        manifests = load_all(args.files)
    except ManifestError as exc:
        print(f"eddy webhook: {exc}", file=sys.stderr)
        return 2
    cert_dir: Path = args.cert_dir
    host = args.host or "127.0.0.1"
    hosts = list(dict.fromkeys(["localhost", "127.0.0.1", host]))
    ca_path = cert_dir / "ca.crt"
    ca_path.unlink(missing_ok=True)  # a stale CA must not be mistaken for this run's
    reloader = TlsReloader(cert_dir)
    bundle = new_bundle(hosts)
    await asyncio.to_thread(reloader.load, bundle)
    native = args.native_sidecar != "off"
    app = make_app(FileResolver(manifests), settings_from(args, native), max_body=args.max_body)

    async def listening(port: int) -> None:
        await asyncio.to_thread(write_private, ca_path, bundle.ca_bundle, 0o644)
        print(
            f"eddy webhook (local): https://{host}:{port}/mutate, {len(manifests.datasets)} dataset(s), "
            f"CA in {ca_path}, native sidecars {'on' if native else 'off'}",
            flush=True,
        )

    async def renew_when_due() -> None:
        current = reloader.bundle
        if current is not None and needs_renewal(current, hosts, dt.datetime.now(dt.UTC)):
            fresh = await asyncio.to_thread(renew, current, hosts)  # key generation: off the loop
            await asyncio.to_thread(reloader.load, fresh)
            await asyncio.to_thread(write_private, ca_path, fresh.ca_bundle, 0o644)
            log.info("serving certificate renewed")

    await serve_with_renewal(app, reloader.context, host, args.port, stop=stop_event(),
                             every=args.renew_check, renew=renew_when_due, listening=listening)
    return 0
