"""Parsing and validation of Fluid manifests into the models of `eddy.api`.

One `_Checker` (eddy/api_check.py) walks a document, tracking the field path, and collects every
problem before `ValidationError` is raised, so a user fixes a manifest in one pass. Fluid's defaults are
filled here; JindoRuntime's parsing is in eddy/api_parse_runtime.py. The CRD schema (Fluid's plus
Eddy's rules, eddy/crds.py) is checked too, so `eddy validate` agrees with `kubectl apply`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from eddy.api import (
    ACCESS_MODES,
    API_VERSION,
    KINDS,
    LOAD_POLICIES,
    MOUNT_SCHEMES,
    CacheStates,
    DataLoad,
    DataLoadStatus,
    Dataset,
    DatasetStatus,
    EncryptOption,
    FieldError,
    JindoRuntime,
    LoadTarget,
    Model,
    Mount,
    ObjectMeta,
    RunAfter,
    SecretKeyRef,
    ValidationError,
)
from eddy.api_check import (
    _BUCKET,
    _DNS_LABEL,
    _DNS_SUBDOMAIN,
    _PLACEHOLDER,
    _SECRET_KEY,
    _Checker,
    _declared,
    _int_of,
    _mapping_of,
    _objects,
    _show,
    placeholder_message,
)
from eddy.api_fields import unacted
from eddy.api_parse_runtime import _runtime
from eddy.cron import schedule_problem

__all__ = ["parse_dataload", "parse_dataset", "parse_object", "parse_runtime", "placeholder_message"]

# Field names per section: `handled` ones Eddy reads here; the other fields Fluid's schema declares in
# the section (`_declared`) are accepted and, unless eddy/api_fields.py says another part acts on them,
# noted as not acted on. Anything else is a typo or a field from another kind: an error naming its path.
_TOP_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_DATASET_SPEC = frozenset({"mounts", "accessModes", "sharedOptions", "sharedEncryptOptions", "nodeAffinity",
                           "tolerations"})
_MOUNT = frozenset({"mountPoint", "name", "path", "options", "encryptOptions", "readOnly"})
_ENCRYPT_OPTION = frozenset({"name", "valueFrom"})
_VALUE_FROM = frozenset({"secretKeyRef"})
_SECRET_KEY_REF = frozenset({"name", "key"})
_DATALOAD_SPEC = frozenset({"dataset", "loadMetadata", "target", "policy", "schedule", "options",
                            "ttlSecondsAfterFinished", "runAfter"})
_TARGET_DATASET = frozenset({"name", "namespace"})
_TARGET = frozenset({"path", "replicas"})


def _meta(c: _Checker, doc: Mapping[str, Any], default_namespace: str) -> ObjectMeta:
    raw = c.mapping(doc, "metadata", required=True)
    with c.at("metadata"):
        name = c.string(raw, "name", required=True)
        if name and not (_DNS_SUBDOMAIN.match(name) and len(name) <= 253):
            c.fail("name", f"{_show(name)} must be a lowercase DNS name (a-z, 0-9, '-', '.')")
        namespace = c.string(raw, "namespace", default=default_namespace)
        if namespace and not (_DNS_LABEL.match(namespace) and len(namespace) <= 63):
            c.fail("namespace", f"{_show(namespace)} must be a lowercase DNS label")
        labels = c.string_map(raw, "labels")
        annotations = c.string_map(raw, "annotations")
        finalizers = raw.get("finalizers")
    return ObjectMeta(
        name=name,
        namespace=namespace,
        labels=labels,
        annotations=annotations,
        uid=str(raw.get("uid") or ""),
        resource_version=str(raw.get("resourceVersion") or ""),
        generation=_int_of(raw.get("generation")),
        deletion_timestamp=raw.get("deletionTimestamp"),
        finalizers=tuple(f for f in finalizers if isinstance(f, str))
        if isinstance(finalizers, list)
        else (),
    )


def _encrypt_options(c: _Checker, doc: Mapping[str, Any], key: str) -> list[EncryptOption]:
    out: list[EncryptOption] = []
    for i, item in enumerate(c.sequence(doc, key)):
        with c.at(key), c.at(i):
            if not isinstance(item, Mapping):
                c.fail("", f"{_show(item)} must be an object")
                continue
            c.fields(item, _ENCRYPT_OPTION)
            name = c.string(item, "name", required=True)
            if "valueFrom" not in item:
                c.fail("valueFrom", "is required (valueFrom.secretKeyRef names the Secret and key)")
                continue
            value_from = c.mapping(item, "valueFrom", required=True)
            with c.at("valueFrom"):
                c.fields(value_from, _VALUE_FROM)
                if "secretKeyRef" not in value_from:
                    c.fail("secretKeyRef", "is required")
                    continue
                ref = c.mapping(value_from, "secretKeyRef", required=True)
                with c.at("secretKeyRef"):
                    c.fields(ref, _SECRET_KEY_REF)
                    secret = c.string(ref, "name", required=True)
                    if secret and not _PLACEHOLDER.search(secret) and not _DNS_SUBDOMAIN.match(secret):
                        c.fail("name", f"{_show(secret)} is not a valid Secret name")
                    secret_key = c.string(ref, "key", required=True)
                    if secret_key and not _PLACEHOLDER.search(secret_key) and not _SECRET_KEY.match(
                        secret_key
                    ):
                        c.fail("key", f"{_show(secret_key)} is not a valid Secret key")
            if name and secret and secret_key:
                out.append(EncryptOption(name, SecretKeyRef(secret, secret_key)))
    return out


def _check_mount_point(c: _Checker, mount_point: str) -> bool:
    if not mount_point or _PLACEHOLDER.search(mount_point):
        return False  # missing or placeholder: c.string already said so
    scheme, sep, rest = mount_point.partition("://")
    if not sep or scheme not in MOUNT_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in MOUNT_SCHEMES)
        c.fail("mountPoint", f"{_show(mount_point)} must start with one of {schemes}")
        return False
    bucket = rest.split("/", 1)[0]
    if not bucket:
        c.fail("mountPoint", f"{_show(mount_point)} names no bucket")
        return False
    if not _BUCKET.match(bucket):
        c.fail("mountPoint", f"{_show(mount_point)}: {_show(bucket)} is not a valid bucket name")
        return False
    return True


def _mount(
    c: _Checker,
    raw: Mapping[str, Any],
    shared_options: Mapping[str, str],
    shared_encrypt: list[EncryptOption],
) -> Mount | None:
    c.fields(raw, _MOUNT, _declared("Dataset", "spec.mounts[]"))
    name = c.string(raw, "name")
    mount_point = c.string(raw, "mountPoint", required=True)
    ok = _check_mount_point(c, mount_point)
    if not name and mount_point:
        # Fluid names an unnamed mount after the last segment of its mount point.
        name = mount_point.rstrip("/").rsplit("/", 1)[-1] or "mount"
    if "/" in name:
        c.fail("name", f"{_show(name)} must not contain '/'")
    path = c.string(raw, "path", default=f"/{name}")
    if path and not path.startswith("/"):
        c.fail("path", f"{_show(path)} must be an absolute path")
    options = {**shared_options, **c.string_map(raw, "options")}
    encrypt = {o.name: o for o in shared_encrypt}
    encrypt.update({o.name: o for o in _encrypt_options(c, raw, "encryptOptions")})
    for key in sorted(set(options) & set(encrypt)):
        c.fail("options", f"{_show(key)} is given both as a plain and an encrypted option")
    read_only = c.boolean(raw, "readOnly", False)
    if not ok:
        return None
    return Mount(name, mount_point, path.rstrip("/") or "/", options, tuple(encrypt.values()), read_only)


def _dataset(c: _Checker, doc: Mapping[str, Any], meta: ObjectMeta) -> Dataset:
    spec = c.mapping(doc, "spec", required=True)
    with c.at("spec"):
        c.fields(spec, _DATASET_SPEC, _declared("Dataset", "spec"))
        shared_options = c.string_map(spec, "sharedOptions")
        shared_encrypt = _encrypt_options(c, spec, "sharedEncryptOptions")
        raw_mounts = c.sequence(spec, "mounts", required=True)
        if isinstance(spec.get("mounts"), list) and not raw_mounts:
            c.fail("mounts", "must list at least one mount")
        mounts: list[tuple[int, Mount]] = []
        for i, raw in enumerate(raw_mounts):
            with c.at("mounts"), c.at(i):
                if not isinstance(raw, Mapping):
                    c.fail("", f"{_show(raw)} must be an object")
                    continue
                mount = _mount(c, raw, shared_options, shared_encrypt)
                if mount:
                    mounts.append((i, mount))
        seen_names: set[str] = set()
        seen_paths: set[str] = set()
        for i, mount in mounts:
            if mount.name in seen_names:
                c.fail(f"mounts[{i}].name", f"{_show(mount.name)} is used by another mount")
            if mount.path in seen_paths:
                c.fail(f"mounts[{i}].path", f"{_show(mount.path)} is used by another mount")
            elif mount.path == "/" and len(mounts) > 1:
                c.fail(f"mounts[{i}].path", '"/" is only allowed when the dataset has one mount')
            seen_names.add(mount.name)
            seen_paths.add(mount.path)
        access_modes: list[str] = []
        for i, mode in enumerate(c.sequence(spec, "accessModes")):
            with c.at("accessModes"):
                if not isinstance(mode, str) or mode not in ACCESS_MODES:
                    c.fail(f"[{i}]", f"{_show(mode)} is not one of {', '.join(ACCESS_MODES)}")
                elif mode not in access_modes:
                    access_modes.append(mode)
    status = _mapping_of(doc.get("status"))
    cache = _mapping_of(status.get("cacheStates"))
    return Dataset(
        meta=meta,
        mounts=tuple(m for _, m in mounts),
        access_modes=tuple(access_modes) or ("ReadOnlyMany",),
        node_affinity=dict(_mapping_of(spec.get("nodeAffinity"))),
        tolerations=_objects(spec.get("tolerations")),
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


def _schedule(c: _Checker, spec: Mapping[str, Any], policy: str) -> str:
    schedule = c.string(spec, "schedule")
    if policy != "Cron":
        return schedule
    if not schedule:
        c.fail("schedule", 'is required when policy is Cron (e.g. "0 * * * *")')
    elif not _PLACEHOLDER.search(schedule) and (problem := schedule_problem(schedule)) is not None:
        c.fail("schedule", problem)
    return schedule


def _run_after(c: _Checker, spec: Mapping[str, Any], namespace: str) -> RunAfter | None:
    raw = c.mapping(spec, "runAfter")
    if not raw:
        return None
    with c.at("runAfter"):
        kind = c.string(raw, "kind", required=True)
        name = c.string(raw, "name", required=True)
        if kind and kind != "DataLoad":
            # Eddy serves DataLoad only; another kind's operation would never complete here.
            c.fail("kind", f"{_show(kind)}: Eddy runs DataLoads only, so it can wait for a DataLoad only")
        ref_namespace = c.string(raw, "namespace", default=namespace)
    return RunAfter(kind, name, ref_namespace or namespace)


def _dataload(c: _Checker, doc: Mapping[str, Any], meta: ObjectMeta) -> DataLoad:
    spec = c.mapping(doc, "spec", required=True)
    with c.at("spec"):
        c.fields(spec, _DATALOAD_SPEC, _declared("DataLoad", "spec"))
        ref = c.mapping(spec, "dataset", required=True)
        with c.at("dataset"):
            c.fields(ref, _TARGET_DATASET)
            ds_name = c.string(ref, "name", required=True)
            if ds_name and not _PLACEHOLDER.search(ds_name) and not _DNS_SUBDOMAIN.match(ds_name):
                c.fail("name", f"{_show(ds_name)} must be a lowercase DNS name")
            ds_namespace = c.string(ref, "namespace", default=meta.namespace)
        load_metadata = c.boolean(spec, "loadMetadata", False)
        targets: list[LoadTarget] = []
        for i, raw in enumerate(c.sequence(spec, "target")):
            with c.at("target"), c.at(i):
                if not isinstance(raw, Mapping):
                    c.fail("", f"{_show(raw)} must be an object")
                    continue
                c.fields(raw, _TARGET)
                path = c.string(raw, "path", required=True)
                if path and not path.startswith("/"):
                    c.fail("path", f"{_show(path)} must be an absolute path inside the dataset")
                replicas = c.integer(raw, "replicas", 1, minimum=1)
                targets.append(LoadTarget(path or "/", replicas))
        policy = c.choice(spec, "policy", LOAD_POLICIES, "Once")
        schedule = _schedule(c, spec, policy)
        options = c.string_map(spec, "options")
        ttl = spec.get("ttlSecondsAfterFinished")
        ttl_seconds = c.integer(spec, "ttlSecondsAfterFinished", 0, minimum=0) if ttl is not None else None
        run_after = _run_after(c, spec, meta.namespace)
    status = _mapping_of(doc.get("status"))
    return DataLoad(
        meta=meta,
        dataset_name=ds_name,
        dataset_namespace=ds_namespace or meta.namespace,
        load_metadata=load_metadata,
        targets=tuple(targets) or (LoadTarget(),),
        policy=policy,
        schedule=schedule,
        options=options,
        ttl_seconds_after_finished=ttl_seconds,
        run_after=run_after,
        status=DataLoadStatus(
            phase=str(status.get("phase") or ""), duration=str(status.get("duration") or "")
        ),
    )


_PARSERS: dict[str, Callable[[_Checker, Mapping[str, Any], ObjectMeta], Model]] = {
    "Dataset": _dataset,
    "JindoRuntime": _runtime,
    "DataLoad": _dataload,
}


def parse_object(doc: Mapping[str, Any], default_namespace: str = "default", *, check_schema: bool = True
                 ) -> Model:
    """Parse one manifest of a Fluid kind; raises ValidationError naming every bad field.

    `check_schema=False` skips the CRD schema (for documents already checked: the runtime config the
    controller wrote, read by every sidecar and worker at start, which then need not load jsonschema
    and CEL)."""
    c = _Checker()
    if not isinstance(doc, Mapping):
        raise ValidationError([FieldError("", f"{_show(doc)} is not an object")])
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if kind not in _PARSERS:
        raise ValidationError([FieldError("kind", f"{_show(kind)} is not one of {', '.join(KINDS)}")])
    if api_version != API_VERSION:
        c.fail("apiVersion", f"{_show(api_version)} must be {API_VERSION}")
    c.fields(doc, _TOP_FIELDS)
    meta = _meta(c, doc, default_namespace)
    model = _PARSERS[str(kind)](c, doc, meta)
    errors = _merge(c.errors, _schema_errors(str(kind), doc) if check_schema else [])
    if errors:
        raise ValidationError(errors, kind=str(kind), name=meta.name)
    return replace(model, ignored=tuple(unacted(str(kind), doc)))


def _schema_errors(kind: str, doc: Mapping[str, Any]) -> list[FieldError]:
    """What the CRD (Fluid's schema with Eddy's rules, CEL included) refuses; status is not checked."""
    from eddy.api_schema import schema_errors
    from eddy.crds import register_all

    register_all()
    return schema_errors(kind, {k: v for k, v in doc.items() if k != "status"})


def _overlaps(a: str, b: str) -> bool:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return longer == shorter or (longer.startswith(shorter) and longer[len(shorter)] in ".[")


def _merge(own: list[FieldError], schema: list[FieldError]) -> list[FieldError]:
    """The parser's errors (friendlier), then the schema's about fields the parser did not report on."""
    return own + [e for e in schema if not any(_overlaps(e.path, o.path) for o in own)]


def parse_dataset(doc: Mapping[str, Any], default_namespace: str = "default", *, check_schema: bool = True
                  ) -> Dataset:
    model = parse_object(doc, default_namespace, check_schema=check_schema)
    if not isinstance(model, Dataset):
        raise ValidationError([FieldError("kind", f"{_show(doc.get('kind'))} must be Dataset")])
    return model


def parse_runtime(doc: Mapping[str, Any], default_namespace: str = "default", *, check_schema: bool = True
                  ) -> JindoRuntime:
    model = parse_object(doc, default_namespace, check_schema=check_schema)
    if not isinstance(model, JindoRuntime):
        raise ValidationError([FieldError("kind", f"{_show(doc.get('kind'))} must be JindoRuntime")])
    return model


def parse_dataload(doc: Mapping[str, Any], default_namespace: str = "default") -> DataLoad:
    model = parse_object(doc, default_namespace)
    if not isinstance(model, DataLoad):
        raise ValidationError([FieldError("kind", f"{_show(doc.get('kind'))} must be DataLoad")])
    return model
