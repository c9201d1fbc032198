"""The runtime config file the sidecar and the workers read (`eddy.yaml`).

In a cluster the controller writes it into the ConfigMap `<dataset>-eddy-config` and the webhook
mounts that ConfigMap into the sidecar; in local mode the demo writes it to a temp dir. It carries the
Dataset and JindoRuntime manifests (Secret *references* only, never values), where the workers are,
and the block size, so every reader computes the same block owners.

    dataset: {apiVersion: data.fluid.io/v1alpha1, kind: Dataset, metadata: {...}, spec: {...}}
    runtime: {apiVersion: data.fluid.io/v1alpha1, kind: JindoRuntime, ...}   # optional
    workers:
      urls: [http://127.0.0.1:9001]     # explicit list (local mode), or:
      replicas: 2                       # cluster: <dataset>-eddy-worker-<i>.<svc>.<ns>.svc:<port>
      port: 8080
    blockSize: 8388608
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eddy.api import Dataset, JindoRuntime, parse_dataset, parse_runtime
from eddy.blocks import DEFAULT_BLOCK_SIZE
from eddy.names import WORKER_PORT, worker_url


class ConfigError(ValueError):
    """The config file is missing or malformed; the message names the field."""


@dataclass(frozen=True)
class RuntimeConfig:
    dataset: Dataset
    dataset_doc: Mapping[str, Any]
    runtime: JindoRuntime | None = None
    runtime_doc: Mapping[str, Any] | None = None
    worker_urls: tuple[str, ...] = ()
    worker_replicas: int = 0
    worker_port: int = WORKER_PORT
    block_size: int = DEFAULT_BLOCK_SIZE
    extra: Mapping[str, Any] = field(default_factory=dict)

    def workers(self) -> list[str]:
        """Worker base URLs: the explicit list, else the StatefulSet's stable DNS names."""
        if self.worker_urls:
            return list(self.worker_urls)
        meta = self.dataset.meta
        return [
            worker_url(meta.name, meta.namespace, i, self.worker_port) for i in range(self.worker_replicas)
        ]

    def to_dict(self) -> dict[str, Any]:
        workers: dict[str, Any] = {"port": self.worker_port}
        if self.worker_urls:
            workers["urls"] = list(self.worker_urls)
        else:
            workers["replicas"] = self.worker_replicas
        doc: dict[str, Any] = {
            "dataset": dict(self.dataset_doc),
            "workers": workers,
            "blockSize": self.block_size,
        }
        if self.runtime_doc is not None:
            doc["runtime"] = dict(self.runtime_doc)
        doc.update(self.extra)
        return doc

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.dump())


def _strip_status(doc: Mapping[str, Any]) -> dict[str, Any]:
    meta = doc.get("metadata") or {}
    return {
        "apiVersion": doc.get("apiVersion"),
        "kind": doc.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta},
        "spec": doc.get("spec") or {},
    }


def build_config(
    dataset_doc: Mapping[str, Any],
    runtime_doc: Mapping[str, Any] | None = None,
    *,
    worker_urls: tuple[str, ...] = (),
    worker_replicas: int | None = None,
    worker_port: int = WORKER_PORT,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> RuntimeConfig:
    """A config from manifests; replicas default to the runtime's."""
    ds_doc = _strip_status(dataset_doc)
    rt_doc = _strip_status(runtime_doc) if runtime_doc is not None else None
    # The config holds manifests the controller (or `eddy demo`) already checked against the schema.
    dataset = parse_dataset(ds_doc, check_schema=False)
    runtime = parse_runtime(rt_doc, check_schema=False) if rt_doc is not None else None
    replicas = worker_replicas if worker_replicas is not None else (runtime.replicas if runtime else 0)
    return RuntimeConfig(
        dataset, ds_doc, runtime, rt_doc, tuple(worker_urls), replicas, worker_port, block_size
    )


def parse_config(doc: Mapping[str, Any]) -> RuntimeConfig:
    if not isinstance(doc, Mapping) or "dataset" not in doc:
        raise ConfigError("config: 'dataset' is required")
    workers = doc.get("workers") or {}
    if not isinstance(workers, Mapping):
        raise ConfigError("config: 'workers' must be an object")
    urls = workers.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError("config: 'workers.urls' must be a list of URLs")
    try:
        block_size = int(doc.get("blockSize", DEFAULT_BLOCK_SIZE))
        port = int(workers.get("port", WORKER_PORT))
        replicas = workers.get("replicas")
        replicas_n = int(replicas) if replicas is not None else None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: a number is malformed: {exc}") from None
    if block_size <= 0:
        raise ConfigError("config: 'blockSize' must be positive")
    config = build_config(
        doc["dataset"],
        doc.get("runtime"),
        worker_urls=tuple(urls),
        worker_replicas=replicas_n,
        worker_port=port,
        block_size=block_size,
    )
    extra = {k: v for k, v in doc.items() if k not in ("dataset", "runtime", "workers", "blockSize")}
    return RuntimeConfig(**{**config.__dict__, "extra": extra})


def load_config(path: str | Path) -> RuntimeConfig:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(doc)
