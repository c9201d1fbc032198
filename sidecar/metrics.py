"""The sidecar's Prometheus metrics (one registry per sidecar, served on `/metrics`)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CountSince(Collector):
    """A counter whose value is copied from a count kept elsewhere (the block cache's hits and misses),
    so it is exposed as a counter (`<name>_total`) while the reader keeps calling `.set(n)` on it."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._value = 0.0
        registry.register(self)

    def set(self, value: float) -> None:
        self._value = max(self._value, float(value))  # monotonic, as a counter must be

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self._value)


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.fetched_bytes = Counter(
            "eddy_sidecar_fetched_bytes", "Block bytes fetched, by source (worker or store)", ["source"],
            registry=r,
        )
        self.fetches = Counter("eddy_sidecar_fetches", "Block fetches, by source", ["source"], registry=r)
        self.fallbacks = Counter(
            "eddy_sidecar_fallbacks",
            "Times a worker could not serve a block and the next owner or the store was tried, by reason",
            ["reason"],
            registry=r,
        )
        self.read_bytes = Counter("eddy_sidecar_read_bytes", "Bytes returned to readers", registry=r)
        self.read_seconds = Histogram(
            "eddy_sidecar_read_seconds", "Latency of one read request", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.fetch_seconds = Histogram(
            "eddy_sidecar_block_fetch_seconds", "Latency of one block fetch, by source", ["source"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.read_errors = Counter("eddy_sidecar_read_errors", "Reads that failed, by reason", ["reason"],
                                   registry=r)
        self.changed_objects = Counter(
            "eddy_sidecar_changed_objects", "Objects found replaced (ETag mismatch) during a read", registry=r
        )
        self.heads = Counter(
            "eddy_sidecar_heads", "HEAD requests sent to learn an object's current version (coalesced)",
            registry=r,
        )
        self.dir_lists = Counter(
            "eddy_sidecar_dir_lists",
            "LIST pages sent to revalidate a directory's files at once on open (coalesced)", registry=r,
        )
        self.cache_hits = CountSince("eddy_sidecar_cache_hits", "Block cache hits", r)
        self.cache_misses = CountSince("eddy_sidecar_cache_misses", "Block cache misses", r)
        self.cache_bytes = Gauge("eddy_sidecar_cache_bytes", "Bytes held in the block cache", registry=r)
        self.workers_down = Gauge("eddy_sidecar_workers_down", "Workers currently skipped as down",
                                  registry=r)
        self.walkahead_blocks = Counter(
            "eddy_sidecar_walkahead_blocks",
            "Blocks prefetched for the next files of a directory read in order (cp -r, tar)", registry=r,
        )
        self.files = Gauge("eddy_sidecar_files", "Files in the mounted namespace", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if absent); for tests, the bench and logs."""
        return self.registry.get_sample_value(name, labels) or 0.0
