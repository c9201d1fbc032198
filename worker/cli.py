"""`eddy worker`: run one cache worker for one dataset (see docs/worker.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from aiohttp import web

from eddy.api import ValidationError
from eddy.cliargs import add_filename_arg
from eddy.config import ConfigError
from eddy.manifests import ManifestError
from eddy.names import WORKER_PORT
from eddy.secrets import SecretError
from worker.tierstore import TierStoreError

log = logging.getLogger("worker")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="run a cache worker (tiered block cache with read-through) for one dataset",
        description="Serve one dataset's blocks from MEM/SSD/HDD tiers; misses read through.",
    )
    add_filename_arg(parser, dest="file",
                     help="manifest file: the Dataset (and its JindoRuntime: the tiers); repeatable")
    parser.add_argument("--config", metavar="FILE",
                        help="the controller's config file (default /etc/eddy/config/eddy.yaml) when no -f")
    parser.add_argument("--dataset", metavar="NAME", help="the Dataset to serve when the files hold several")
    parser.add_argument("--namespace", metavar="NS", help="the Dataset's namespace")
    parser.add_argument("--host", help="listen address (default 127.0.0.1 with -f, 0.0.0.0 with --config)")
    parser.add_argument("--port", type=int,
                        help=f"listen port (default {WORKER_PORT}, or the config file's workers.port)")
    parser.add_argument("--secret-dir", metavar="DIR",
                        help="mounted Secret volumes <DIR>/<secret>/<key> (default /etc/eddy/secrets)")
    parser.add_argument("--level-path", action="append", metavar="MEDIUM=DIR",
                        help="this worker's own directory for a level, e.g. MEM=/dev/shm/eddy-w0")
    parser.add_argument("--level-quota", action="append", metavar="MEDIUM=SIZE",
                        help="override a level's quota, e.g. MEM=1Gi; repeatable")
    parser.add_argument("--serve-mode", choices=("sendfile", "memory"), default="sendfile",
                        help="hits: check in place then sendfile, or read+check+stream (default sendfile)")
    parser.add_argument("--mapped-bytes", default="1Gi", metavar="SIZE",
                        help="sendfile mode, --verify changed: MEM blocks kept mapped and sent with send(2), "
                             "cheaper than sendfile from tmpfs; at most SIZE (default 1Gi; 0: sendfile)")
    parser.add_argument("--verify", choices=("changed", "always"), default="changed",
                        help="check a hit's CRC32C when its file changed or was not checked for "
                             "--reverify-after seconds (default), or on every hit")
    parser.add_argument("--reverify-after", type=float, default=60.0, metavar="SECONDS",
                        help="with --verify changed: re-check a block at least this often (default 60)")
    parser.add_argument("--max-fetches", type=int, default=8, help="object-store reads in flight (default 8)")
    parser.add_argument("--warm-concurrency", type=int, default=8, help="blocks warmed at once per request")
    parser.add_argument("--store-timeout", type=float, default=30.0, help="object-store request timeout (s)")
    parser.add_argument("--no-promote", action="store_true", help="never move blocks up to the first level")
    parser.add_argument("--block-size", type=int, metavar="BYTES",
                        help="the block size (default: the config file's blockSize, else 8 MiB); requests "
                             "naming another get 400")
    parser.add_argument("--token-dir", metavar="DIR",
                        help="directory with the token files 'read' and 'admin' (the mounted Secret; default "
                             "/etc/eddy/worker-token if present). Without tokens every caller is served")
    parser.add_argument("--idle-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="close a connection sending no complete request head in this (default 15)")
    parser.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="a request body must arrive within this, else 408 (default 30)")
    parser.add_argument("--max-connections", type=int, default=1024,
                        help="connections open at once; more are answered 503 and closed (default 1024)")
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from worker.listen import CappedSite
    from worker.server import WorkerServer
    from worker.settings import SettingsError, build_settings

    try:
        settings, (host, port) = build_settings(args)
    except (SettingsError, ManifestError, ConfigError, ValidationError, ValueError) as exc:
        log.error("eddy worker: %s", exc)
        return 2
    server = WorkerServer(settings)
    if settings.tokens.enabled:
        roles = [r for r, t in (("read", settings.tokens.read), ("admin", settings.tokens.admin)) if t]
        log.info("authentication on: /v1/ requests need a bearer token (roles: %s)", ", ".join(roles))
    else:
        log.warning("authentication OFF: no token configured (--token-dir), every caller is served")
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False,
                           keepalive_timeout=settings.idle_timeout)
    try:
        await runner.setup()
    except (TierStoreError, SecretError) as exc:
        log.error("eddy worker: %s", exc)
        await runner.cleanup()
        return 2
    site = CappedSite(runner, host, port, max_connections=settings.max_connections, backlog=256)
    try:
        await site.start()
    except OSError as exc:
        log.error("eddy worker: cannot listen on %s:%d: %s", host, port, exc.strerror)
        await runner.cleanup()
        return 2
    levels = ", ".join(f"{lvl.mediumtype}={lvl.path} ({lvl.quota} bytes)" for lvl in settings.levels)
    log.info("worker for %s listening on http://%s:%d; levels %s",
             settings.dataset.meta.key, host, port, levels)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("worker stopping")
        await runner.cleanup()
    return 0
