"""Leader election on a Lease (eddy/kube/leader.py): the pure decision, and replicas racing on the
sandbox's API server through the real client."""

from __future__ import annotations

import argparse
import asyncio
import time

import pytest

from eddy import kube
from eddy.kube.leader import (
    Decision,
    LeaderElector,
    Timing,
    add_leader_args,
    decide,
    default_identity,
    micro_time,
    run_elected,
)
from sandbox.apiserver import KubeApiServer

FAST = Timing(lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)


def lease(holder: str, renewed: float, duration: int = 15, transitions: int = 0) -> dict[str, object]:
    return {"spec": {"holderIdentity": holder, "renewTime": micro_time(renewed),
                     "leaseDurationSeconds": duration, "leaseTransitions": transitions}}


def test_decide() -> None:
    now = time.time()
    assert decide(None, "a", now) == Decision("create", "", 0)
    assert decide(lease("a", now - 100), "a", now).action == "renew"  # its own, even when stale
    assert decide(lease("b", now - 5), "a", now) == Decision("wait", "b", 0)
    assert decide(lease("b", now - 16, transitions=3), "a", now) == Decision("take", "b", 3)
    assert decide(lease("", now), "a", now).action == "take"  # released
    assert decide({"spec": {"holderIdentity": "b"}}, "a", now).action == "take"  # never renewed


def test_timing_must_be_ordered() -> None:
    assert Timing.scaled(15) == Timing(15, 10, 2)  # client-go's proportions
    assert default_identity() != default_identity()  # a restarted process is a new candidate
    with pytest.raises(ValueError):
        Timing(lease_duration=5, renew_deadline=10, retry_period=1)


async def leader_of(api: KubeApiServer) -> str:
    obj = api.get_object("leases", "eddy-system", "eddy-controller")
    return str(((obj or {}).get("spec") or {}).get("holderIdentity") or "")


async def test_one_leads_the_standby_takes_over_after_a_crash(kube_api: KubeApiServer) -> None:
    async with kube.Kube(await kube.make_api_client(url=kube_api.url)) as client:
        leading: list[str] = []
        started = {name: asyncio.Event() for name in ("first", "second", "third")}

        def work(name: str) -> object:
            async def lead() -> None:
                leading.append(name)
                started[name].set()
                await asyncio.Event().wait()
            return lead

        first = LeaderElector(client, "eddy-system", "eddy-controller", "first", timing=FAST)
        second = LeaderElector(client, "eddy-system", "eddy-controller", "second", timing=FAST)
        one = asyncio.create_task(first.run(work("first")))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        two = asyncio.create_task(second.run(work("second")))  # type: ignore[arg-type]
        await asyncio.sleep(1.0)
        assert leading == ["first"] and await leader_of(kube_api) == "first"  # never two at once
        # The leader dies without a word (no release): the standby waits out the lease, then leads.
        one.cancel()
        crashed = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await one
        await asyncio.wait_for(started["second"].wait(), 5)
        took = time.monotonic() - crashed
        assert took <= FAST.lease_duration + 2 * FAST.retry_period + 0.5, took
        lease_obj = kube_api.get_object("leases", "eddy-system", "eddy-controller")
        assert lease_obj is not None and lease_obj["spec"]["leaseTransitions"] == 1
        # A clean stop hands the Lease back: a new standby takes it within a couple of retry periods.
        third = LeaderElector(client, "eddy-system", "eddy-controller", "third", timing=FAST)
        stop = asyncio.Event()
        three = asyncio.create_task(third.run(work("third")))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        two.cancel()
        with pytest.raises(asyncio.CancelledError):
            await two
        await second.release()  # what `run` does on a clean stop
        released = time.monotonic()
        await asyncio.wait_for(started["third"].wait(), 5)
        assert time.monotonic() - released < FAST.lease_duration
        stop.set()
        three.cancel()
        with pytest.raises(asyncio.CancelledError):
            await three


async def test_a_leader_that_cannot_renew_gives_up_before_the_lease_ends(kube_api: KubeApiServer) -> None:
    async with kube.Kube(await kube.make_api_client(url=kube_api.url)) as client:
        cancelled, leads = asyncio.Event(), asyncio.Event()

        async def lead() -> None:
            leads.set()
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

        elector = LeaderElector(client, "eddy-system", "eddy-controller", "only", timing=FAST)
        task = asyncio.create_task(elector.run(lead))
        await asyncio.wait_for(leads.wait(), 5)
        assert elector.leading
        kube_api.fail_next(1000, 500, method="PUT")  # every renewal fails from now on
        failing = time.monotonic()
        assert await asyncio.wait_for(task, 5) is False
        gave_up = time.monotonic() - failing
        assert cancelled.is_set()
        # It stopped leading within the renew deadline, before any standby could take the Lease.
        assert gave_up < FAST.lease_duration, gave_up
        kube_api.clear_faults()


class Work:
    """Work that runs until cancelled, and says when it started and when it was cancelled."""

    def __init__(self) -> None:
        self.leads, self.cancelled = asyncio.Event(), asyncio.Event()

    async def __call__(self) -> None:
        self.leads.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()


async def test_run_elected_runs_the_work_until_stopped_with_or_without_a_lease(
    kube_api: KubeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """What `eddy controller` and `eddy preloader` run: the same work, elected or not."""
    parser = argparse.ArgumentParser()
    add_leader_args(parser, "eddy-part", "act")
    async with kube.Kube(await kube.make_api_client(url=kube_api.url)) as client:
        for argv in ([], ["--leader-elect", "--lease-duration", "1.5"]):
            args, work, stop = parser.parse_args(argv), Work(), asyncio.Event()
            task = asyncio.create_task(run_elected(client, args, work, stop, "part"))
            await asyncio.wait_for(work.leads.wait(), 5)
            stop.set()
            assert await asyncio.wait_for(task, 5) is True and work.cancelled.is_set(), argv
            held = kube_api.get_object("leases", "eddy-system", "eddy-part")
            if args.leader_elect:  # a clean stop handed the Lease back
                assert held is not None and held["spec"]["holderIdentity"] == ""
            else:
                assert held is None  # no election: no Lease

        # Leadership lost (no renewal gets through): the work is cancelled, and the caller told to exit.
        work = Work()
        args = parser.parse_args(["--leader-elect", "--lease-duration", "1.5"])
        task = asyncio.create_task(run_elected(client, args, work, asyncio.Event(), "part"))
        await asyncio.wait_for(work.leads.wait(), 5)
        kube_api.fail_next(1000, 500, method="PUT")
        assert await asyncio.wait_for(task, 5) is False and work.cancelled.is_set()
        kube_api.clear_faults()
    assert "part lost leadership: exiting so that it restarts as a standby" in caplog.messages
