"""What makes the webhook's p99 at 200/s: the load generator, GC pauses, the machine — measured.

The load generator (`KeepAliveClient` + `open_loop`) is built so that what it reports is the server's
latency and not its own:

- **no handshake during the run**: `KeepAliveClient` (`async with`) makes its TLS connections (and
  handshakes) before the run and reuses them; a request waits for a free one instead of opening another. (The
  aiohttp client used before opened new connections whenever requests overlapped: every stall then
  brought a burst of full TLS handshakes, 1-2 ms of CPU each on both sides, and the stall cascaded.)
- **little client CPU**: one pre-built HTTP/1.1 request, written raw; the answer is read by
  Content-Length. The client shares the two cores with the server, so what it costs is a neighbour's
  load on the server.
- **open loop, intended times**: request i is due at start + i/rate whether or not earlier ones are
  done, and its latency counts from when it was due (`min(due, sent)`: the scheduler wakes up to
  `TIMER_SLACK` early so that epoll's millisecond rounding does not make every send late), so the
  client's own scheduling delay is inside the figure, never hidden; `send_lag` reports it apart.
- **the client's GC is off during the run** (collected and frozen before it).
- **the same seconds for the webhook and its ceiling**: `alternating_runs` measures each server alone
  at the rate, in short rounds that take turns (0.5 s each, 20 per server in 10 s). The machine's other
  load comes in bursts of a fraction of a second to a few seconds: one run after the other lets a burst
  land on one server only. (Interleaving both servers' requests in one loop, which `open_loop` can do,
  puts the other server's work and twice the client's on the same cores: it added ~3 ms to both p99s
  in a 30 s comparison.)

Beside the latencies, for each run: the server's CPU per request (/proc/<pid>/stat) and the time the
server's and the client's event-loop threads spent runnable but waiting for a core (`run-queue wait`,
/proc/<pid>/schedstat): the share of the tail the machine's other load causes. `GC_WRAPPER` runs the
webhook while recording its GC pauses with `gc.callbacks`; `tail_figures` says how much of the slow
requests' latency those pauses (and the client's) cover.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.cpu import cpu_seconds

# Runs the webhook (`eddy ...` argv after the first two arguments) while recording its GC pauses to a
# JSON file: [[wall start, seconds, generation], ...], rewritten after each collection (by the callback,
# outside the timed pause: no helper thread, which would compete with the event loop for the GIL).
# `off` disables the collector. (No ";" in the code: py-spy's collapsed stacks name the process by its
# command line, split on ";".)
GC_WRAPPER = """
import gc, json, os, sys, time
mode, path = sys.argv[1], sys.argv[2]
sys.argv = ["eddy", *sys.argv[3:]]
pauses, started = [], [0.0, 0.0]
def record(phase, info):
    if phase == "start":
        started[0], started[1] = time.time(), time.perf_counter()
        return
    pauses.append([started[0], time.perf_counter() - started[1], info["generation"]])
    with open(path + ".tmp", "w") as f:
        json.dump(pauses, f)
    os.replace(path + ".tmp", path)
gc.callbacks.append(record)
if mode == "off":
    gc.disable()
from eddy_cli.main import main
sys.exit(main())
"""

CONNECTIONS = 16  # opened before a run; at 200/s and ~1 ms per request, a handful are ever busy
TIMER_SLACK = 0.001  # epoll rounds its timeout up to the next millisecond


@dataclass(frozen=True)
class Sample:
    """One request of an open-loop run, perf_counter seconds (wall: time.time() when it was due)."""

    wall: float
    due: float
    sent: float
    done: float

    @property
    def latency(self) -> float:
        return self.done - min(self.due, self.sent)

    @property
    def send_lag(self) -> float:
        return max(0.0, self.sent - self.due)


class KeepAliveClient:
    """`connections` TLS keep-alive connections to one URL, opened up front; POSTs one fixed body."""

    def __init__(self, url: str, ctx: ssl.SSLContext, body: bytes, connections: int = CONNECTIONS) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.ctx = ctx
        self.connections = connections
        self.request = (
            f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.opened = 0

    async def __aenter__(self) -> KeepAliveClient:
        for _ in range(self.connections):
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ctx)
            self.opened += 1
            self.idle.put_nowait((reader, writer))
        return self

    async def __aexit__(self, *_: object) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()

    async def post(self) -> None:
        """One request on a free connection (waits for one); raises unless the answer is 200."""
        reader, writer = await self.idle.get()
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length = _status_and_length(head)
            await reader.readexactly(length)
        except BaseException:
            writer.close()  # the connection's state is unknown: not returned to the pool
            raise
        self.idle.put_nowait((reader, writer))
        if status != 200:
            raise RuntimeError(f"{self.host}:{self.port}: HTTP {status}")


def _status_and_length(head: bytes) -> tuple[int, int]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value)
    raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")


@contextmanager
def gc_paused() -> Iterator[None]:
    """This process's collector off (after a collection and a freeze) for the block; inside a block
    that has it off already, nothing more."""
    if not gc.isenabled():
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


async def open_loop(clients: list[KeepAliveClient], seconds: float, rate: float) -> list[list[Sample]]:
    """`rate` requests/s to each client's server for `seconds`, each sent when due whatever the others are
    doing; with several clients the requests take turns (A, B, A, B, ...: every server meets the
    machine's load of the same instants). One list of samples per client."""
    n = len(clients)

    async def one(client: KeepAliveClient, wall: float, due: float) -> Sample:
        sent = time.perf_counter()
        await client.post()
        return Sample(wall, due, sent, time.perf_counter())

    tasks: list[list[asyncio.Task[Sample]]] = [[] for _ in clients]
    with gc_paused():
        wall0, start = time.time(), time.perf_counter()
        for i in range(int(seconds * rate) * n):
            offset = i / (rate * n)
            delay = start + offset - time.perf_counter() - TIMER_SLACK
            if delay > 0:
                await asyncio.sleep(delay)
            tasks[i % n].append(asyncio.create_task(one(clients[i % n], wall0 + offset, start + offset)))
        return [list(await asyncio.gather(*each)) for each in tasks]


async def closed_loop(client: KeepAliveClient, seconds: float, total: int) -> tuple[float, int]:
    """Requests/s with every connection busy (bounded by `total` and `seconds`); (rate, requests)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while done < total and time.perf_counter() < deadline:
            done += 1
            await client.post()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(client.connections)))
    return done / (time.perf_counter() - started), done


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


def schedstat(pid: int) -> tuple[float, float, int]:
    """(seconds on a CPU, seconds runnable but waiting for one, timeslices) of a process's main thread."""
    try:
        run, wait, slices = Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
    except (OSError, ValueError):
        return 0.0, 0.0, 0
    return int(run) / 1e9, int(wait) / 1e9, int(slices)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def tail_figures(samples: list[Sample], server_gc: list[list[float]] | None = None,
                 client_gc: list[list[float]] | None = None) -> dict[str, Any]:
    """p50/p99/p99.9/max (ms) from the due times, the same from the actual sends, the client's send lag,
    and for the requests at or above p99 how much of their latency a GC pause of the server (or of the
    client) covers."""
    lat = [s.latency for s in samples]
    lag = [s.send_lag for s in samples]
    p99 = percentile(lat, 0.99)
    slow = [(s.wall, s.latency) for s in samples if s.latency >= p99]
    out: dict[str, Any] = {
        "requests": len(samples), "p50_ms": ms(percentile(lat, 0.5)), "p99_ms": ms(p99),
        "p999_ms": ms(percentile(lat, 0.999)), "max_ms": ms(max(lat, default=0.0)),
        "send_lag_p99_ms": ms(percentile(lag, 0.99)), "send_lag_max_ms": ms(max(lag, default=0.0)),
        # timed from when the client actually sent (what the old client measured): the client's own
        # delays left out, so the difference to p99_ms is what waiting for the client cost
        "from_send": {f"p{q}_ms": ms(percentile([s.done - s.sent for s in samples], x))
                      for q, x in (("50", 0.5), ("99", 0.99), ("999", 0.999))},
    }
    spans = [(s.wall, s.wall + s.latency) for s in samples]
    for name, pauses in (("server", server_gc), ("client", client_gc)):
        if pauses is None:
            continue
        # the collections while some request was in flight (not the client's own, between rounds)
        inside = [p for p in pauses if any(p[0] < end and start < p[0] + p[1] for start, end in spans)]
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


def read_pauses(path: Path) -> list[list[float]]:
    try:
        data: list[list[float]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data


@dataclass
class RunCost:
    """What a measured run cost one server and (its share of) this client, in seconds."""

    requests: int = 0
    server_cpu: float = 0.0
    server_wait: float = 0.0
    client_cpu: float = 0.0
    client_wait: float = 0.0

    def __add__(self, other: RunCost) -> RunCost:
        return RunCost(self.requests + other.requests, self.server_cpu + other.server_cpu,
                       self.server_wait + other.server_wait, self.client_cpu + other.client_cpu,
                       self.client_wait + other.client_wait)

    def figures(self) -> dict[str, float]:
        n = max(1, self.requests)
        return {
            "server_cpu_ms_per_request": round(self.server_cpu * 1000 / n, 3),
            "client_cpu_ms_per_request": round(self.client_cpu * 1000 / n, 3),
            # runnable but waiting for a core, per request: the machine's other load, felt by each side
            "server_runqueue_wait_ms_per_request": round(self.server_wait * 1000 / n, 3),
            "client_runqueue_wait_ms_per_request": round(self.client_wait * 1000 / n, 3),
        }


async def measured_run(targets: list[tuple[int, KeepAliveClient]], seconds: float, rate: float,
                       warm: int = 50) -> list[tuple[list[Sample], RunCost]]:
    """`open_loop` against each (server pid, client) at once, and what it cost each server and this
    client (the client's share split evenly between the targets)."""
    for _, client in targets:
        for _ in range(warm):
            await client.post()
    pids = [pid for pid, _ in targets]
    cpu0, server0 = [cpu_seconds(p) for p in pids], [schedstat(p) for p in pids]
    client0 = schedstat(os.getpid())
    runs = await open_loop([client for _, client in targets], seconds, rate)
    cpu1, server1 = [cpu_seconds(p) for p in pids], [schedstat(p) for p in pids]
    client1 = schedstat(os.getpid())
    n = len(targets)
    return [(samples, RunCost(len(samples), cpu1[i] - cpu0[i], server1[i][1] - server0[i][1],
                              (client1[0] - client0[0]) / n, (client1[1] - client0[1]) / n))
            for i, samples in enumerate(runs)]


ROUNDS = 20
WARM_PER_ROUND = 5


async def alternating_runs(targets: list[tuple[int, KeepAliveClient]], seconds: float, rate: float,
                           rounds: int = ROUNDS) -> list[tuple[list[Sample], RunCost]]:
    """`rounds` runs of `seconds / rounds` against each target alone, in turn; per target, all its
    samples and what they cost."""
    out: list[tuple[list[Sample], RunCost]] = [([], RunCost()) for _ in targets]
    with gc_paused():  # once for all the rounds
        for _ in range(rounds):
            for i, target in enumerate(targets):
                [(samples, cost)] = await measured_run([target], seconds / rounds, rate, warm=WARM_PER_ROUND)
                out[i] = (out[i][0] + samples, out[i][1] + cost)
    return out


HANDLER_BUCKETS = "eddy_webhook_admission_seconds_bucket"


async def handler_buckets(url: str, ctx: ssl.SSLContext) -> dict[float, float]:
    """The webhook's own histogram of its handler's time (`/metrics`): upper bound (s) -> count so far."""
    metrics = url.rsplit("/", 1)[0] + "/metrics"
    async with aiohttp.ClientSession() as session, session.get(metrics, ssl=ctx) as answer:
        text = await answer.text()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(HANDLER_BUCKETS + "{"):
            labels, value = line.rsplit(" ", 1)
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            out[float(bound)] = float(value)
    return out


def handler_figures(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Between two `handler_buckets`: the handler's p50 and p99 as the bucket bounds that hold them, and
    how many admissions spent over 5 ms in it. The rest of a request's latency is outside Eddy's code:
    the client, TLS, aiohttp, and waiting for a core."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0

    def bound_of(q: float) -> float:
        return next((b for b, c in zip(bounds, counts, strict=True) if c >= q * total), float("inf"))

    over = total - next((c for b, c in zip(bounds, counts, strict=True) if b >= 0.005), total)
    def as_ms(bound: float) -> float | None:
        return ms(bound) if bound != float("inf") else None

    return {"admissions": int(total), "p50_at_most_ms": as_ms(bound_of(0.5)),
            "p99_at_most_ms": as_ms(bound_of(0.99)), "over_5ms": int(over)}
