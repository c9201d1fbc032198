"""The worker's Prometheus metrics, in a registry of its own (tests run several workers in one process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from worker.tierstore import TierStore

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class _StoreCollector(Collector):
    """Per-level usage and the store's event counts, read from the store at scrape time."""

    def __init__(self, store: TierStore) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        store = self.store
        used = GaugeMetricFamily("eddy_worker_level_used_bytes", "Bytes used on a level", labels=["level"])
        quota = GaugeMetricFamily("eddy_worker_level_quota_bytes", "Quota of a level", labels=["level"])
        blocks = GaugeMetricFamily("eddy_worker_level_blocks", "Blocks held on a level", labels=["level"])
        evictions = CounterMetricFamily(
            "eddy_worker_evictions", "Blocks evicted from a level (demoted or dropped)", labels=["level"]
        )
        for stat in store.stats():
            name = str(stat["mediumtype"])
            used.add_metric([name], float(stat["used"]))
            quota.add_metric([name], float(stat["quota"]))
            blocks.add_metric([name], float(stat["blocks"]))
            evictions.add_metric([name], float(stat["evictions"]))
        yield from (used, quota, blocks, evictions)
        yield CounterMetricFamily("eddy_worker_demotions", "Blocks moved to a lower level",
                                  value=store.demotions)
        yield CounterMetricFamily("eddy_worker_drops", "Blocks dropped from the last level",
                                  value=store.drops)
        yield CounterMetricFamily("eddy_worker_promotions", "Blocks moved up to the first level",
                                  value=store.promotions)
        yield CounterMetricFamily("eddy_worker_corrupt_blocks", "Blocks that failed their checksum",
                                  value=store.corrupt)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.hits = Counter("eddy_worker_block_hits", "Block reads served from a level", ["level"],
                            registry=r)
        self.misses = Counter("eddy_worker_block_misses", "Block reads that were not cached", registry=r)
        self.served_bytes = Counter("eddy_worker_served_bytes", "Block bytes sent to clients", registry=r)
        self.readthrough_bytes = Counter(
            "eddy_worker_readthrough_bytes", "Bytes read from the object store on misses", registry=r
        )
        self.readthrough = Counter(
            "eddy_worker_readthrough_requests", "Object store reads made on misses, by outcome", ["outcome"],
            registry=r,
        )
        self.fast_path = Counter(
            "eddy_worker_readthrough_fast_path", "Reads on misses by the fast path (worker/rangefetch.py): "
            "served, or declined and redone by the object store client", ["result"], registry=r,
        )
        self.cache_write_failures = Counter(
            "eddy_worker_cache_write_failures", "Fetched blocks that could not be kept", ["reason"],
            registry=r,
        )
        self.warmed = Counter("eddy_worker_warm_blocks", "Blocks in warm requests, by result", ["status"],
                              registry=r)
        self.request_seconds = Histogram(
            "eddy_worker_request_seconds", "Request latency by operation and result", ["op", "result"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.readthrough_seconds = Histogram(
            "eddy_worker_readthrough_seconds", "Latency of object store reads on misses",
            buckets=_LATENCY_BUCKETS, registry=r,
        )

    def watch_store(self, store: TierStore) -> None:
        self.registry.register(_StoreCollector(store))
