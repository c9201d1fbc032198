"""Running the mount: stale-mount cleanup, the FUSE main loop, health endpoints, signals, unmount.

SIGTERM/SIGINT stop the mount cleanly: new requests keep being served while in-flight reads drain
(bounded by `grace`), then pyfuse3's loop is terminated and the mount removed with
`pyfuse3.close(unmount=True)`, falling back to `fusermount3 -u` — pyfuse3 alone would leave a stale
mount behind on a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eddy.config import RuntimeConfig
from eddy.secrets import SecretSource
from sidecar import fuseloop
from sidecar.fs import EddyFS, FsOptions
from sidecar.metrics import SidecarMetrics
from sidecar.mounts import is_fuse_mount, prepare_mountpoint, probe, set_kernel_readahead, unmount_all_fuse
from sidecar.reader import DatasetReader
from sidecar.settings import ReaderOptions
from sidecar.stopfile import watch_stop_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountSettings:
    mountpoint: Path
    cfg: RuntimeConfig
    secret_dir: Path | None = None
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    fs: FsOptions = field(default_factory=FsOptions)
    health_port: int = 0
    health_address: str = "127.0.0.1"  # 0.0.0.0: /metrics scrapeable at the pod's IP (opt-in)
    allow_other: bool = True
    kernel_readahead_kib: int = 4096
    grace: float = 20.0
    max_tasks: int = 64
    stop_file: Path | None = None  # the pod's downwardAPI annotations (classic sidecars; see stopfile)
    stop_poll: float = 1.0


class HealthServer:
    """`/healthz`, `/readyz` (200 once the mount answers) and `/metrics`, on 127.0.0.1 unless told
    otherwise (`--metrics-address`)."""

    def __init__(self, metrics: SidecarMetrics, reader: DatasetReader | None = None) -> None:
        self.metrics = metrics
        self.reader = reader
        self.ready = False
        self.alive = True
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int, host: str = "127.0.0.1") -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("health endpoints on http://%s:%d (/healthz /readyz /metrics)", host, self.port)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n" if self.alive else "stopping\n", status=200 if self.alive else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        status = 200 if self.ready else 503
        return web.Response(text="ready\n" if self.ready else "not ready\n", status=status)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.reader is not None:
            self.reader.sync_stats()
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _fuse_options(settings: MountSettings) -> set[str]:
    name = settings.cfg.dataset.meta.name
    options = {f"fsname=eddy-{name}", "subtype=eddy", "ro", "default_permissions"}
    if settings.allow_other and (os.getuid() == 0 or _user_allow_other()):
        options.add("allow_other")
    return options


def _user_allow_other() -> bool:
    try:
        lines = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        return False
    return any(line.strip() == "user_allow_other" for line in lines)


def tune_malloc(keep_bytes: int) -> bool:
    """Let glibc keep freed block buffers mapped instead of returning them to the kernel.

    Every block is a fresh 8 MiB buffer; by default glibc serves that with mmap and unmaps it on free,
    so each block costs ~2000 page faults and zero-filling (measured: ~3.5 ms per block, the largest
    single cost on the warm path). Raising the mmap and trim thresholds makes freed buffers reusable
    from the heap; RSS stays bounded by the cache and read-ahead limits. Best effort (glibc only)."""
    if os.environ.get("EDDY_SIDECAR_MALLOC_TUNE", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = int(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) == 1  # glibc's maximum
    return int(libc.mallopt(m_trim_threshold, max(keep_bytes, 64 * 1024 * 1024))) == 1 and ok


def terminate_fuse() -> None:
    """End pyfuse3's main loop: its waiting task is woken by `sidecar.fuseloop.notify_closing` (which,
    unlike pyfuse3.asyncio's, does not fail with InvalidStateError on a waiter that already woke)."""
    pyfuse3.terminate()


async def run_mount(settings: MountSettings) -> int:
    """Mount, serve until unmounted or signalled, unmount. Returns the process exit code."""
    mountpoint = settings.mountpoint
    # before any stat of our own: a dead mount answers ENOTCONN (see mounts.prepare_mountpoint)
    found = await asyncio.to_thread(prepare_mountpoint, mountpoint)
    log.info("mount point %s: %s", mountpoint, found)
    tune_malloc(settings.reader.cache_bytes + settings.reader.prefetch_budget)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a signal never leaves a stale mount
        loop.add_signal_handler(sig, stop.set)
    metrics = SidecarMetrics()
    health = HealthServer(metrics)
    if settings.health_port:
        await health.start(settings.health_port, settings.health_address)
    secrets = SecretSource.from_dir(settings.secret_dir) if settings.secret_dir else None
    reader: DatasetReader | None = None
    mounted = False
    watcher = (
        loop.create_task(watch_stop_file(settings.stop_file, stop, settings.stop_poll))
        if settings.stop_file is not None
        else None
    )
    try:
        t0 = time.monotonic()
        reader = await DatasetReader.create(settings.cfg, secrets, settings.reader, metrics)
        health.reader = reader
        if stop.is_set():
            log.info("asked to stop before mounting; exiting")
            return 0
        fs = EddyFS(reader.metadata, reader, settings.fs)
        fuseloop.enable()
        pyfuse3.init(fs, str(mountpoint), _fuse_options(settings))
        mounted = True
        reader.metadata.start_refresh()
        log.info("mounted %s at %s in %.2fs (%d workers, namespace from %s)",
                 settings.cfg.dataset.meta.key, mountpoint, time.monotonic() - t0, len(reader.workers),
                 reader.metadata.source)
        return await _serve(settings, reader, health, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        health.alive = False
        health.ready = False
        if mounted:
            with contextlib.suppress(Exception):
                pyfuse3.close(unmount=True)
        if await asyncio.to_thread(is_fuse_mount, mountpoint):  # and dead ones we were stacked on
            await asyncio.to_thread(unmount_all_fuse, mountpoint)
        if reader is not None:
            await reader.close()
        await health.close()
        log.info("unmounted %s", mountpoint)


async def _serve(
    settings: MountSettings, reader: DatasetReader, health: HealthServer, stop: asyncio.Event
) -> int:
    loop = asyncio.get_running_loop()
    main = loop.create_task(pyfuse3.main(min_tasks=1, max_tasks=settings.max_tasks))
    ready = loop.create_task(_become_ready(settings.mountpoint, health, settings.kernel_readahead_kib))
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if main.done():
            exc = main.exception()
            if exc is not None:
                log.error("FUSE main loop failed: %r", exc)
                return 1
            log.info("the mount was removed from outside; exiting")
            return 0
        log.info("stop requested: draining %d in-flight reads, then unmounting", reader.inflight)
        health.ready = False
        deadline = time.monotonic() + settings.grace
        if not await reader.drained(settings.grace):
            log.warning("%d reads still in flight after %.0fs; unmounting anyway", reader.inflight,
                        settings.grace)
        terminate_fuse()
        try:
            await asyncio.wait_for(main, timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("FUSE loop did not stop within the grace period; unmounting anyway")
        return 0
    finally:
        for task in (ready, stopper, main):
            task.cancel()
        await asyncio.gather(ready, stopper, main, return_exceptions=True)


async def _become_ready(mountpoint: Path, health: HealthServer, readahead_kib: int) -> None:
    """Mark ready once the mount answers a listing of its root (asked from a thread: it is us).

    The kernel read-ahead is raised here, after FUSE's INIT exchange (which would undo it)."""
    while True:
        if await asyncio.to_thread(is_fuse_mount, mountpoint):
            why = await asyncio.to_thread(probe, mountpoint, 5.0)
            if why is None:
                # the root's attributes, cached by the kernel for good (fs.ROOT_ATTR_TIMEOUT): a dead
                # mount's root still stats then, so a restarted sidecar can be bound and stack on it
                await asyncio.to_thread(os.stat, mountpoint)
                if readahead_kib:
                    await asyncio.to_thread(set_kernel_readahead, mountpoint, readahead_kib)
                health.ready = True
                log.info("mount %s answers; ready", mountpoint)
                return
        await asyncio.sleep(0.05)
