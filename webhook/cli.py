"""`eddy webhook`: the admission webhook, in local mode (manifest files) or cluster mode (API watches).

eddy webhook --local -f dataset.yaml --cert-dir DIR --port 8443
eddy webhook --namespace eddy-system --service eddy-webhook --webhook-config eddy-webhook [--kube-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
from pathlib import Path
from typing import Any, cast

from eddy.manifests import ManifestError, load_all
from webhook.certs import TlsReloader, needs_renewal, new_bundle, renew, write_private
from webhook.profiles import FUSE_MODES, FuseMode, InjectorSettings
from webhook.server import MAX_BODY, FileResolver, make_app, start_https

log = logging.getLogger("eddy.webhook")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "webhook",
        help="admission webhook that injects the FUSE sidecar into labelled pods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--local", action="store_true", help="resolve claims from manifest files (-f)")
    parser.add_argument(
        "-f", "--file", dest="files", action="append", default=[], help="manifest file (local)"
    )
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
        "--kube-url",
        default=None,
        help="cluster: API server URL, no auth (default: in-cluster, else $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument("--kubeconfig", default=None, help="cluster: use this kubeconfig file")
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
    parser.set_defaults(func=run)


def settings_from(args: argparse.Namespace, native: bool) -> InjectorSettings:
    return InjectorSettings(
        image=args.image or InjectorSettings.image,
        image_pull_policy=args.image_pull_policy,
        native_sidecar=native,
        fuse_mode=cast(FuseMode, args.fuse_mode),
        fuse_device_resource=args.fuse_device_resource,
        mount_timeout_s=args.mount_timeout,
        sidecar_metrics_address=args.sidecar_metrics_address,
    )


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def run(args: argparse.Namespace) -> int:
    if args.local:
        return await run_local(args)
    from webhook.cluster import run_cluster  # imports kubernetes-asyncio only when needed

    return await run_cluster(args, _stop_event())


async def run_local(args: argparse.Namespace) -> int:
    if not args.files or args.cert_dir is None:
        print("eddy webhook --local needs -f FILE and --cert-dir DIR")
        return 2
    try:
        manifests = load_all(args.files)
    except ManifestError as exc:
        print(f"eddy webhook: {exc}")
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
    stop = _stop_event()
    runner = await start_https(app, reloader.context, host, args.port)
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    await asyncio.to_thread(write_private, ca_path, bundle.ca_bundle, 0o644)
    print(
        f"eddy webhook (local): https://{host}:{port}/mutate, {len(manifests.datasets)} dataset(s), "
        f"CA in {ca_path}, native sidecars {'on' if native else 'off'}",
        flush=True,
    )
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.renew_check)
            current = reloader.bundle
            if current is not None and needs_renewal(current, hosts, dt.datetime.now(dt.UTC)):
                fresh = renew(current, hosts)
                await asyncio.to_thread(reloader.load, fresh)
                await asyncio.to_thread(write_private, ca_path, fresh.ca_bundle, 0o644)
                log.info("serving certificate renewed")
    finally:
        await runner.cleanup()
    return 0
