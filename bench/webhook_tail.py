"""What makes the webhook's p99 at 200/s: GC pauses, TLS and the client, the event loop — measured.

Three measurements beside the webhook benchmark's own figures (all at the same fixed 200/s, HTTPS
keep-alive, one webhook process):

- the bare aiohttp TLS server (the ceiling) at 200/s: the tail the client, TLS, aiohttp and this shared
  machine give with no admission work at all;
- the webhook started through `GC_WRAPPER`, which records every garbage collection of the webhook
  process (wall start, duration, generation) with `gc.callbacks`, and with `gc.disable()` in a second
  run: the tail with and without the collector;
- for the requests at or above the run's p99: how much of their latency the webhook's GC pauses (and
  this client process's own) cover; a tail that GC explains shows a large share there;
- the server process's CPU per admission (from /proc/<pid>/stat over the fixed-rate run): at 200/s,
  what share of a core the webhook needs, i.e. how exposed it is to a busy neighbour on two cores.

Nothing here changes the webhook's code: the wrapper imports `eddy_cli.main` and calls it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.cpu import cpu_seconds

# Runs the webhook (`eddy ...` argv after the first two arguments) while recording its GC pauses to a
# JSON file every 0.2 s: [[wall start, seconds, generation], ...]. `off` disables the collector.
# (No ";" in the code: py-spy's collapsed stacks name the process by its command line, split on ";".)
GC_WRAPPER = """
import gc, json, os, sys, threading, time
mode, path = sys.argv[1], sys.argv[2]
sys.argv = ["eddy", *sys.argv[3:]]
pauses, started = [], [0.0, 0.0]
def record(phase, info):
    if phase == "start":
        started[0], started[1] = time.time(), time.perf_counter()
    else:
        pauses.append([started[0], time.perf_counter() - started[1], info["generation"]])
gc.callbacks.append(record)
if mode == "off":
    gc.disable()
def dump():
    written = -1
    while True:
        time.sleep(0.2)
        if len(pauses) != written:
            written = len(pauses)
            with open(path + ".tmp", "w") as f:
                json.dump(list(pauses), f)
            os.replace(path + ".tmp", path)
threading.Thread(target=dump, daemon=True).start()
from eddy_cli.main import main
sys.exit(main())
"""


@contextmanager
def own_gc_pauses() -> Iterator[list[list[float]]]:
    """This process's GC pauses while the block runs: [[wall start, seconds, generation], ...]."""
    pauses: list[list[float]] = []
    started = [0.0, 0.0]

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0], started[1] = time.time(), time.perf_counter()
        else:
            pauses.append([started[0], time.perf_counter() - started[1], info["generation"]])

    gc.callbacks.append(record)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(record)


async def timed_post(session: aiohttp.ClientSession, url: str, body: bytes, ctx: ssl.SSLContext
                     ) -> tuple[float, float]:
    """(wall start, latency seconds) of one admission."""
    wall, started = time.time(), time.perf_counter()
    async with session.post(url, data=body, ssl=ctx, headers={"Content-Type": "application/json"}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return wall, time.perf_counter() - started


async def fixed_rate_timed(url: str, body: bytes, ctx: ssl.SSLContext, seconds: float, rate: int
                           ) -> list[tuple[float, float]]:
    """Open loop at `rate`/s for `seconds`: (wall start, latency) per request."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        for _ in range(20):
            await timed_post(session, url, body, ctx)
        start = time.perf_counter()
        tasks = []
        for i in range(int(seconds * rate)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed_post(session, url, body, ctx)))
        return list(await asyncio.gather(*tasks))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def tail_figures(samples: list[tuple[float, float]], server_gc: list[list[float]] | None = None,
                 client_gc: list[list[float]] | None = None) -> dict[str, Any]:
    """p50/p99/p99.9/max (ms) and, for the requests above p99, how many overlap a GC pause."""
    lat = [s[1] for s in samples]
    p99 = percentile(lat, 0.99)
    slow = [(w, d) for w, d in samples if d >= p99]
    out: dict[str, Any] = {"requests": len(samples), "p50_ms": ms(percentile(lat, 0.5)), "p99_ms": ms(p99),
                           "p999_ms": ms(percentile(lat, 0.999)), "max_ms": ms(max(lat, default=0.0))}
    window = (min((w for w, _ in samples), default=0.0), max((w + d for w, d in samples), default=0.0))
    for name, pauses in (("server", server_gc), ("client", client_gc)):
        if pauses is None:
            continue
        inside = [p for p in pauses if window[0] <= p[0] <= window[1]]
        out[f"{name}_gc"] = {
            "collections": len(inside),
            "by_generation": {g: sum(1 for p in inside if p[2] == g) for g in (0, 1, 2)},
            "total_ms": ms(sum(p[1] for p in inside)),
            "max_ms": ms(max((p[1] for p in inside), default=0.0)),
            "slow_requests_overlapping": sum(
                1 for w, d in slow if any(p[0] < w + d and w < p[0] + p[1] for p in inside)),
            "slow_requests": len(slow),
            # the share of the slow requests' summed latency that a pause of this process covered
            "share_of_slow_latency": round(sum(
                max(0.0, min(w + d, p[0] + p[1]) - max(w, p[0])) for w, d in slow for p in inside
            ) / max(1e-9, sum(d for _, d in slow)), 3),
        }
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def read_pauses(path: Path) -> list[list[float]]:
    try:
        data: list[list[float]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data


async def fixed_rate_with_cpu(pid: int, url: str, body: bytes, ctx: ssl.SSLContext, seconds: float, rate: int
                              ) -> tuple[list[tuple[float, float]], float]:
    """`fixed_rate_timed`, and the server process's CPU milliseconds per request over it."""
    before = cpu_seconds(pid)
    samples = await fixed_rate_timed(url, body, ctx, seconds, rate)
    return samples, round((cpu_seconds(pid) - before) * 1000 / max(1, len(samples) + 20), 3)
