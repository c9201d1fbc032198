"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

Replicas of the controller and the preloader run side by side; one holds the Lease and acts, the others
wait and take over once the holder stops renewing for `lease_duration` seconds. The decision is a pure
function (`decide`) over the Lease as read and the time; `LeaderElector.run` is the thin loop around it:
acquire, then run the caller's work while renewing every `retry_period`, and give the work up (cancel
it) as soon as a renewal has failed for `renew_deadline` seconds, before another replica can have
acquired the Lease. Optimistic concurrency (the Lease's resourceVersion) settles races: of two replicas
writing the same free Lease, one gets a Conflict and goes back to waiting. A part adds the flags with
`add_leader_args` and runs its work through `run_elected`, elected or not as the flags say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.errors import Conflict, KubeError, NotFound
from eddy.kube.resources import LEASES

log = logging.getLogger("eddy.kube.leader")
Obj = dict[str, Any]


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0  # a standby takes over this long after the holder's last renewal
    renew_deadline: float = 10.0  # the holder gives up leading when it could not renew for this long
    retry_period: float = 2.0  # between attempts to acquire or renew

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry_period < renew_deadline < lease_duration")

    @classmethod
    def scaled(cls, lease_duration: float) -> Timing:
        """Renew deadline and retry period in client-go's default proportions (15 / 10 / 2)."""
        return cls(lease_duration, lease_duration * 2 / 3, lease_duration * 2 / 15)


@dataclass(frozen=True)
class Decision:
    action: str  # "create" | "take" | "renew" | "wait"
    holder: str
    transitions: int


def micro_time(when: float) -> str:
    """A MicroTime as the API writes it."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
    return None


def decide(lease: Obj | None, identity: str, now: float) -> Decision:
    """What a candidate does with the Lease as read: create it, take it over, renew it, or wait.

    A Lease is free when it has no holder or its holder's last renewal is older than its duration.
    The holder renews its own Lease; anyone may take a free one (counting a transition when the holder
    changes). Clock skew between replicas is bounded by the durations, as in client-go.
    """
    if lease is None:
        return Decision("create", "", 0)
    spec = lease.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    transitions = int(spec.get("leaseTransitions") or 0)
    if holder == identity:
        return Decision("renew", holder, transitions)
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if not holder or renewed is None or now >= renewed + duration:
        return Decision("take", holder, transitions)
    return Decision("wait", holder, transitions)


def lease_spec(decision: Decision, identity: str, timing: Timing, now: float, spec: Obj) -> Obj:
    """The Lease's spec after acting on `decision` (create, take or renew)."""
    stamp = micro_time(now)
    out = dict(spec)
    out.update({"holderIdentity": identity, "leaseDurationSeconds": int(timing.lease_duration),
                "renewTime": stamp})
    if decision.action in ("create", "take"):
        out["acquireTime"] = stamp
        out["leaseTransitions"] = decision.transitions + (1 if decision.holder else 0)
    return out


def default_identity() -> str:
    """client-go's identity: the pod's name (downward API, else the host's) and a per-process suffix.
    A container restarted in the same pod is a new candidate, so it cannot "renew" the Lease its dead
    predecessor held and skip the standby's wait."""
    return f"{os.environ.get('POD_NAME') or os.uname().nodename}_{uuid.uuid4().hex[:8]}"


def add_leader_args(parser: argparse.ArgumentParser, lease_name: str, acts: str) -> None:
    """`--leader-elect`, `--lease-name`, `--lease-duration`, for a part that runs several replicas."""
    parser.add_argument("--leader-elect", action="store_true",
                        help=f"run as one of several replicas: {acts} only while holding the Lease "
                             "(namespace $POD_NAMESPACE, identity $POD_NAME); exit 1 when it is lost")
    parser.add_argument("--lease-name", default=lease_name, metavar="NAME",
                        help=f"the Lease's name (default {lease_name})")
    parser.add_argument("--lease-duration", type=float, default=15.0, metavar="S",
                        help="a standby takes over this long after the leader's last renewal (default 15)")


def elector_for_this_pod(kube: Kube, args: argparse.Namespace) -> LeaderElector:
    """The elector `add_leader_args`' flags ask for, its Lease in the pod's namespace ($POD_NAMESPACE)."""
    namespace = os.environ.get("POD_NAMESPACE") or "eddy-system"
    return LeaderElector(kube, namespace, args.lease_name, timing=Timing.scaled(args.lease_duration))


async def run_elected(kube: Kube, args: argparse.Namespace, work: Callable[[], Awaitable[None]],
                      stop: asyncio.Event, part: str) -> bool:
    """Run `work()` until it returns or `stop` is set (then cancel it); with `add_leader_args`'
    `--leader-elect`, only while this replica holds the Lease (`elector_for_this_pod`).

    False when leadership was lost (logged as `part`'s): the caller should exit 1, so that it restarts
    as a standby; True otherwise.
    """
    if not args.leader_elect:
        await _until_stopped(work(), stop)
        return True
    elector = elector_for_this_pod(kube, args)
    log.info("leader election on Lease %s/%s as %s", elector.namespace, elector.name, elector.identity)
    if await elector.run(work, stop):
        return True
    log.error("%s lost leadership: exiting so that it restarts as a standby", part)
    return False


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Await `work` until it ends or `stop` is set (then cancel it and wait for it to unwind)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, waiter):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str | None = None, *,
                 timing: Timing | None = None, clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timing = timing or Timing()
        self.clock = clock
        self.leading = False
        self.last_renewal = 0.0

    async def try_once(self) -> bool:
        """One attempt to acquire or renew; True when this replica holds the Lease afterwards."""
        now = self.clock()
        try:
            lease = await self.kube.get_or_none(LEASES, self.name, self.namespace)
        except KubeError as exc:
            log.warning("leader election: reading Lease %s/%s failed: %s", self.namespace, self.name, exc)
            return False
        decision = decide(lease, self.identity, now)
        if decision.action == "wait":
            return False
        spec = lease_spec(decision, self.identity, self.timing, now, (lease or {}).get("spec") or {})
        try:
            if lease is None:
                await self.kube.create(LEASES, {"metadata": {"name": self.name, "namespace": self.namespace},
                                                "spec": spec}, self.namespace)
            else:
                await self.kube.replace(LEASES, self.name, {**lease, "spec": spec}, self.namespace)
        except (Conflict, NotFound):
            return False  # another replica wrote first: read again next round
        except KubeError as exc:
            log.warning("leader election: writing Lease %s/%s failed: %s", self.namespace, self.name, exc)
            return False
        if decision.action != "renew":
            log.info("leader election: %s now leads %s/%s (previous holder %r)", self.identity,
                     self.namespace, self.name, decision.holder)
        self.last_renewal = now
        return True

    async def run(self, lead: Callable[[], Awaitable[None]], stop: asyncio.Event | None = None) -> bool:
        """Wait to acquire the Lease, then run `lead()` while renewing it.

        Returns True when `lead()` returned by itself (or `stop` was set), False when leadership was
        lost (the work was cancelled): a caller should then exit, as client-go's callers do, and start
        over as a standby.
        """
        stop = stop or asyncio.Event()
        while not stop.is_set():
            if await self.try_once():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.timing.retry_period)
        if stop.is_set():
            return True
        self.leading = True
        work = asyncio.create_task(_call(lead), name=f"leader-{self.name}")
        try:
            while not work.done() and not stop.is_set():
                done, _ = await asyncio.wait({work}, timeout=self.timing.retry_period)
                if done:
                    break
                if await self.try_once():
                    continue
                if self.clock() - self.last_renewal >= self.timing.renew_deadline:
                    log.error("leader election: %s could not renew %s/%s for %.0fs: giving up leading",
                              self.identity, self.namespace, self.name, self.timing.renew_deadline)
                    return False
            return True
        finally:
            self.leading = False
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            if stop.is_set():
                await self.release()

    async def release(self) -> None:
        """Hand the Lease back on a clean stop, so a standby takes over at once instead of waiting."""
        try:
            lease = await self.kube.get_or_none(LEASES, self.name, self.namespace)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**lease["spec"], "holderIdentity": "", "renewTime": None, "leaseDurationSeconds": 1}
                await self.kube.replace(LEASES, self.name, {**lease, "spec": spec}, self.namespace)
        except KubeError as exc:
            log.warning("leader election: releasing Lease %s/%s failed: %s", self.namespace, self.name, exc)


async def _call(lead: Callable[[], Awaitable[None]]) -> None:
    await lead()
