"""The preloader's Prometheus metrics, served on `--metrics-port` (docs/operations.md, "Metrics").

The consumer is not instrumented inside: `MeteredApi` wraps its Kubernetes side and reads what the
consumer writes anyway (each status patch carries the phase and `status.progress`), and the informer's
events give every DataLoad's phase. So the figures are exactly what `kubectl get dataload` shows:

- `eddy_preloader_dataloads{phase}` (gauge): DataLoads known, by phase (from events and own patches);
- `eddy_preloader_warmed_bytes_total`, `eddy_preloader_warmed_blocks_total{result}` (`fetched`: the
  worker read it from the object store; `cached`: it was already there) — deltas between successive
  progress patches of one run, so a resumed run adds only what it loads;
- `eddy_preloader_dataload_failures_total{reason}`: runs that ended Failed;
- `eddy_preloader_queue_depth` (gauge): DataLoads being handled but not Executing (waiting for a slot,
  a Dataset, a predecessor or a Cron time); `eddy_preloader_executing` (gauge): loads running;
- `eddy_preloader_api_requests_total{verb,resource}`: every Kubernetes API request (the Kubernetes verb,
  `get list watch create update patch delete`, and the resource's plural with its subresource,
  `dataloads/status`), counted by `count_request`, the request hook on the preloader's `Kube`
  (`eddy.kube.metrics`, the same counter as the controller's and the webhook's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from eddy.kube.metrics import api_request_counter
from eddy.secrets import SecretSource
from preloader.consumer import Consumer
from preloader.runner import PreloaderApi

PHASES = ("Pending", "Executing", "Complete", "Failed")
Key = tuple[str, str]


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


class PreloaderMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.warmed_bytes = Counter("eddy_preloader_warmed_bytes",
                                    "Bytes of DataLoad targets now held by every owner worker", registry=r)
        self.warmed_blocks = Counter("eddy_preloader_warmed_blocks",
                                     "Blocks warmed, by result (fetched from the store, or already cached)",
                                     ["result"], registry=r)
        self.failures = Counter("eddy_preloader_dataload_failures",
                                "DataLoad runs that ended Failed, by reason", ["reason"], registry=r)
        self.count_request = api_request_counter("preloader", r)  # the request hook on the preloader's Kube
        self.phases: dict[Key, str] = {}
        self._last: dict[Key, tuple[int, int, int]] = {}  # loadedBytes, fetchedBlocks, alreadyCachedBlocks
        self.consumer: Consumer | None = None
        r.register(self)

    def watch(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def observe_event(self, type_: str, obj: Mapping[str, Any]) -> None:
        key = _key(obj)
        if type_ == "DELETED":
            self.phases.pop(key, None)
            self._last.pop(key, None)
            return
        self.phases[key] = str((obj.get("status") or {}).get("phase") or "Pending")

    def observe_status(self, key: Key, status: Mapping[str, Any]) -> None:
        phase = status.get("phase")
        if isinstance(phase, str) and phase:
            self.phases[key] = phase
        if phase == "Executing" and "progress" not in status:
            self._last[key] = (0, 0, 0)  # a run starts (or resumes): its progress counts from zero
        progress = status.get("progress")
        if isinstance(progress, Mapping):
            now = (int(progress.get("loadedBytes") or 0), int(progress.get("fetchedBlocks") or 0),
                   int(progress.get("alreadyCachedBlocks") or 0))
            last = self._last.get(key, (0, 0, 0))
            if any(n < o for n, o in zip(now, last, strict=True)):
                last = (0, 0, 0)  # a new attempt of the run: its figures restarted
            self.warmed_bytes.inc(now[0] - last[0])
            self.warmed_blocks.labels("fetched").inc(now[1] - last[1])
            self.warmed_blocks.labels("cached").inc(now[2] - last[2])
            self._last[key] = now
        if phase == "Failed":
            reason = next((str(c.get("reason") or "") for c in status.get("conditions") or []
                           if c.get("type") == "Failed"), "")
            self.failures.labels(reason or "Unknown").inc()
        if phase in ("Complete", "Failed"):
            self._last.pop(key, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_phase = GaugeMetricFamily("eddy_preloader_dataloads", "DataLoads known, by phase",
                                     labels=["phase"])
        counts = dict.fromkeys(PHASES, 0)
        for phase in self.phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            by_phase.add_metric([phase], n)
        yield by_phase
        handled = set(self.consumer.entries) if self.consumer is not None else set()
        executing = sum(1 for key in handled if self.phases.get(key) == "Executing")
        yield GaugeMetricFamily("eddy_preloader_executing", "DataLoads loading now", value=executing)
        yield GaugeMetricFamily("eddy_preloader_queue_depth",
                                "DataLoads handled but not loading yet (waiting for a slot, a Dataset, "
                                "a predecessor or a Cron time)", value=len(handled) - executing)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


class MeteredApi:
    """A `PreloaderApi` that reports every DataLoad status it writes to `PreloaderMetrics`."""

    def __init__(self, api: PreloaderApi, metrics: PreloaderMetrics) -> None:
        self.api = api
        self.metrics = metrics

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.api.get(kind, namespace, name)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self.api.patch_status(kind, namespace, name, status)
        if kind == "DataLoad":
            self.metrics.observe_status((namespace, name), status)

    async def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        await self.api.event(obj, type_, reason, message)

    async def secrets(self, namespace: str, names: tuple[str, ...]) -> SecretSource:
        return await self.api.secrets(namespace, names)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        await self.api.delete(kind, namespace, name)


def observed(handler: Callable[[str, Mapping[str, Any]], None], metrics: PreloaderMetrics,
             ) -> Callable[[str, dict[str, Any]], None]:
    """The informer's handler, recording each DataLoad's phase before the consumer sees the event."""

    def on_event(type_: str, obj: dict[str, Any]) -> None:
        metrics.observe_event(type_, obj)
        handler(type_, obj)

    return on_event
