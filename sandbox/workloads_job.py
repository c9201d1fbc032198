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
not add. `completionMode: Indexed`: one pod per pending index, `<job>-<index>-<5 chars>` with the
`batch.kubernetes.io/job-completion-index` annotation and label, hostname `<job>-<index>` and
`JOB_COMPLETION_INDEX`; `succeeded` counts indexes, `completedIndexes` lists them ("0-2,5").
Not modelled: `podFailurePolicy`, `successPolicy`,
`backoffLimitPerIndex`, `podReplacementPolicy`, `ttlSecondsAfterFinished`, the defaulting the API
server does on a Job (selector, template labels).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.resources import Resource
from eddy.retry import RetryPolicy
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
log = logging.getLogger("sandbox.workloads.job")
JOBS = Resource("batch", "v1", "jobs", "Job", has_status=True)
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
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
    indexes: set[int] = field(default_factory=set)  # Indexed: the completion indexes that succeeded


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
        # before a failed pod is replaced: `backoff` doubling per failure, capped, with no jitter (as the
        # Job controller waits)
        self.pod_backoff = RetryPolicy(initial=backoff, maximum=MAX_BACKOFF, jitter=0.0, attempts=None)
        self.interim_conditions = interim_conditions
        self._state: dict[str, _JobState] = {}
        self._vanished: dict[str, dict[str, Obj]] = {}  # job uid -> pod uid -> the pod as it went

    def forget(self, owner: Obj) -> None:
        uid = str(owner["metadata"].get("uid"))
        self._state.pop(uid, None)
        self._vanished.pop(uid, None)

    def pod_event(self, etype: str, pod: Obj) -> None:
        """A pod of ours that is gone: remember its last phase until the next reconcile counts it."""
        ref = controller_of(pod)
        if etype == "DELETED" and ref and ref.get("kind") == "Job":
            self._vanished.setdefault(str(ref.get("uid")), {})[str(pod["metadata"].get("uid"))] = pod
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
        indexed = spec.get("completionMode") == "Indexed"
        state = self._account(uid, pods, old_status, indexed)
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
        if indexed:
            status["completedIndexes"] = format_indexes(state.indexes)
        if conditions:
            status["conditions"] = conditions
        await self.write_status(owner, status)
        return again

    def _account(self, uid: str, pods: list[Obj], old_status: Obj, indexed: bool) -> _JobState:
        state = self._state.get(uid)
        done = [p for p in pods if finished(p)]
        if state is None:  # first look since this process started: trust what the status counts
            state = self._state[uid] = _JobState(int(old_status.get("succeeded") or 0),
                                                 int(old_status.get("failed") or 0))
            state.indexes = parse_indexes(str(old_status.get("completedIndexes") or ""))
            if state.succeeded + state.failed >= len(done):
                state.counted = {str(p["metadata"]["uid"]) for p in done}
        last = {str(p["metadata"]["uid"]): p for p in done}
        for pod_uid, pod in self._vanished.pop(uid, {}).items():
            last.setdefault(pod_uid, pod)  # gone before we looked: its last state decides
        for pod_uid, pod in last.items():
            if pod_uid in state.counted or pod_uid in state.deleted_by_us:  # ours ended as we asked
                continue
            state.counted.add(pod_uid)
            phase, index = _phase(pod), completion_index(pod)
            if phase == "Succeeded" and indexed:
                if index is not None:
                    state.indexes.add(index)
                state.succeeded = len(state.indexes)  # one success per index counts
            elif phase == "Succeeded":
                state.succeeded += 1
            else:
                state.failed += 1
                state.last_failure = time.time()
                why = (pod.get("status") or {}).get("reason") or ""
                log.info("job uid %s: pod %s counts as failed (phase %s %s)", uid,
                         pod["metadata"].get("name"), phase or "-", why)
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
        indexed = spec.get("completionMode") == "Indexed" and completions is not None
        if completions is None:
            wanted = 0 if state.succeeded > 0 else parallelism
        else:
            wanted = max(0, min(parallelism, int(completions) - state.succeeded))
        if indexed:  # a pod for an index that already succeeded is surplus
            done_again = [p for p in active if completion_index(p) in state.indexes]
            for pod in done_again:
                await self.delete_pod(pod)
            active = [p for p in active if p not in done_again]
        if len(active) > wanted:
            extra = deletion_order(active)[: len(active) - wanted]
            for pod in extra:
                await self.delete_pod(pod)
            return [p for p in active if p not in extra], None
        if len(active) == wanted:
            return active, None
        if state.failed and self.pod_backoff.initial > 0:
            ready_at = state.last_failure + self.pod_backoff.step(state.failed)
            if now < ready_at:
                return active, ready_at - now
        meta = owner["metadata"]
        labels = {"batch.kubernetes.io/controller-uid": meta["uid"],
                  "batch.kubernetes.io/job-name": meta["name"],
                  "controller-uid": meta["uid"], "job-name": meta["name"]}
        template = spec.get("template") or {}
        created = []
        if indexed:
            running = {completion_index(p) for p in active}
            pending = [i for i in range(int(completions)) if i not in state.indexes and i not in running]
            for index in pending[: wanted - len(active)]:
                created.append(await self.create_pod(owner, indexed_pod(template, owner, labels, index)))
            return [*active, *created], None
        for _ in range(wanted - len(active)):
            body = pod_body(template, owner, generate_name=f"{meta['name']}-", labels=labels)
            created.append(await self.create_pod(owner, body))
        return [*active, *created], None


def completion_index(pod: Obj) -> int | None:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(INDEX_KEY)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def indexed_pod(template: Obj, owner: Obj, labels: dict[str, str], index: int) -> Obj:
    """An Indexed Job's pod: `<job>-<index>-<5 chars>`, the index as annotation and label, hostname
    `<job>-<index>`, and `JOB_COMPLETION_INDEX` from the annotation in every container."""
    name = owner["metadata"]["name"]
    body = pod_body(template, owner, generate_name=f"{name}-{index}-",
                    labels={**labels, INDEX_KEY: str(index)}, annotations={INDEX_KEY: str(index)},
                    spec_overrides={"hostname": f"{name}-{index}"})
    env = {"name": "JOB_COMPLETION_INDEX",
           "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}}
    for key in ("initContainers", "containers"):
        for container in body["spec"].get(key) or []:
            container["env"] = [*(e for e in container.get("env") or [] if e.get("name") != env["name"]), env]
    return body


def parse_indexes(text: str) -> set[int]:
    """`"0-2,5"` -> {0, 1, 2, 5} (status.completedIndexes)."""
    found: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        with contextlib.suppress(ValueError):
            found.update(range(int(low), int(high or low) + 1))
    return found


def format_indexes(indexes: set[int]) -> str:
    """{0, 1, 2, 5} -> `"0-2,5"`."""
    parts: list[str] = []
    for index in sorted(indexes):
        if parts and index == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
    return ",".join(parts)
