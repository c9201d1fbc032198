"""Typed models of Fluid's `data.fluid.io/v1alpha1` kinds: Dataset, JindoRuntime, DataLoad.

`parse_object(doc)` turns a manifest dict into a model, filling Fluid's defaults, and raises
`ValidationError` listing every problem with its field path and the bad value
(`spec.tieredstore.levels[0].quota: "5Gx" is not a quantity`). The models are frozen dataclasses so
the pure parts (injector, planner, eviction) can take them as plain values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from eddy.quantity import parse_quantity

GROUP = "data.fluid.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KINDS = ("Dataset", "JindoRuntime", "DataLoad")
PLURALS = {"Dataset": "datasets", "JindoRuntime": "jindoruntimes", "DataLoad": "dataloads"}

MEDIUM_TYPES = ("MEM", "SSD", "HDD")
VOLUME_TYPES = ("emptyDir", "hostPath")
ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadOnlyOnce", "ReadWriteOncePod")
MOUNT_SCHEMES = ("oss", "s3")
LOAD_POLICIES = ("Once", "Cron")
_PLACEHOLDER = re.compile(r"<[^<>]*>")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


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


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


class _Checker:
    """Collects errors while walking a document, tracking the current field path."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self._path: list[str] = []

    @contextmanager
    def at(self, part: str | int) -> Iterator[None]:
        self._path.append(f"[{part}]" if isinstance(part, int) else part)
        try:
            yield
        finally:
            self._path.pop()

    def path(self, leaf: str = "") -> str:
        text = ""
        for part in [*self._path, leaf] if leaf else self._path:
            text += part if part.startswith("[") or not text else f".{part}"
        return text

    def fail(self, leaf: str, message: str) -> None:
        self.errors.append(FieldError(self.path(leaf), message))

    def mapping(self, doc: Mapping[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
        value = doc.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(key, f"{_show(value)} must be an object")
            return {}
        return dict(value)

    def sequence(self, doc: Mapping[str, Any], key: str, *, required: bool = False) -> list[Any]:
        value = doc.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return []
        if not isinstance(value, list):
            self.fail(key, f"{_show(value)} must be a list")
            return []
        return value

    def string(
        self, doc: Mapping[str, Any], key: str, *, required: bool = False, default: str = ""
    ) -> str:
        value = doc.get(key)
        if value is None or value == "":
            if required:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str):
            self.fail(key, f"{_show(value)} must be a string")
            return default
        if _PLACEHOLDER.search(value):
            self.fail(key, f"{_show(value)} still holds a placeholder; fill in the real value")
        return value

    def boolean(self, doc: Mapping[str, Any], key: str, default: bool) -> bool:
        value = doc.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"{_show(value)} must be true or false")
            return default
        return value

    def integer(self, doc: Mapping[str, Any], key: str, default: int, minimum: int = 0) -> int:
        value = doc.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"{_show(value)} must be an integer")
            return default
        if value < minimum:
            self.fail(key, f"{value} must be at least {minimum}")
            return default
        return value

    def choice(self, doc: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
        value = doc.get(key)
        if value is None or value == "":
            return default
        if value not in choices:
            self.fail(key, f"{_show(value)} is not one of {', '.join(choices)}")
            return default
        return str(value)

    def string_map(self, doc: Mapping[str, Any], key: str) -> dict[str, str]:
        raw = self.mapping(doc, key)
        out: dict[str, str] = {}
        with self.at(key):
            for k, v in raw.items():
                if isinstance(v, bool) or not isinstance(v, str | int | float):
                    self.fail(str(k), f"{_show(v)} must be a string")
                    continue
                if isinstance(v, str) and _PLACEHOLDER.search(v):
                    self.fail(str(k), f"{_show(v)} still holds a placeholder; fill in the real value")
                out[str(k)] = str(v)
        return out


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
    read_only: bool = True

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


@dataclass(frozen=True)
class DatasetStatus:
    phase: str = ""
    ufs_total: str = ""
    cache_states: CacheStates = field(default_factory=CacheStates)


@dataclass(frozen=True)
class Dataset:
    meta: ObjectMeta
    mounts: tuple[Mount, ...]
    access_modes: tuple[str, ...] = ("ReadOnlyMany",)
    status: DatasetStatus = field(default_factory=DatasetStatus)

    kind = "Dataset"

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


@dataclass(frozen=True)
class RuntimeStatus:
    master_phase: str = ""
    worker_phase: str = ""
    fuse_phase: str = ""
    worker_number_ready: int = 0


@dataclass(frozen=True)
class JindoRuntime:
    meta: ObjectMeta
    replicas: int = 1
    levels: tuple[TierLevel, ...] = ()
    status: RuntimeStatus = field(default_factory=RuntimeStatus)

    kind = "JindoRuntime"

    @property
    def capacity_per_worker(self) -> int:
        return sum(level.quota for level in self.levels)


@dataclass(frozen=True)
class LoadTarget:
    path: str = "/"
    replicas: int = 1


@dataclass(frozen=True)
class DataLoadStatus:
    phase: str = ""
    duration: str = ""


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

    kind = "DataLoad"


Model = Dataset | JindoRuntime | DataLoad


# --------------------------------------------------------------------------------------------- parsing
def _meta(c: _Checker, doc: Mapping[str, Any], default_namespace: str) -> ObjectMeta:
    raw = c.mapping(doc, "metadata", required=True)
    with c.at("metadata"):
        name = c.string(raw, "name", required=True)
        if name and not _DNS_SUBDOMAIN.match(name):
            c.fail("name", f"{_show(name)} must be a lowercase DNS name")
        namespace = c.string(raw, "namespace", default=default_namespace)
        if namespace and not _DNS_LABEL.match(namespace):
            c.fail("namespace", f"{_show(namespace)} must be a lowercase DNS label")
        labels = c.string_map(raw, "labels")
        annotations = c.string_map(raw, "annotations")
        finalizers = raw.get("finalizers") or []
    return ObjectMeta(
        name=name,
        namespace=namespace,
        labels=labels,
        annotations=annotations,
        uid=str(raw.get("uid") or ""),
        resource_version=str(raw.get("resourceVersion") or ""),
        generation=int(raw.get("generation") or 0),
        deletion_timestamp=raw.get("deletionTimestamp"),
        finalizers=tuple(str(f) for f in finalizers if isinstance(f, str)),
    )


def _encrypt_options(c: _Checker, doc: Mapping[str, Any], key: str) -> list[EncryptOption]:
    out: list[EncryptOption] = []
    for i, item in enumerate(c.sequence(doc, key)):
        with c.at(key), c.at(i):
            if not isinstance(item, Mapping):
                c.fail("", f"{_show(item)} must be an object")
                continue
            name = c.string(item, "name", required=True)
            value_from = c.mapping(item, "valueFrom", required=True)
            with c.at("valueFrom"):
                ref = c.mapping(value_from, "secretKeyRef", required=bool(value_from))
                with c.at("secretKeyRef"):
                    secret = c.string(ref, "name", required=bool(value_from))
                    secret_key = c.string(ref, "key", required=bool(value_from))
            if name and secret and secret_key:
                out.append(EncryptOption(name, SecretKeyRef(secret, secret_key)))
    return out


def _mount(
    c: _Checker,
    raw: Mapping[str, Any],
    shared_options: Mapping[str, str],
    shared_encrypt: list[EncryptOption],
) -> Mount | None:
    name = c.string(raw, "name")
    mount_point = c.string(raw, "mountPoint", required=True)
    ok = bool(mount_point)
    if mount_point and not _PLACEHOLDER.search(mount_point):
        scheme, sep, rest = mount_point.partition("://")
        if not sep or scheme not in MOUNT_SCHEMES:
            c.fail("mountPoint", f"{_show(mount_point)} must start with one of oss://, s3://")
            ok = False
        elif not rest.split("/", 1)[0]:
            c.fail("mountPoint", f"{_show(mount_point)} names no bucket")
            ok = False
    else:
        ok = False
    if not name and mount_point:
        # Fluid names an unnamed mount after the last segment of its mount point.
        name = mount_point.rstrip("/").rsplit("/", 1)[-1] or "mount"
    path = c.string(raw, "path", default=f"/{name}")
    if path and not path.startswith("/"):
        c.fail("path", f"{_show(path)} must be an absolute path")
    options = {**shared_options, **c.string_map(raw, "options")}
    encrypt = {o.name: o for o in shared_encrypt}
    encrypt.update({o.name: o for o in _encrypt_options(c, raw, "encryptOptions")})
    clash = sorted(set(options) & set(encrypt))
    for key in clash:
        c.fail("options", f"{_show(key)} is given both as a plain and an encrypted option")
    read_only = c.boolean(raw, "readOnly", True)
    if not ok:
        return None
    return Mount(name, mount_point, path.rstrip("/") or "/", options, tuple(encrypt.values()), read_only)


def _dataset(c: _Checker, doc: Mapping[str, Any], meta: ObjectMeta) -> Dataset:
    spec = c.mapping(doc, "spec", required=True)
    with c.at("spec"):
        shared_options = c.string_map(spec, "sharedOptions")
        shared_encrypt = _encrypt_options(c, spec, "sharedEncryptOptions")
        raw_mounts = c.sequence(spec, "mounts", required=True)
        if "mounts" in spec and not raw_mounts and isinstance(spec.get("mounts"), list):
            c.fail("mounts", "must list at least one mount")
        mounts: list[Mount] = []
        for i, raw in enumerate(raw_mounts):
            with c.at("mounts"), c.at(i):
                if not isinstance(raw, Mapping):
                    c.fail("", f"{_show(raw)} must be an object")
                    continue
                mount = _mount(c, raw, shared_options, shared_encrypt)
                if mount:
                    mounts.append(mount)
        seen_names: set[str] = set()
        seen_paths: set[str] = set()
        for i, mount in enumerate(mounts):
            if mount.name in seen_names:
                c.fail(f"mounts[{i}].name", f"{_show(mount.name)} is used by another mount")
            if mount.path in seen_paths:
                c.fail(f"mounts[{i}].path", f"{_show(mount.path)} is used by another mount")
            seen_names.add(mount.name)
            seen_paths.add(mount.path)
        modes = c.sequence(spec, "accessModes")
        access_modes: list[str] = []
        for i, mode in enumerate(modes):
            with c.at("accessModes"):
                if mode not in ACCESS_MODES:
                    c.fail(f"[{i}]", f"{_show(mode)} is not one of {', '.join(ACCESS_MODES)}")
                else:
                    access_modes.append(mode)
    status = doc.get("status") or {}
    cache = status.get("cacheStates") or {} if isinstance(status, Mapping) else {}
    return Dataset(
        meta=meta,
        mounts=tuple(mounts),
        access_modes=tuple(access_modes) or ("ReadOnlyMany",),
        status=DatasetStatus(
            phase=str(status.get("phase") or ""),
            ufs_total=str(status.get("ufsTotal") or ""),
            cache_states=CacheStates(
                cached=str(cache.get("cached") or "0.00B"),
                cache_capacity=str(cache.get("cacheCapacity") or "0.00B"),
                cached_percentage=str(cache.get("cachedPercentage") or "0.0%"),
            ),
        ),
    )


def _watermark(c: _Checker, raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        c.fail(key, f"{_show(value)} is not a number between 0 and 1")
        return default
    if not 0 < number <= 1:
        c.fail(key, f"{_show(value)} must be greater than 0 and at most 1")
        return default
    return number


def _runtime(c: _Checker, doc: Mapping[str, Any], meta: ObjectMeta) -> JindoRuntime:
    spec = c.mapping(doc, "spec", required=True)
    levels: list[TierLevel] = []
    with c.at("spec"):
        replicas = c.integer(spec, "replicas", 1, minimum=0)
        store = c.mapping(spec, "tieredstore")
        with c.at("tieredstore"):
            raw_levels = c.sequence(store, "levels")
            for i, raw in enumerate(raw_levels):
                with c.at("levels"), c.at(i):
                    if not isinstance(raw, Mapping):
                        c.fail("", f"{_show(raw)} must be an object")
                        continue
                    medium = c.choice(raw, "mediumtype", MEDIUM_TYPES, "")
                    if "mediumtype" not in raw:
                        c.fail("mediumtype", f"is required (one of {', '.join(MEDIUM_TYPES)})")
                    volume_type = c.choice(raw, "volumeType", VOLUME_TYPES, "hostPath")
                    path = c.string(raw, "path", required=True)
                    if path and not path.startswith("/"):
                        c.fail("path", f"{_show(path)} must be an absolute path")
                    quota_raw = raw.get("quota")
                    quota = 0
                    if quota_raw is None:
                        c.fail("quota", "is required")
                    else:
                        try:
                            quota = parse_quantity(quota_raw)
                            if quota <= 0:
                                c.fail("quota", f"{_show(quota_raw)} must be greater than zero")
                        except ValueError:
                            c.fail("quota", f"{_show(quota_raw)} is not a quantity")
                    high = _watermark(c, raw, "high", 0.95)
                    low = _watermark(c, raw, "low", 0.7)
                    if low >= high:
                        c.fail("low", f"{low} must be below high ({high})")
                    levels.append(
                        TierLevel(medium, path, quota, str(quota_raw), high, low, volume_type)
                    )
            mediums = [level.mediumtype for level in levels]
            for i, medium in enumerate(mediums):
                if medium and mediums.index(medium) != i:
                    c.fail(f"levels[{i}].mediumtype", f"{_show(medium)} appears twice")
    order = {m: i for i, m in enumerate(MEDIUM_TYPES)}
    levels.sort(key=lambda level: order.get(level.mediumtype, 99))
    status = doc.get("status") or {}
    return JindoRuntime(
        meta=meta,
        replicas=replicas,
        levels=tuple(levels),
        status=RuntimeStatus(
            master_phase=str(status.get("masterPhase") or ""),
            worker_phase=str(status.get("workerPhase") or ""),
            fuse_phase=str(status.get("fusePhase") or ""),
            worker_number_ready=int(status.get("workerNumberReady") or 0),
        ),
    )


def _dataload(c: _Checker, doc: Mapping[str, Any], meta: ObjectMeta) -> DataLoad:
    spec = c.mapping(doc, "spec", required=True)
    with c.at("spec"):
        ref = c.mapping(spec, "dataset", required=True)
        with c.at("dataset"):
            ds_name = c.string(ref, "name", required=True)
            ds_namespace = c.string(ref, "namespace", default=meta.namespace)
        load_metadata = c.boolean(spec, "loadMetadata", False)
        targets: list[LoadTarget] = []
        for i, raw in enumerate(c.sequence(spec, "target")):
            with c.at("target"), c.at(i):
                if not isinstance(raw, Mapping):
                    c.fail("", f"{_show(raw)} must be an object")
                    continue
                path = c.string(raw, "path", required=True)
                if path and not path.startswith("/"):
                    c.fail("path", f"{_show(path)} must be an absolute path")
                replicas = c.integer(raw, "replicas", 1, minimum=1)
                targets.append(LoadTarget(path or "/", replicas))
        policy = c.choice(spec, "policy", LOAD_POLICIES, "Once")
        schedule = c.string(spec, "schedule")
        if policy == "Cron":
            if not schedule:
                c.fail("schedule", "is required when policy is Cron")
            elif len(schedule.split()) != 5:
                c.fail("schedule", f"{_show(schedule)} is not a 5-field cron expression")
        options = c.string_map(spec, "options")
    status = doc.get("status") or {}
    return DataLoad(
        meta=meta,
        dataset_name=ds_name,
        dataset_namespace=ds_namespace or meta.namespace,
        load_metadata=load_metadata,
        targets=tuple(targets) or (LoadTarget(),),
        policy=policy,
        schedule=schedule,
        options=options,
        status=DataLoadStatus(
            phase=str(status.get("phase") or ""), duration=str(status.get("duration") or "")
        ),
    )


_PARSERS: dict[str, Callable[[_Checker, Mapping[str, Any], ObjectMeta], Model]] = {
    "Dataset": _dataset,
    "JindoRuntime": _runtime,
    "DataLoad": _dataload,
}


def parse_object(doc: Mapping[str, Any], default_namespace: str = "default") -> Model:
    """Parse one manifest of a Fluid kind; raises ValidationError naming every bad field."""
    c = _Checker()
    if not isinstance(doc, Mapping):
        raise ValidationError([FieldError("", f"{_show(doc)} is not an object")])
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if kind not in _PARSERS:
        raise ValidationError([FieldError("kind", f"{_show(kind)} is not one of {', '.join(KINDS)}")])
    if api_version != API_VERSION:
        c.fail("apiVersion", f"{_show(api_version)} must be {API_VERSION}")
    meta = _meta(c, doc, default_namespace)
    model = _PARSERS[str(kind)](c, doc, meta)
    if c.errors:
        raise ValidationError(c.errors, kind=str(kind), name=meta.name)
    return model


def parse_dataset(doc: Mapping[str, Any], default_namespace: str = "default") -> Dataset:
    model = parse_object(doc, default_namespace)
    if not isinstance(model, Dataset):
        raise ValidationError([FieldError("kind", f"{_show(doc.get('kind'))} must be Dataset")])
    return model


def parse_runtime(doc: Mapping[str, Any], default_namespace: str = "default") -> JindoRuntime:
    model = parse_object(doc, default_namespace)
    if not isinstance(model, JindoRuntime):
        raise ValidationError([FieldError("kind", f"{_show(doc.get('kind'))} must be JindoRuntime")])
    return model


def parse_dataload(doc: Mapping[str, Any], default_namespace: str = "default") -> DataLoad:
    model = parse_object(doc, default_namespace)
    if not isinstance(model, DataLoad):
        raise ValidationError([FieldError("kind", f"{_show(doc.get('kind'))} must be DataLoad")])
    return model
