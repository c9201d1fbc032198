"""Job controller.

Pods `<job>-<5 chars>` (generateName) labelled `batch.kubernetes.io/job-name`, `job-name`,
`batch.kubernetes.io/controller-uid` and `controller-uid`, owned by the Job. `parallelism` pods run at
once until `completions` succeeded (with `parallelism` alone: a work queue, done when one pod
succeeded and none is left running); a failed pod is replaced after a backoff (`backoff` seconds,
doubling per failure, capped at 6 minutes, as the Job controller does) until `failed` exceeds
`backoffLimit` (with `restartPolicy: OnFailure` the containers' restarts count, reaching it is
enough). `activeDeadlineSeconds` fails the Job with `DeadlineExceeded`; `suspend` deletes its active
pods and sets `Suspended`.

Status: `active`, `ready`, `succeeded`, `failed`, `startTime`, `completionTime` and the conditions
`Complete` (reason `CompletionsReached`) or `Failed` (`BackoffLimitExceeded` / `DeadlineExceeded`),
each preceded by the 1.31 interim condition `SuccessCriteriaMet` / `FailureTarget` with the same
reason when `interim_conditions` is on. A finished pod is counted once, also when it is deleted before
the controller looked at it (the DELETED event carries its last phase); an active pod deleted by
someone else counts as failed, as with Kubernetes' pod tracking finalizers, which this controller does
not add. Not modelled: `completionMode: Indexed`, `podFailurePolicy`, `successPolicy`,
`backoffLimitPerIndex`, `podReplacementPolicy`, `ttlSecondsAfterFinished`, the defaulting the API
server does on a Job (selector, template labels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.resources import Resource
from sandbox.workloads import (
    OwnerController,
    PodIndex,
    condition_true,
    controller_of,
    finished,
    is_ready,
    now_iso,
    parse_time,
    pod_body,
    set_condition,
    terminating,
)
from sandbox.workloads_replicaset import deletion_order

Obj = dict[str, Any]
JOBS = Resource("batch", "v1", "jobs", "Job", has_status=True)
MAX_BACKOFF = 360.0


@dataclass
class _JobState:
    """What the controller has already counted for one Job (the status can trail our own writes)."""

    succeeded: int
    failed: int
    counted: set[str] = field(default_factory=set)
    deleted_by_us: set[str] = field(default_factory=set)
    last_failure: float = 0.0
    start_time: str = ""
    started_at: float = 0.0  # when this process set startTime (the field has whole seconds only)
    completion_time: str = ""
    announced: bool = False  # the Completed / failure Event is out


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _restarts(pod: Obj) -> int:
    status = pod.get("status") or {}
    return sum(int(c.get("restartCount") or 0) for key in ("initContainerStatuses", "containerStatuses")
               for c in status.get(key) or [])


class JobController(OwnerController):
    resource = JOBS
    component = "job-controller"

    def __init__(self, kube: Kube, pods: PodIndex, *, backoff: float = 10.0,
                 interim_conditions: bool = True) -> None:
        super().__init__(kube, pods)
        self.backoff = backoff
        self.interim_conditions = interim_conditions
        self._state: dict[str, _JobState] = {}
        self._vanished: dict[str, dict[str, str]] = {}  # job uid -> pod uid -> last phase

    def forget(self, owner: Obj) -> None:
        uid = str(owner["metadata"].get("uid"))
        self._state.pop(uid, None)
        self._vanished.pop(uid, None)

    def pod_event(self, etype: str, pod: Obj) -> None:
        """A pod of ours that is gone: remember its last phase until the next reconcile counts it."""
        ref = controller_of(pod)
        if etype == "DELETED" and ref and ref.get("kind") == "Job":
            self._vanished.setdefault(str(ref.get("uid")), {})[str(pod["metadata"].get("uid"))] = _phase(pod)
        super().pod_event(etype, pod)

    async def delete_pod(self, pod: Obj) -> None:
        ref = controller_of(pod)
        if ref is not None and (state := self._state.get(str(ref.get("uid")))) is not None:
            state.deleted_by_us.add(str(pod["metadata"].get("uid")))
        await super().delete_pod(pod)

    async def reconcile(self, owner: Obj) -> float | None:
        meta, spec = owner["metadata"], owner.get("spec") or {}
        uid = str(meta["uid"])
        pods = self.pods.owned(meta["namespace"], uid)
        old_status = owner.get("status") or {}
        state = self._account(uid, pods, old_status)
        active = [p for p in pods if not finished(p) and not terminating(p)]
        now = time.time()
        status: Obj = {k: v for k, v in old_status.items() if k in ("startTime", "completionTime")}
        conditions = list(old_status.get("conditions") or [])
        again: float | None = None
        if condition_true(owner, "Complete") or condition_true(owner, "Failed"):
            for pod in active:
                await self.delete_pod(pod)
            active = []
        elif spec.get("suspend"):
            for pod in active:
                await self.delete_pod(pod)
            active = []
            conditions = set_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended")
        else:
            if not state.start_time and "startTime" not in status:
                state.started_at = now
            state.start_time = status.setdefault("startTime", state.start_time or now_iso())
            if any(c.get("type") == "Suspended" for c in conditions):
                conditions = set_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed")
            failure = self._failure(spec, state, active, status, now)
            completions = spec.get("completions")
            if completions is None and spec.get("parallelism") is None:
                completions = 1
            if completions is not None:
                complete = state.succeeded >= int(completions)
            else:
                complete = state.succeeded > 0 and not active
            if failure is not None:
                reason, message = failure
                for pod in active:
                    await self.delete_pod(pod)
                active = []
                if self.interim_conditions:
                    conditions = set_condition(conditions, "FailureTarget", "True", reason, message)
                conditions = set_condition(conditions, "Failed", "True", reason, message)
                if not state.announced:
                    state.announced = True
                    await self.events.record(owner, reason, message, "Warning")
            elif complete:
                for pod in active:
                    await self.delete_pod(pod)
                active = []
                message = "Reached expected number of succeeded pods"
                if self.interim_conditions:
                    conditions = set_condition(conditions, "SuccessCriteriaMet", "True", "CompletionsReached",
                                               message)
                conditions = set_condition(conditions, "Complete", "True", "CompletionsReached", message)
                if not state.announced:
                    state.announced = True
                    await self.events.record(owner, "Completed", "Job completed")
                state.completion_time = state.completion_time or now_iso()
                status["completionTime"] = state.completion_time
            else:
                active, again = await self._scale(owner, spec, state, active, completions, now)
                deadline = spec.get("activeDeadlineSeconds")
                started = state.started_at or parse_time(status.get("startTime"))
                if deadline is not None and started is not None:
                    left = started + int(deadline) - now + 0.05
                    again = left if again is None else min(again, left)
        status.update({"active": len(active), "ready": sum(1 for p in active if is_ready(p)),
                       "succeeded": state.succeeded, "failed": state.failed,
                       "uncountedTerminatedPods": {}})
        if conditions:
            status["conditions"] = conditions
        await self.write_status(owner, status)
        return again

    def _account(self, uid: str, pods: list[Obj], old_status: Obj) -> _JobState:
        state = self._state.get(uid)
        done = [p for p in pods if finished(p)]
        if state is None:  # first look since this process started: trust what the status counts
            state = self._state[uid] = _JobState(int(old_status.get("succeeded") or 0),
                                                 int(old_status.get("failed") or 0))
            if state.succeeded + state.failed >= len(done):
                state.counted = {str(p["metadata"]["uid"]) for p in done}
        last = {str(p["metadata"]["uid"]): _phase(p) for p in done
                if str(p["metadata"]["uid"]) not in state.deleted_by_us}  # ours ended as we asked
        for pod_uid, phase in self._vanished.pop(uid, {}).items():
            if pod_uid not in state.deleted_by_us:
                last.setdefault(pod_uid, phase if phase in ("Succeeded", "Failed") else "Failed")
        for pod_uid, phase in last.items():
            if pod_uid in state.counted:
                continue
            state.counted.add(pod_uid)
            if phase == "Succeeded":
                state.succeeded += 1
            else:
                state.failed += 1
                state.last_failure = time.time()
        return state

    @staticmethod
    def _failure(spec: Obj, state: _JobState, active: list[Obj], status: Obj,
                 now: float) -> tuple[str, str] | None:
        limit = int(spec.get("backoffLimit", 6))
        on_failure = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy") == "OnFailure"
        restarts = sum(_restarts(p) for p in active) if on_failure else 0
        past_restarts = on_failure and (restarts > 0 if limit == 0 else restarts >= limit)
        if state.failed > limit or past_restarts:
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        deadline = spec.get("activeDeadlineSeconds")
        started = state.started_at or parse_time(status.get("startTime"))
        if deadline is not None and started is not None and now >= started + int(deadline):
            return "DeadlineExceeded", "Job was active longer than specified deadline"
        return None

    async def _scale(self, owner: Obj, spec: Obj, state: _JobState, active: list[Obj],
                     completions: Any, now: float) -> tuple[list[Obj], float | None]:
        parallelism = int(spec.get("parallelism", 1))
        if completions is None:
            wanted = 0 if state.succeeded > 0 else parallelism
        else:
            wanted = max(0, min(parallelism, int(completions) - state.succeeded))
        if len(active) > wanted:
            extra = deletion_order(active)[: len(active) - wanted]
            for pod in extra:
                await self.delete_pod(pod)
            return [p for p in active if p not in extra], None
        if len(active) == wanted:
            return active, None
        if state.failed and self.backoff > 0:
            ready_at = state.last_failure + min(MAX_BACKOFF, self.backoff * 2 ** (state.failed - 1))
            if now < ready_at:
                return active, ready_at - now
        meta = owner["metadata"]
        labels = {"batch.kubernetes.io/controller-uid": meta["uid"],
                  "batch.kubernetes.io/job-name": meta["name"],
                  "controller-uid": meta["uid"], "job-name": meta["name"]}
        template = spec.get("template") or {}
        created = []
        for _ in range(wanted - len(active)):
            body = pod_body(template, owner, generate_name=f"{meta['name']}-", labels=labels)
            created.append(await self.create_pod(owner, body))
        return [*active, *created], None
