"""`eddy preload -f dataload.yaml -f dataset.yaml --worker URL...`: one load from files (local mode).

The same load the consumer runs, with a rich progress bar (bytes, blocks, throughput, ETA) and, at the
end, the table `kubectl get dataload` would show. Exit status 0 when Complete, 1 when Failed, 2 when
the files themselves are unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import (
    Progress as Bar,
)

from eddy.api import DataLoad, ValidationError
from eddy.blocks import DEFAULT_BLOCK_SIZE
from eddy.cliargs import add_filename_arg
from eddy.config import ConfigError, RuntimeConfig, load_config
from eddy.manifests import ManifestError, Manifests, load_all
from eddy.names import SECRETS_MOUNT_DIR, worker_url
from eddy.quantity import human_size
from eddy.secrets import SecretSource
from eddy.workerclient import WorkerClient
from preloader.dispatch import Progress
from preloader.load import LoadError, LoadJob, LoadResult, run_load
from preloader.status import COMPLETE, FAILED, format_duration

log = logging.getLogger(__name__)


def kubectl_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(headers, *rows, strict=False)]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    )


def _workers(
    args: argparse.Namespace, files: Manifests, dl: DataLoad, config: RuntimeConfig | None
) -> list[str]:
    if args.worker:
        return [u.rstrip("/") for u in args.worker]
    if config is not None and config.workers():
        return config.workers()
    runtime = files.runtime(dl.dataset_name, dl.dataset_namespace)
    replicas = runtime.replicas if runtime else 0
    return [worker_url(dl.dataset_name, dl.dataset_namespace, i) for i in range(replicas)]


def _secrets(args: argparse.Namespace) -> SecretSource | None:
    if args.secret_dir:
        return SecretSource.from_dir(args.secret_dir)
    if Path(SECRETS_MOUNT_DIR).is_dir():
        return SecretSource.from_dir(SECRETS_MOUNT_DIR)
    return None


async def _one(
    dl: DataLoad, files: Manifests, args: argparse.Namespace, config: RuntimeConfig | None, console: Console,
) -> tuple[str, str]:
    """Run one DataLoad; returns (phase, duration)."""
    started = time.monotonic()
    dataset = files.dataset(dl.dataset_name, dl.dataset_namespace)
    if dataset is None and config is not None and config.dataset.meta.name == dl.dataset_name:
        dataset = config.dataset
    if dl.dataset_namespace != dl.meta.namespace:
        console.print(f"[red]Failed[/]: DataLoad {dl.meta.key} is in namespace {dl.meta.namespace!r} but "
                      f"its Dataset is in {dl.dataset_namespace!r}; they must be in the same namespace")
        return FAILED, format_duration(time.monotonic() - started)
    if dataset is None:
        console.print(f"[red]Failed[/]: Dataset {dl.dataset_namespace}/{dl.dataset_name} is in none of the "
                      "given files (-f dataset.yaml)")
        return FAILED, format_duration(time.monotonic() - started)
    workers = _workers(args, files, dl, config)
    block_size = args.block_size or (config.block_size if config else DEFAULT_BLOCK_SIZE)
    job = LoadJob(dl, dataset, workers, secrets=_secrets(args), block_size=block_size)
    bar = Bar(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TextColumn("{task.fields[blocks]}"), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=args.no_progress,
    )
    task: TaskID = bar.add_task(dl.meta.name, total=None, blocks="listing")

    def update(p: Progress) -> None:
        bar.update(task, total=p.bytes_total or None, completed=p.bytes_loaded,
                   blocks=f"{p.blocks_done}/{p.blocks_total} blocks")

    token = None
    if getattr(args, "token_file", None):
        token = await asyncio.to_thread(lambda: Path(args.token_file).read_text().strip())
    client = WorkerClient(dataset=dataset.meta.key, token=token)
    try:
        with bar:
            result: LoadResult = await run_load(job, client, on_progress=update)
            update(result.progress)
    except LoadError as exc:
        console.print(f"[red]Failed[/] ({exc.reason}): {exc.message}")
        return FAILED, format_duration(time.monotonic() - started)
    finally:
        await client.close()
    for warning in result.options.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    o, p = result.outcome, result.progress
    if o.phase == COMPLETE:
        console.print(f"{o.reason}: {o.message}; {p.warm_cached} block copies were already cached, "
                      f"{p.warm_fetched} fetched ({human_size(p.fetched_bytes)})")
        if o.partial:
            console.print(f"[yellow]PartiallyCached[/]: {o.partial}")
    else:
        console.print(f"[red]Failed[/] ({o.reason}): {o.message}")
    return o.phase, format_duration(time.monotonic() - started)


async def run_preload(args: argparse.Namespace) -> int:
    console = Console(stderr=False, highlight=False)
    try:
        files = load_all(args.file, default_namespace=args.namespace or "default")
        config = load_config(args.config) if args.config else None
    except (ManifestError, ConfigError, ValidationError) as exc:
        print(f"eddy preload: {exc}", file=sys.stderr)
        return 2
    if not files.dataloads:
        print("eddy preload: no DataLoad in the given files", file=sys.stderr)
        return 2
    rows: list[list[str]] = []
    failed = False
    begun = datetime.now(UTC)
    for dl in files.dataloads:
        phase, duration = await _one(dl, files, args, config, console)
        failed = failed or phase == FAILED
        age = format_duration((datetime.now(UTC) - begun).total_seconds())
        rows.append([dl.meta.name, dl.dataset_name, phase, age, duration])
    console.print(kubectl_table(["NAME", "DATASET", "PHASE", "AGE", "DURATION"], rows), highlight=False)
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_filename_arg(parser, dest="file", required=True,
                     help="manifest file (the DataLoad, its Dataset, optionally the JindoRuntime); "
                          "repeatable")
    parser.add_argument("--worker", action="append", metavar="URL",
                        help="a worker's base URL, e.g. http://127.0.0.1:9001; repeatable (default: the "
                             "config's workers, else the runtime's in-cluster names)")
    parser.add_argument("--secret-dir", metavar="DIR",
                        help=f"mounted Secret volumes <DIR>/<secret>/<key> (default {SECRETS_MOUNT_DIR})")
    parser.add_argument("--config", metavar="FILE", help="eddy.yaml: workers and block size the sidecars use")
    parser.add_argument("--namespace", metavar="NS", help="namespace for objects that name none (default)")
    parser.add_argument("--block-size", type=int, default=0,
                        help="block size in bytes (default: config's, 8 MiB)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--token-file", metavar="FILE",
                        help="the workers' admin token (a file, never a flag value; default: "
                             "$EDDY_WORKER_TOKEN_FILE or /etc/eddy/worker-token/admin if present)")
