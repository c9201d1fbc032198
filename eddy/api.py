"""Typed models of Fluid's `data.fluid.io/v1alpha1` kinds: Dataset, JindoRuntime, DataLoad.

`parse_object(doc)` turns a manifest dict into a model, filling Fluid's defaults, and raises
`ValidationError` listing every problem with its field path and the bad value
(`spec.tieredstore.levels[0].quota: "5Gx" is not a quantity`). The models are frozen dataclasses so
the pure parts (injector, planner, eviction) can take them as plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

GROUP = "data.fluid.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KINDS = ("Dataset", "JindoRuntime", "DataLoad")
PLURALS = {"Dataset": "datasets", "JindoRuntime": "jindoruntimes", "DataLoad": "dataloads"}

MEDIUM_TYPES = ("MEM", "SSD", "HDD")
VOLUME_TYPES = ("emptyDir", "hostPath")
ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")
MOUNT_SCHEMES = ("oss", "s3")
LOAD_POLICIES = ("Once", "Cron", "OnEvent")
READ_WRITE_MODES = ("ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")


# --------------------------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(ValueError):
    """Every problem found in one object, each naming its field path."""

    def __init__(self, errors: list[FieldError], *, kind: str = "", name: str = "") -> None:
        self.errors = errors
        self.kind = kind
        self.name = name
        super().__init__("; ".join(str(e) for e in errors))


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    deletion_timestamp: str | None = None
    finalizers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """`namespace/name`, the identity used in caches and logs."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class EncryptOption:
    """An option whose value lives in a Secret (`encryptOptions[].valueFrom.secretKeyRef`)."""

    name: str
    secret: SecretKeyRef


@dataclass(frozen=True)
class Mount:
    """One `spec.mounts[]` entry, with `sharedOptions`/`sharedEncryptOptions` already merged in."""

    name: str
    mount_point: str
    path: str
    options: Mapping[str, str] = field(default_factory=dict)
    encrypt_options: tuple[EncryptOption, ...] = ()
    read_only: bool = False  # Fluid's default; Eddy serves every mount read-only whatever it says

    @property
    def scheme(self) -> str:
        return self.mount_point.split("://", 1)[0]

    @property
    def bucket(self) -> str:
        return self.mount_point.split("://", 1)[1].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """Key prefix inside the bucket, `""` or ending in `/`."""
        rest = self.mount_point.split("://", 1)[1].split("/", 1)
        inner = rest[1].strip("/") if len(rest) > 1 else ""
        return f"{inner}/" if inner else ""

    @property
    def endpoint(self) -> str:
        return self.options.get(f"fs.{self.scheme}.endpoint", "") or self.options.get("endpoint", "")


@dataclass(frozen=True)
class CacheStates:
    cached: str = "0.00B"
    cache_capacity: str = "0.00B"
    cached_percentage: str = "0.0%"

    def to_dict(self) -> dict[str, str]:
        return {
            "cached": self.cached,
            "cacheCapacity": self.cache_capacity,
            "cachedPercentage": self.cached_percentage,
        }


@dataclass(frozen=True)
class DatasetStatus:
    phase: str = ""
    ufs_total: str = ""
    cache_states: CacheStates = field(default_factory=CacheStates)

    def to_dict(self) -> dict[str, Any]:
        """The `status` object as Fluid spells it (the seed's `kubectl get dataset` columns)."""
        return {"phase": self.phase, "ufsTotal": self.ufs_total, "cacheStates": self.cache_states.to_dict()}


@dataclass(frozen=True)
class Dataset:
    meta: ObjectMeta
    mounts: tuple[Mount, ...]
    access_modes: tuple[str, ...] = ("ReadOnlyMany",)
    status: DatasetStatus = field(default_factory=DatasetStatus)
    # Field paths of Fluid fields present in the manifest that Eddy accepts but does not act on.
    ignored: tuple[str, ...] = ()
    # Worker placement (Fluid: where the cache may live): `spec.nodeAffinity.required` is a NodeSelector.
    node_affinity: Mapping[str, Any] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    kind = "Dataset"

    @property
    def read_write_requested(self) -> bool:
        """A read-write access mode was asked for; Eddy's cache is read-only (a condition says so)."""
        return any(mode in READ_WRITE_MODES for mode in self.access_modes)

    @property
    def secret_names(self) -> tuple[str, ...]:
        """Every Secret the mounts reference, in first-seen order."""
        names: list[str] = []
        for mount in self.mounts:
            for opt in mount.encrypt_options:
                if opt.secret.name not in names:
                    names.append(opt.secret.name)
        return tuple(names)


@dataclass(frozen=True)
class TierLevel:
    mediumtype: str
    path: str
    quota: int
    quota_text: str
    high: float = 0.95
    low: float = 0.7
    volume_type: str = "hostPath"
    # Several disks in one level: `path: /a,/b` with `quotaList: 1Gi,2Gi` (or `quota` split evenly).
    # `path`/`quota` above are the first directory and its quota; the worker makes one store per directory.
    paths: tuple[str, ...] = ()
    quotas: tuple[int, ...] = ()


@dataclass(frozen=True)
class FuseSpec:
    """`spec.fuse`: what the injected sidecar takes from it (per-pod annotations win over these)."""

    image: str = ""
    image_tag: str = ""
    image_pull_policy: str = ""
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)  # Fluid's JindoRuntime env is a string map
    args: tuple[str, ...] = ()

    @property
    def image_ref(self) -> str:
        """`image:imageTag`, `image` alone, or "" when the runtime does not name one."""
        if not self.image:
            return ""
        return f"{self.image}:{self.image_tag}" if self.image_tag else self.image


@dataclass(frozen=True)
class WorkerSpec:
    """`spec.worker`: resources, placement and environment of the worker StatefulSet's pods."""

    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeStatus:
    master_phase: str = ""
    worker_phase: str = ""
    fuse_phase: str = ""
    worker_number_ready: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The `status` object as Fluid spells it (the seed's `kubectl get jindo` columns)."""
        return {
            "masterPhase": self.master_phase,
            "workerPhase": self.worker_phase,
            "fusePhase": self.fuse_phase,
            "workerNumberReady": self.worker_number_ready,
        }


@dataclass(frozen=True)
class JindoRuntime:
    meta: ObjectMeta
    replicas: int = 1
    levels: tuple[TierLevel, ...] = ()
    status: RuntimeStatus = field(default_factory=RuntimeStatus)
    ignored: tuple[str, ...] = ()
    fuse: FuseSpec = field(default_factory=FuseSpec)
    worker: WorkerSpec = field(default_factory=WorkerSpec)

    kind = "JindoRuntime"

    @property
    def mem_quota(self) -> int:
        """Bytes of the MEM tier (0 without one): Fluid raises the worker's memory request to it."""
        return sum(level.quota for level in self.levels if level.mediumtype == "MEM")

    @property
    def capacity_per_worker(self) -> int:
        return sum(level.quota for level in self.levels)


@dataclass(frozen=True)
class LoadTarget:
    path: str = "/"
    replicas: int = 1


@dataclass(frozen=True)
class RunAfter:
    """`spec.runAfter`: the operation that must complete before this DataLoad starts."""

    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class DataLoadStatus:
    phase: str = ""
    duration: str = ""

    def to_dict(self) -> dict[str, str]:
        """The `status` object as Fluid spells it (the seed's `kubectl get dataload` columns)."""
        return {"phase": self.phase, "duration": self.duration}


@dataclass(frozen=True)
class DataLoad:
    meta: ObjectMeta
    dataset_name: str
    dataset_namespace: str
    load_metadata: bool = False
    targets: tuple[LoadTarget, ...] = (LoadTarget(),)
    policy: str = "Once"
    schedule: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    status: DataLoadStatus = field(default_factory=DataLoadStatus)
    ignored: tuple[str, ...] = ()
    ttl_seconds_after_finished: int | None = None
    run_after: RunAfter | None = None

    kind = "DataLoad"


Model = Dataset | JindoRuntime | DataLoad


# The parsers live in eddy/api_parse.py (they import the models above); re-exported as part of this API,
# loaded on first use so that any of the api modules can be imported first.
_PARSERS = ("parse_dataload", "parse_dataset", "parse_object", "parse_runtime")
if TYPE_CHECKING:
    from eddy.api_parse import parse_dataload as parse_dataload
    from eddy.api_parse import parse_dataset as parse_dataset
    from eddy.api_parse import parse_object as parse_object
    from eddy.api_parse import parse_runtime as parse_runtime


def __getattr__(name: str) -> Any:
    if name in _PARSERS:
        from eddy import api_parse

        return getattr(api_parse, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
