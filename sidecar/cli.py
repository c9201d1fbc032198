"""`eddy sidecar`: mount a dataset read-only (`mount`) and wait for a mount to answer (`check-mount`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from eddy.cliargs import add_filename_arg
from eddy.names import SIDECAR_HEALTH_PORT, STOP_ANNOTATION

# Only what the parsers need is imported here: `check-mount` is the startup probe, run every second
# while a pod starts, and must stay cheap (tests/test_probe.py; bench: `python -m bench --only probe`).
# Each action imports its own modules.

MiB = 1024 * 1024
log = logging.getLogger("sidecar")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sidecar", help="the FUSE sidecar: mount a dataset read-only", description=__doc__
    )
    sub = parser.add_subparsers(dest="sidecar_command", metavar="ACTION", required=True)

    mount = sub.add_parser("mount", help="mount the dataset at a directory and serve it until signalled")
    source = mount.add_mutually_exclusive_group()
    source.add_argument("--config", help="the eddy.yaml the webhook injects (default: the in-pod path)")
    add_filename_arg(source, dest="files", default=[],
                     help="Dataset (and JindoRuntime) manifest file; repeatable (local mode)")
    mount.add_argument("--mountpoint", required=True, type=Path, help="directory to mount at")
    mount.add_argument("--worker", dest="workers", action="append", default=[],
                       help="worker base URL (repeatable); overrides the config's worker list")
    mount.add_argument("--no-workers", action="store_true", help="read from the object store only")
    mount.add_argument("--secret-dir", type=Path, help="Secret volumes: <dir>/<secret>/<key>")
    mount.add_argument("--health-port", type=int, default=SIDECAR_HEALTH_PORT,
                       help=f"127.0.0.1 port for /readyz /healthz /metrics "
                       f"(default {SIDECAR_HEALTH_PORT}; 0=off)")
    mount.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDR",
                       help="address the health port listens on (default 127.0.0.1: the pod only); "
                       "0.0.0.0 lets Prometheus scrape /metrics at the pod's IP (opt-in: the sidecar "
                       "shares the app pod's network, see docs/operations.md)")
    mount.add_argument("--uid", type=int, default=0, help="owner uid of every file (default 0)")
    mount.add_argument("--gid", type=int, default=0, help="owner gid of every file (default 0)")
    mount.add_argument("--cache-mib", type=int, default=64, help="in-sidecar block cache (MiB; default 64)")
    mount.add_argument("--readahead-mib", type=int, default=32,
                       help="read-ahead window cap (MiB; 0=off; at most half the cache)")
    mount.add_argument("--walkahead-mib", type=int, default=16,
                       help="prefetch the next small files of a directory read file after file "
                       "(cp -r, tar), this far ahead (MiB; 0=off; at most a quarter of the cache)")
    mount.add_argument("--block-size", type=int, default=0, help="override the config's block size (bytes)")
    mount.add_argument("--listing-ttl", type=float, default=300.0,
                       help="re-list the object store every N seconds (0=never)")
    mount.add_argument("--metadata-ttl", type=float, default=5.0,
                       help="an open asks the store (one HEAD, shared by concurrent opens) for the "
                       "object's current version when it was last confirmed more than N seconds ago "
                       "(default 5; 0=every open; -1=never, only listings and failed reads)")
    mount.add_argument("--no-snapshot", action="store_true",
                       help="ignore the workers' listing snapshot; always list the store")
    mount.add_argument("--verify-transfer", action=argparse.BooleanOptionalAction, default=True,
                       help="check each block's CRC32C on arrival from a worker, in place (~0.04 CPU-s/GiB; "
                       "on by default: it is what catches a block corrupted in a MEM worker's memory)")
    mount.add_argument("--worker-timeout", type=float, default=10.0, help="seconds per worker block fetch")
    mount.add_argument("--direct-io", action=argparse.BooleanOptionalAction, default=False,
                       help="bypass the page cache: each read() becomes one FUSE request of its size; "
                       "faster for 1 MiB sequential reads, but small reads get slow and shared mmap "
                       "fails (ENODEV). Default off: page cache + kernel read-ahead")
    mount.add_argument("--kernel-readahead-kib", type=int, default=4096,
                       help="kernel read-ahead of the mount, for buffered reads (default 4096)")
    mount.add_argument("--no-allow-other", action="store_true", help="only the mounting user may read")
    mount.add_argument("--grace", type=float, default=20.0,
                       help="seconds to let in-flight reads finish on SIGTERM (default 20)")
    mount.add_argument("--stop-file", type=Path,
                       help="leave (unmount, exit 0) once this downwardAPI annotations file carries "
                       f'{STOP_ANNOTATION}="true" (the webhook sets it for classic sidecars)')
    mount.set_defaults(func=_mount)

    check = sub.add_parser("check-mount", help="wait until PATH is a FUSE mount that answers (exit 0/1)")
    check.add_argument("path", type=Path)
    check.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    check.set_defaults(func=_check_mount)


def _mount(args: argparse.Namespace) -> Any:
    from eddy.config import ConfigError
    from sidecar.fs import FsOptions
    from sidecar.lifecycle import MountSettings
    from sidecar.readahead import ReadaheadPolicy
    from sidecar.settings import ReaderOptions, load_settings
    from sidecar.walkahead import WalkaheadPolicy

    try:
        cfg = load_settings(args.config, args.files, workers=args.workers, no_workers=args.no_workers,
                            block_size=args.block_size or None)
    except ConfigError as exc:
        print(f"eddy sidecar: {exc}", file=sys.stderr)
        return 2
    reader = ReaderOptions(
        cache_bytes=args.cache_mib * MiB,
        readahead=ReadaheadPolicy(
            cap=args.readahead_mib * MiB, initial=min(cfg.block_size, args.readahead_mib * MiB)
        ),
        prefetch_budget=args.readahead_mib * MiB,
        walkahead=WalkaheadPolicy(window_bytes=args.walkahead_mib * MiB),
        worker_timeout=args.worker_timeout,
        listing_ttl=args.listing_ttl,
        metadata_ttl=args.metadata_ttl,
        use_snapshot=not args.no_snapshot,
        verify_transfer=args.verify_transfer,
    )
    settings = MountSettings(
        mountpoint=args.mountpoint.absolute(),
        cfg=cfg,
        secret_dir=args.secret_dir,
        reader=reader,
        fs=FsOptions(uid=args.uid, gid=args.gid, direct_io=args.direct_io),
        health_port=args.health_port,
        health_address=args.metrics_address,
        allow_other=not args.no_allow_other,
        kernel_readahead_kib=args.kernel_readahead_kib,
        grace=args.grace,
        stop_file=args.stop_file,
    )
    return _run_reporting_errors(settings)


async def _run_reporting_errors(settings: Any) -> int:
    """Run the mount; a store or config problem at start is one clear line and exit 1, not a traceback."""
    from eddy.config import ConfigError
    from eddy.objectstore import ObjectStoreError
    from eddy.secrets import SecretError
    from sidecar.lifecycle import run_mount

    try:
        return await run_mount(settings)
    except (ObjectStoreError, SecretError, ConfigError, RuntimeError, OSError) as exc:
        log.error("eddy sidecar mount: %s", exc)
        return 1


def _check_mount(args: argparse.Namespace) -> int:
    from sidecar.mounts import wait_for_mount

    why = wait_for_mount(args.path, args.timeout)
    if why is None:
        print(f"{args.path}: mounted and answering")
        return 0
    print(f"eddy sidecar check-mount: {why}", file=sys.stderr)
    return 1
