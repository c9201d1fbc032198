"""Where the sidecar's settings come from: the injected `eddy.yaml`, or manifest files, plus flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eddy.config import ConfigError, RuntimeConfig, build_config, load_config
from eddy.manifests import ManifestError, documents
from eddy.names import CONFIG_FILE_KEY, CONFIG_MOUNT_DIR
from sidecar.readahead import MiB, ReadaheadPolicy
from sidecar.walkahead import WalkaheadPolicy


@dataclass(frozen=True)
class ReaderOptions:
    """Tuning of the data path (flags override the defaults)."""

    cache_bytes: int = 64 * MiB
    readahead: ReadaheadPolicy = field(default_factory=ReadaheadPolicy)
    walkahead: WalkaheadPolicy = field(default_factory=WalkaheadPolicy)
    prefetch_budget: int = 32 * MiB
    worker_timeout: float = 10.0
    breaker_cooldown: float = 5.0
    listing_ttl: float = 300.0
    # An open HEADs the object when its version was last confirmed longer ago than this (s; < 0: never).
    metadata_ttl: float = 5.0
    use_snapshot: bool = True
    # CRC32C of each block received from a worker. Off by default: the worker checks every block's
    # CRC32C before serving it and TCP checksums the transfer; checking again costs a copy per block.
    verify_transfer: bool = True  # end to end: a MEM worker does not re-check blocks on time

    def bounded(self) -> ReaderOptions:
        """Keep read-ahead inside the cache: a prefetched block must survive until it is read."""
        cap = min(self.readahead.cap, self.cache_bytes // 2)
        budget = min(self.prefetch_budget, max(cap, 0))
        initial = min(self.readahead.initial, cap) if cap > 0 else 0
        walk = replace(self.walkahead, window_bytes=min(self.walkahead.window_bytes, self.cache_bytes // 4))
        return replace(self, readahead=replace(self.readahead, cap=cap, initial=initial),
                       prefetch_budget=budget, walkahead=walk)


def _docs(paths: Sequence[str]) -> list[dict[str, Any]]:
    try:
        return [d for path in paths for d in documents(path) if isinstance(d, dict)]
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None


def load_settings(
    config: str | None,
    manifests: Sequence[str] = (),
    *,
    workers: Sequence[str] = (),
    no_workers: bool = False,
    block_size: int | None = None,
) -> RuntimeConfig:
    """The runtime config from `--config` (default: the in-pod path) or `-f` manifests, with overrides.

    With manifests and no `--worker`, there are no workers (local mode has no cluster DNS names).
    """
    if manifests:
        docs = _docs(manifests)
        datasets = [d for d in docs if d.get("kind") == "Dataset"]
        runtimes = [d for d in docs if d.get("kind") == "JindoRuntime"]
        if len(datasets) != 1:
            where = ", ".join(manifests)
            raise ConfigError(f"expected exactly one Dataset in {where}, found {len(datasets)}")
        cfg = build_config(datasets[0], runtimes[0] if runtimes else None, worker_replicas=0)
    else:
        cfg = load_config(config or f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE_KEY}")
    if no_workers:
        cfg = replace(cfg, worker_urls=(), worker_replicas=0)
    elif workers:
        cfg = replace(cfg, worker_urls=tuple(workers))
    if block_size:
        cfg = replace(cfg, block_size=block_size)
    return cfg
