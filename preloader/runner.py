"""What happens to one DataLoad, from the event that starts it to its final status (the consumer,
preloader/consumer.py, gives each DataLoad one task running `DataLoadRunner.handle`).

- `policy: Once` (default): a DataLoad that is not `Complete`/`Failed` runs once. One left `Executing`
  by a previous preloader process is run again, which resumes it: blocks already cached answer
  "cached" and are not fetched again.
- `policy: Cron`: runs at each time of its 5-field `schedule` (on the injected clock), recording
  `lastScheduleTime` and `lastSuccessfulTime`.
- A run finds its target (the Dataset, its runtime's workers, its Secrets), then makes attempts of
  preloader/load.py's `run_load` until one succeeds or `backoffLimit` retries failed, patching
  `status.progress` while each runs and the final status, Events and the Dataset's `cacheStates` after.
  A global semaphore bounds the loads running at once.
- Bad input never raises: a malformed spec, another namespace than the Dataset's, an empty target,
  unreachable workers end `Failed` with a condition saying exactly what; a Dataset that does not exist
  yet keeps the DataLoad `Pending` (condition + Event) and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from eddy.api import DataLoad, Dataset, ValidationError, parse_dataload, parse_dataset, parse_runtime
from eddy.blocks import DEFAULT_BLOCK_SIZE
from eddy.cron import next_run, schedule_problem
from eddy.names import worker_url
from eddy.quantity import parse_quantity
from eddy.retry import RetryPolicy
from eddy.secrets import SecretSource, secret_values
from eddy.wire import TOKEN_ADMIN_KEY, token_secret_name
from eddy.workerclient import WorkerClient
from preloader import status as st
from preloader.dispatch import WORKER_RETRY, Progress
from preloader.load import LoadError, LoadJob, run_load
from preloader.options import DEFAULT_BACKOFF_LIMIT, parse_options
from preloader.schedule import ATTEMPT_BACKOFF, WAIT_BACKOFF, Clock
from preloader.sequence import PredecessorFailed, expire, wait_run_after

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures another attempt may cure (a flaky store or worker); a bad target or an empty path would
# fail the same way again, so those end the DataLoad at once.
RETRIED_REASONS = ("ListingFailed", "WorkersUnreachable", "BlocksFailed")


def backoff_limit(obj: Mapping[str, Any], from_options: int = DEFAULT_BACKOFF_LIMIT) -> int:
    """Retries allowed: the option `backoffLimit` (default 3). A `spec.backoffLimit` is honoured too when
    an object carries one (Fluid's CRD has none and Eddy's validation rejects it, but a future API may)."""
    value = (obj.get("spec") or {}).get("backoffLimit")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return from_options


class PreloaderApi(Protocol):
    """What the consumer needs from the Kubernetes API (preloader/kubeapi.py implements it)."""

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    async def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...

    async def secrets(self, namespace: str, names: tuple[str, ...]) -> SecretSource: ...

    async def delete(self, kind: str, namespace: str, name: str) -> None: ...


@dataclass
class ConsumerSettings:
    max_concurrent_loads: int = 4
    workers: tuple[str, ...] = ()  # override the Dataset's workers (tests, local)
    secrets: SecretSource | None = None  # None: read the Dataset's Secrets through the API
    token: str | None = None  # the workers' admin token; None: from the Dataset's worker-token Secret
    block_size: int = DEFAULT_BLOCK_SIZE
    retry: RetryPolicy = WORKER_RETRY  # each warm request to a worker
    wait_backoff: RetryPolicy = WAIT_BACKOFF  # while the Dataset (runtime, runAfter) does not exist yet
    progress_interval: float = 1.0
    attempt_backoff: RetryPolicy = ATTEMPT_BACKOFF  # between attempts of one DataLoad (backoffLimit)


class _Stop(Exception):
    """The run ended (its final status is written)."""


def dataload_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """`(namespace, name)` of a DataLoad object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def ufs_total_bytes(text: str) -> int:
    """`1.16GiB` (a Dataset's ufsTotal) back to bytes, approximately; 0 if unknown."""
    try:
        return parse_quantity(text.strip().removesuffix("B")) if text else 0
    except ValueError:
        return 0


class DataLoadRunner:
    """Runs DataLoads for the consumer; one instance, shared by every DataLoad's task."""

    def __init__(
        self, api: PreloaderApi, settings: ConsumerSettings, clock: Clock, rng: random.Random
    ) -> None:
        self.api = api
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.runs_started = 0
        self._slots = asyncio.Semaphore(max(1, self.settings.max_concurrent_loads))

    # ------------------------------------------------------------------------------------ handling
    async def handle(self, obj: dict[str, Any]) -> None:
        """Take one DataLoad to its final status (Cron: forever); never raises but CancelledError."""
        ns, name = dataload_key(obj)
        status = obj.get("status") or {}
        conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
        try:
            dl = parse_dataload(obj, default_namespace=ns)
        except ValidationError as exc:
            message = f"invalid DataLoad: {exc}"
            if status.get("phase") != st.FAILED or not any(c.get("message") == message for c in conditions):
                await self._fail(obj, "InvalidSpec", message, None, conditions)
            return
        try:
            if dl.policy == "Cron":
                await self._cron(dl, obj, conditions)
            elif dl.status.phase not in (st.COMPLETE, st.FAILED):  # Once, and OnEvent as Fluid runs it
                await wait_run_after(self.api, dl, obj, self.clock, conditions,
                                     backoff=self.settings.wait_backoff, rng=self.rng)
                with contextlib.suppress(_Stop):
                    await self._run(dl, obj, conditions)
            await expire(self.api, dl, self.clock)  # ttlSecondsAfterFinished
        except PredecessorFailed as exc:
            await self._fail(obj, "RunAfterFailed", str(exc), None, conditions)
        except _Stop:
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad object never takes the consumer down
            log.exception("DataLoad %s/%s failed unexpectedly", ns, name)
            await self._fail(obj, "InternalError", f"the preloader failed: {exc!r}", None, conditions)

    async def _cron(self, dl: DataLoad, obj: dict[str, Any], conditions: list[dict[str, Any]]) -> None:
        problem = schedule_problem(dl.schedule)
        if problem:
            await self._fail(obj, "InvalidSpec", f"invalid DataLoad: spec.schedule: {problem}", None,
                             conditions)
            return
        status = obj.get("status") or {}
        meta = obj.get("metadata") or {}
        last = st.parse_time(status.get("lastScheduleTime")) or st.parse_time(meta.get("creationTimestamp"))
        last = last or self.clock.now()
        while True:
            when = next_run(dl.schedule, last)
            await self.clock.sleep_until(when)
            last = when
            with contextlib.suppress(_Stop):
                await self._run(dl, obj, conditions, scheduled=when)

    async def _patch(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        ns, name = dataload_key(obj)
        try:
            await self.api.patch_status("DataLoad", ns, name, status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("DataLoad %s/%s: status patch failed: %s", ns, name, exc)

    async def _event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            await self.api.event(obj, type_, reason, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("event %s for %s/%s failed: %s", reason, *dataload_key(obj), exc)

    async def _fail(self, obj: Mapping[str, Any], reason: str, message: str, started: datetime | None,
                    conditions: list[dict[str, Any]], progress: Progress | None = None,
                    extra: Mapping[str, Any] | None = None) -> None:
        now = self.clock.now()
        status = st.failed_status(reason, message, started, now, conditions, progress)
        status.update(extra or {})
        conditions[:] = status["conditions"]
        log.warning("DataLoad %s/%s Failed (%s): %s", *dataload_key(obj), reason, message)
        await self._patch(obj, status)
        await self._event(obj, "Warning", reason, message)

    # ----------------------------------------------------------------------------------------- run
    async def _wait_for(self, obj: Mapping[str, Any], kind: str, ns: str, name: str,
                        conditions: list[dict[str, Any]]) -> dict[str, Any]:
        attempt = 0
        while True:
            doc = await self.api.get(kind, ns, name)
            if doc is not None:
                return doc
            attempt += 1
            message = f"waiting for {kind} {ns}/{name}: it does not exist yet"
            if attempt == 1:
                status = st.pending_status(f"{kind}NotFound", message, self.clock.now(), conditions)
                conditions[:] = status["conditions"]
                await self._patch(obj, status)
                await self._event(obj, "Warning", f"{kind}NotFound", message)
            await asyncio.sleep(self.settings.wait_backoff.delay(attempt, self.rng))

    async def _dataset_object(self, dl: DataLoad, obj: dict[str, Any], conditions: list[dict[str, Any]],
                              kind: str, parse: Callable[..., T], invalid: str) -> T:
        """The DataLoad's Dataset (or its runtime: same name and namespace) parsed, once it exists; an
        invalid one fails the DataLoad with reason `invalid`."""
        ns, name = dl.dataset_namespace, dl.dataset_name
        doc = await self._wait_for(obj, kind, ns, name, conditions)
        try:
            return parse(doc, default_namespace=ns)
        except ValidationError as exc:
            await self._fail(obj, invalid, f"{kind} {ns}/{name} is invalid: {exc}", None, conditions)
            raise _Stop from None

    async def _target(self, dl: DataLoad, obj: dict[str, Any], conditions: list[dict[str, Any]],
                      ) -> tuple[Dataset, list[str], SecretSource | None]:
        if dl.dataset_namespace != dl.meta.namespace:
            await self._fail(obj, "NamespaceMismatch",
                             f"DataLoad {dl.meta.key} is in namespace {dl.meta.namespace!r} but its Dataset "
                             f"{dl.dataset_namespace}/{dl.dataset_name} is in {dl.dataset_namespace!r}; "
                             "a DataLoad must be in its Dataset's namespace", None, conditions)
            raise _Stop
        dataset = await self._dataset_object(dl, obj, conditions, "Dataset", parse_dataset, "InvalidDataset")
        workers = list(self.settings.workers)
        if not workers:
            runtime = await self._dataset_object(dl, obj, conditions, "JindoRuntime", parse_runtime,
                                                 "InvalidRuntime")
            meta = dataset.meta
            workers = [worker_url(meta.name, meta.namespace, i) for i in range(runtime.replicas)]
        secrets = self.settings.secrets
        if secrets is None and dataset.secret_names:
            secrets = await self.api.secrets(dataset.meta.namespace, dataset.secret_names)
        return dataset, workers, secrets

    async def _run(self, dl: DataLoad, obj: dict[str, Any], conditions: list[dict[str, Any]],
                   scheduled: datetime | None = None) -> None:
        dataset, workers, secrets = await self._target(dl, obj, conditions)
        async with self._slots:
            await self._load(dl, obj, conditions, dataset, workers, secrets, scheduled)

    async def _load(self, dl: DataLoad, obj: dict[str, Any], conditions: list[dict[str, Any]],
                    dataset: Dataset, workers: list[str], secrets: SecretSource | None,
                    scheduled: datetime | None) -> None:
        self.runs_started += 1
        started = self.clock.now()
        before = obj.get("status") or {}
        if before.get("phase") == st.EXECUTING and not scheduled:
            # Left Executing by a preloader that died (or lost its Lease): this run resumes it. Blocks
            # already warm answer "cached" and are not fetched again; the original startTime stays.
            started = st.parse_time(before.get("startTime")) or started
            log.info("DataLoad %s/%s was Executing: resuming it", *dataload_key(obj))
        cron: dict[str, Any] = {"lastScheduleTime": st.rfc3339(scheduled)} if scheduled else {}
        options = parse_options(dl.options)
        conditions[:] = [c for c in conditions if c.get("type") != st.COND_OPTIONS]
        if options.warnings:
            conditions[:] = st.set_condition(conditions, st.COND_OPTIONS, "True", "UnknownOptions",
                                             "; ".join(options.warnings), started)
            await self._event(obj, "Warning", "UnknownOptions", "; ".join(options.warnings))
        progress = Progress()
        executing = st.executing_status(started, None, started, conditions) | cron
        conditions[:] = executing["conditions"]
        await self._patch(obj, executing)
        await self._event(obj, "Normal", "LoadStarted",
                          f"loading {', '.join(t.path for t in dl.targets)} of Dataset {dataset.meta.key} "
                          f"into {len(workers)} workers")
        job = LoadJob(dl, dataset, workers, secrets, self.settings.block_size, self.settings.retry,
                      rng=self.rng)
        token = await self._token(dataset)
        client = WorkerClient(dataset=dataset.meta.key, token=token)
        limit = backoff_limit(obj, options.backoff_limit)
        failures = 0
        try:
            while True:
                progress = Progress()
                reporter = asyncio.create_task(self._report(obj, progress))
                failure: tuple[str, str] | None = None
                result = None
                try:
                    result = await run_load(job, client, progress=progress)
                    if result.outcome.phase == st.FAILED and result.outcome.reason in RETRIED_REASONS:
                        failure = (result.outcome.reason, result.outcome.message)
                except LoadError as exc:
                    if exc.reason not in RETRIED_REASONS:
                        await self._fail(obj, exc.reason, exc.message, started, conditions, progress, cron)
                        return
                    failure = (exc.reason, exc.message)
                finally:
                    reporter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter
                if failure is None:
                    if failures:
                        conditions[:] = st.set_condition(
                            conditions, st.COND_RETRYING, "False", "Recovered",
                            f"attempt {failures + 1} succeeded after {failures} failed", self.clock.now())
                    break
                failures += 1
                reason, message = failure
                if failures > limit:
                    message = f"{message} (failed {failures} times; backoffLimit {limit})"
                    if result is None:
                        await self._fail(obj, reason, message, started, conditions, progress, cron)
                        return
                    result = dataclasses.replace(
                        result, outcome=dataclasses.replace(result.outcome, message=message))
                    break
                delay = self.settings.attempt_backoff.delay(failures, self.rng)
                note = (f"attempt {failures} of {limit + 1} failed: {message}; retrying in {delay:.1f}s "
                        f"(backoffLimit {limit})")
                conditions[:] = st.set_condition(conditions, st.COND_RETRYING, "True", reason, note,
                                                 self.clock.now())
                log.warning("DataLoad %s/%s: %s", *dataload_key(obj), note)
                await self._patch(obj, {"conditions": list(conditions)})
                await self._event(obj, "Warning", "Retrying", note)
                await asyncio.sleep(delay)
        finally:
            await client.close()
        assert result is not None
        now = self.clock.now()
        final = st.complete_status(result.outcome, result.progress, started, now, conditions)
        conditions[:] = final["conditions"]
        if result.outcome.phase == st.COMPLETE and scheduled:
            cron["lastSuccessfulTime"] = st.rfc3339(now)
        await self._patch(obj, final | cron)
        o = result.outcome
        if o.phase == st.COMPLETE:
            await self._event(obj, "Normal", "LoadComplete", o.message)
            if o.partial:
                await self._event(obj, "Warning", "CacheQuotaTooSmall", o.partial)
        else:
            await self._event(obj, "Warning", o.reason, o.message)
        await self._update_dataset(dataset, result.verification.cached_bytes // max(1, result.replicas),
                                   result.progress.bytes_total if result.whole_dataset else 0)

    async def _token(self, dataset: Dataset) -> str:
        """The admin token of the Dataset's workers, from the Secret the controller made ("" when there is
        none: its workers then run without tokens). Never logged."""
        if self.settings.token is not None:
            return self.settings.token
        name = token_secret_name(dataset.meta.name)
        doc = await self.api.get("Secret", dataset.meta.namespace, name)
        if doc is None:
            return ""
        return secret_values(doc, f"{dataset.meta.namespace}/{name}").get(TOKEN_ADMIN_KEY, "")

    async def _report(self, obj: Mapping[str, Any], progress: Progress) -> None:
        """Patch `status.progress` at most every `progress_interval` seconds while the load runs."""
        last = -1
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            if progress.blocks_done != last:
                last = progress.blocks_done
                await self._patch(obj, {"progress": st.progress_status(progress)})

    async def _update_dataset(self, dataset: Dataset, cached: int, total: int) -> None:
        """Refresh the Dataset's `cacheStates.cached`/`cachedPercentage` (merge patch: only those keys)."""
        if not total:
            total = ufs_total_bytes(dataset.status.ufs_total)
        states = st.dataset_cache_states(cached, total, 0)
        if not total:
            states.pop("cachedPercentage")
        try:
            await self.api.patch_status("Dataset", dataset.meta.namespace, dataset.meta.name,
                                        {"cacheStates": states})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("Dataset %s: cacheStates patch failed: %s", dataset.meta.key, exc)
