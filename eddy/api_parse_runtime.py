"""Parsing a JindoRuntime: tiers (quota, quotaList, several directories, watermarks), fuse, worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eddy.api import (
    MEDIUM_TYPES,
    VOLUME_TYPES,
    FuseSpec,
    JindoRuntime,
    ObjectMeta,
    RuntimeStatus,
    TierLevel,
    WorkerSpec,
)
from eddy.api_check import (
    _PLACEHOLDER,
    _Checker,
    _declared,
    _int_of,
    _mapping_of,
    _objects,
    _show,
    _strings,
    placeholder_message,
)
from eddy.quantity import parse_quantity

_RUNTIME_SPEC = frozenset({"replicas", "tieredstore", "fuse", "worker"})
_TIEREDSTORE = frozenset({"levels"})
_LEVEL = frozenset({"mediumtype", "volumeType", "path", "quota", "quotaList", "high", "low"})


def _watermark(c: _Checker, raw: Mapping[str, Any], key: str) -> float | None:
    """A fraction in (0, 1], given as a string ("0.95") or a number; None if absent or bad."""
    value = raw.get(key)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError
        number = float(value)
    except ValueError:
        c.fail(key, f"{_show(value)} is not a number between 0 and 1")
        return None
    if not 0 < number <= 1:  # also refuses nan
        c.fail(key, f"{_show(value)} must be greater than 0 and at most 1")
        return None
    return number


def _quota(c: _Checker, raw: Mapping[str, Any]) -> int:
    value = raw.get("quota")
    if value is None or value == "":
        c.fail("quota", "is required (a quantity such as 5Gi)")
        return 0
    if isinstance(value, str) and _PLACEHOLDER.search(value):
        c.fail("quota", placeholder_message(value))
        return 0
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        c.fail("quota", f"{_show(value)} must not be negative")
        return 0
    try:
        quota = parse_quantity(value)
    except (TypeError, ValueError):
        if isinstance(value, str) and value.strip().startswith("-"):
            c.fail("quota", f"{_show(value)} must not be negative")
        else:
            c.fail("quota", f"{_show(value)} is not a quantity (e.g. 5Gi, 500Mi, 10G, 1073741824)")
        return 0
    if quota <= 0:
        c.fail("quota", f"{_show(value)} must be greater than zero")
    return quota


def _quota_list(c: _Checker, raw: Mapping[str, Any], count: int) -> list[int]:
    text = c.string(raw, "quotaList")
    quotas: list[int] = []
    for part in text.split(","):
        try:
            quotas.append(parse_quantity(part.strip()))
        except (TypeError, ValueError):
            c.fail("quotaList", f"{_show(text)}: {_show(part)} is not a quantity (e.g. 5Gi)")
            return []
    if any(q <= 0 for q in quotas):
        c.fail("quotaList", f"{_show(text)}: every quota must be greater than zero")
        return []
    if len(quotas) != count:
        c.fail("quotaList", f"{_show(text)} has {len(quotas)} quotas for {count} path(s) in path")
        return []
    return quotas


def _level(c: _Checker, raw: Mapping[str, Any]) -> TierLevel:
    c.fields(raw, _LEVEL, _declared("JindoRuntime", "spec.tieredstore.levels[]"))
    medium = c.choice(raw, "mediumtype", MEDIUM_TYPES, "")
    if raw.get("mediumtype") in (None, ""):
        c.fail("mediumtype", f"is required (one of {', '.join(MEDIUM_TYPES)})")
    volume_type = c.choice(raw, "volumeType", VOLUME_TYPES, "hostPath")
    path = c.string(raw, "path", required=True)
    paths = [p.strip() for p in path.split(",")] if path else []
    if any(not p.startswith("/") for p in paths):
        c.fail("path", f"{_show(path)} must be an absolute path (or several, comma-separated)")
    quotas: list[int] = []
    if raw.get("quotaList") not in (None, ""):
        quotas = _quota_list(c, raw, len(paths))
        quota = sum(quotas)
        if raw.get("quota") not in (None, ""):
            _quota(c, raw)
    elif raw.get("quota") in (None, ""):
        c.fail("quota", "is required (a quantity such as 5Gi), or quotaList")
        quota = 0
    else:
        quota = _quota(c, raw)
        # Fluid splits a level's quota evenly over its directories.
        quotas = [quota // len(paths)] * len(paths) if paths else []
    high = _watermark(c, raw, "high")
    low = _watermark(c, raw, "low")
    bad = any(raw.get(k) not in (None, "") and v is None for k, v in (("high", high), ("low", low)))
    high = 0.95 if high is None else high
    low = 0.7 if low is None else low
    if not bad and low >= high:
        c.fail("low", f"{_show(raw.get('low', low))} must be below high ({_show(raw.get('high', high))})")
    quota_text = str(raw.get("quota")) if raw.get("quota") not in (None, "") else str(raw.get("quotaList"))
    # `path`/`quota` are what Eddy's worker uses: the first directory and its quota (the controller
    # mounts every directory; the worker's tier store takes one directory per level).
    first_quota = quotas[0] if len(quotas) > 1 else quota
    return TierLevel(medium, paths[0] if paths else path, first_quota, quota_text, high, low, volume_type,
                     tuple(paths), tuple(quotas))


def _fuse(spec: Mapping[str, Any]) -> FuseSpec:
    raw = _mapping_of(spec.get("fuse"))
    args = raw.get("args")
    return FuseSpec(
        image=str(raw.get("image") or ""),
        image_tag=str(raw.get("imageTag") or ""),
        image_pull_policy=str(raw.get("imagePullPolicy") or ""),
        resources=dict(_mapping_of(raw.get("resources"))),
        env=_strings(raw.get("env")),
        args=tuple(str(a) for a in args) if isinstance(args, list) else (),
    )


def _worker(spec: Mapping[str, Any]) -> WorkerSpec:
    raw = _mapping_of(spec.get("worker"))
    pod_meta = _mapping_of(raw.get("podMetadata"))
    return WorkerSpec(
        resources=dict(_mapping_of(raw.get("resources"))),
        node_selector=_strings(raw.get("nodeSelector")),
        tolerations=_objects(raw.get("tolerations")),
        env=_strings(raw.get("env")),
        labels={**_strings(pod_meta.get("labels")), **_strings(raw.get("labels"))},
        annotations=_strings(pod_meta.get("annotations")),
    )


def _runtime(c: _Checker, doc: Mapping[str, Any], meta: ObjectMeta) -> JindoRuntime:
    spec = c.mapping(doc, "spec", required=True)
    levels: list[TierLevel] = []
    with c.at("spec"):
        c.fields(spec, _RUNTIME_SPEC, _declared("JindoRuntime", "spec"))
        replicas = c.integer(spec, "replicas", 1, minimum=0)
        store = c.mapping(spec, "tieredstore")
        with c.at("tieredstore"):
            c.fields(store, _TIEREDSTORE)
            for i, raw in enumerate(c.sequence(store, "levels")):
                with c.at("levels"), c.at(i):
                    if not isinstance(raw, Mapping):
                        c.fail("", f"{_show(raw)} must be an object")
                        continue
                    levels.append(_level(c, raw))
            mediums = [level.mediumtype for level in levels]
            for i, medium in enumerate(mediums):
                if medium and mediums.index(medium) != i:
                    c.fail(f"levels[{i}].mediumtype", f"{_show(medium)} appears twice")
    order = {m: i for i, m in enumerate(MEDIUM_TYPES)}
    levels.sort(key=lambda level: order.get(level.mediumtype, 99))
    status = _mapping_of(doc.get("status"))
    return JindoRuntime(
        meta=meta,
        replicas=replicas,
        levels=tuple(levels),
        fuse=_fuse(spec),
        worker=_worker(spec),
        status=RuntimeStatus(
            master_phase=str(status.get("masterPhase") or ""),
            worker_phase=str(status.get("workerPhase") or ""),
            fuse_phase=str(status.get("fusePhase") or ""),
            worker_number_ready=_int_of(status.get("workerNumberReady")),
        ),
    )
