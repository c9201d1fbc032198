"""What the webhook's local and cluster modes share: the injector settings from the flags, the stop
signal, and serving HTTPS while the certificate is renewed every `--renew-check` seconds."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from webhook.profiles import FuseMode, InjectorSettings
from webhook.server import bound_port, start_https

log = logging.getLogger("eddy.webhook")


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


def stop_event() -> asyncio.Event:
    """An Event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_with_renewal(
    app: web.Application,
    tls: ssl.SSLContext,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    every: float,
    renew: Callable[[], Awaitable[object]],
    listening: Callable[[int], Awaitable[None]],
) -> None:
    """Serve `app` on `host:port` with `tls` until `stop` is set; `await listening(bound port)` once the
    socket is open, and `await renew()` every `every` seconds. `renew` swaps the certificate in `tls` (a
    `TlsReloader`'s context) when it is due; when it fails, the current certificate is kept and the next
    round tries again."""
    runner = await start_https(app, tls, host, port)
    try:
        await listening(bound_port(runner))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                break
            try:
                await renew()
            except Exception as exc:  # keep serving the current certificate; retry next round
                log.warning("certificate renewal failed: %s", exc)
    finally:
        await runner.cleanup()
