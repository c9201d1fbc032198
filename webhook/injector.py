"""The pure injector: a Pod dict, the request's namespace and the Datasets its claims resolve to ->
the patched Pod (and the JSON patch between the two).

No I/O and no clock: everything hard about injection (ordering, native sidecars, mount propagation,
idempotency) lives here and is tested without a server. Per Dataset the pod gets:

- one sidecar `fluid-fuse-N` (Fluid's name: N counts the pod's sidecars, in the order its volumes claim
  the Datasets) running `eddy sidecar mount ...`, privileged (or SYS_ADMIN + /dev/fuse, or neither
  with Fluid's `unprivileged.sidecar.fluid.io/inject: "true"`), with the dataset's
  ConfigMap at /etc/eddy/config and its Secrets at /etc/eddy/secrets/<secret> (references only);
- the workers' *read* token only (the `read` key of `<dataset>-eddy-token`, a Secret volume with
  `items`) at /etc/eddy/worker-token/read: it reads blocks, it cannot purge, warm or write metadata;
- the dataset's volume replaced, under the same name, by an `emptyDir` the sidecar mounts FUSE onto
  (`Bidirectional`) and every container that mounted the claim sees (`HostToContainer`);
- native mode: the sidecar is an init container with `restartPolicy: Always` and a startup probe,
  placed before the first init container that uses the dataset; classic mode: it is first in
  `containers` with a `postStart` that waits for the mount, and the pod's annotations (a downwardAPI
  volume) at /etc/eddy/podinfo, where it sees the controller's stop request once the app containers
  have ended (controller/podfinish.py) so that a Job's pod can complete.

The pod keeps Fluid's marks, which Fluid tooling reads: `done.sidecar.fluid.io/inject`, the
`dataset-namespace.sidecar.fluid.io/<container>` / `dataset-name.sidecar.fluid.io/<container>` labels
and the `fluid.io/datasets-in-use` annotation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eddy.api import Dataset, FuseSpec, JindoRuntime
from eddy.names import (
    CONFIG_FILE_KEY,
    CONFIG_MOUNT_DIR,
    LABEL_ENABLE_INJECTION,
    LABEL_INJECT_DONE,
    PODINFO_ANNOTATIONS,
    PODINFO_DIR,
    SECRETS_MOUNT_DIR,
    SIDECAR_HEALTH_PORT,
    config_map_name,
)
from eddy.wire import TOKEN_DIR, TOKEN_READ_KEY, token_secret_name
from webhook.profiles import (
    InjectorSettings,
    PlatformProfile,
    PodSwitches,
    pod_switches,
    select_profile,
    sidecar_resources,
)

# Fluid's container name (common.FuseContainerName): Fluid tooling finds sidecars by this prefix.
SIDECAR_PREFIX = "fluid-fuse"
VOLUME_PREFIX = "eddy-"  # the sidecar's own volumes: eddy-<dataset>-config, -secret-<name>, -token
LABEL_CONTAINER_DATASET_NAMESPACE = "dataset-namespace.sidecar.fluid.io/"  # + container name
LABEL_CONTAINER_DATASET_NAME = "dataset-name.sidecar.fluid.io/"
ANNOTATION_DATASETS_IN_USE = "fluid.io/datasets-in-use"  # sorted, comma-separated Dataset names
PODINFO_VOLUME = "eddy-podinfo"
FUSE_MOUNTPOINT = "/eddy/mnt"
FUSE_DEVICE = "/dev/fuse"

Pod = dict[str, Any]


@dataclass(frozen=True)
class Injection:
    pod: Pod
    injected: tuple[str, ...]  # `namespace/name` of each Dataset given a sidecar
    warnings: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.injected)


def labels_of(pod: Mapping[str, Any]) -> dict[str, str]:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def requested_profile(pod: Mapping[str, Any]) -> PlatformProfile | None:
    """The profile if this pod asks for injection and has not had it (raises InjectionDenied)."""
    labels = labels_of(pod)
    if labels.get(LABEL_ENABLE_INJECTION) == "false" or labels.get(LABEL_INJECT_DONE) == "true":
        return None
    return select_profile(labels)


def claim_names(pod: Mapping[str, Any]) -> list[str]:
    """Every PVC the pod's volumes claim, in order, without repeats (what the server must resolve)."""
    names: list[str] = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if isinstance(claim, str) and claim not in names:
            names.append(claim)
    return names


def dns_label(*parts: str) -> str:
    """A DNS-1123 label (container/volume name) from parts; long names keep a hash suffix."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:54].rstrip('-')}-{digest}"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = dns_label(name, str(n))
    taken.add(candidate)
    return candidate


def _uses(container: Mapping[str, Any], volume_names: set[str]) -> bool:
    return any(m.get("name") in volume_names for m in container.get("volumeMounts") or [])


def _check_mount_cmd(timeout_s: float) -> list[str]:
    """`eddy sidecar check-mount` waits up to --timeout for the mount to answer (exit 0/1)."""
    return ["eddy", "sidecar", "check-mount", FUSE_MOUNTPOINT, "--timeout", f"{timeout_s:g}"]


def _sidecar(
    name: str,
    dataset: Dataset,
    volume: str,
    config_volume: str,
    secret_volumes: list[tuple[str, str]],
    resources: dict[str, dict[str, str]],
    settings: InjectorSettings,
    health_port: int,
    podinfo_volume: str,
    token_volume: str = "",
    fuse: FuseSpec | None = None,
    switches: PodSwitches = PodSwitches(),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sidecar container and any extra volume it needs (the /dev/fuse hostPath).

    `fuse` (the JindoRuntime's `spec.fuse`) sets the image, pull policy, extra environment and extra
    `eddy sidecar mount` flags; `resources` already holds its resources merged under the annotations.
    `switches` are Fluid's per-pod switches (unprivileged sidecar, no mount check).
    """
    fuse = fuse or FuseSpec()
    command = ["eddy", "sidecar", "mount", "--config", f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE_KEY}"]
    if secret_volumes:
        command += ["--secret-dir", SECRETS_MOUNT_DIR]
    # Sidecars share the pod's network namespace: each gets its own health port.
    command += ["--mountpoint", FUSE_MOUNTPOINT, "--health-port", str(health_port)]
    if settings.sidecar_metrics_address:
        command += ["--metrics-address", settings.sidecar_metrics_address]
    mounts: list[dict[str, Any]] = [
        {"name": volume, "mountPath": FUSE_MOUNTPOINT, "mountPropagation": "Bidirectional"},
        {"name": config_volume, "mountPath": CONFIG_MOUNT_DIR, "readOnly": True},
    ]
    mounts += [
        {"name": vol, "mountPath": f"{SECRETS_MOUNT_DIR}/{secret}", "readOnly": True}
        for vol, secret in secret_volumes
    ]
    if token_volume:  # only the read token (eddy/wire.py): a sidecar can read blocks, never purge
        mounts.append({"name": token_volume, "mountPath": TOKEN_DIR, "readOnly": True})
    extra_volumes: list[dict[str, Any]] = []
    res = {kind: dict(values) for kind, values in resources.items()}
    # Root in the sidecar, whatever the image's USER or the pod's securityContext say: mounting FUSE
    # needs CAP_SYS_ADMIN, which the kernel gives only to uid 0 (a non-root uid loses its capabilities
    # at exec), and a root mount gets `allow_other`, so app containers of any uid can read /data. The
    # privilege is the container's, which this mode grants anyway; the app containers keep theirs.
    root = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}
    if switches.unprivileged:
        # Fluid's unprivileged sidecar: not privileged, no SYS_ADMIN, no hostPath /dev/fuse. The mount
        # works only where the platform gives unprivileged containers FUSE (its device resource, if the
        # operator named one, is still requested); no Bidirectional propagation (privileged only).
        mounts[0].pop("mountPropagation")
        security: dict[str, Any] = {"privileged": False, **root}
        if settings.fuse_device_resource:
            res["requests"][settings.fuse_device_resource] = "1"
            res["limits"][settings.fuse_device_resource] = "1"
    elif settings.fuse_mode == "privileged":
        security = {"privileged": True, **root}
    else:
        # Kubernetes allows Bidirectional propagation only to privileged containers: in this mode the
        # sidecar's mount reaches the app containers only where the platform shares it (docs/webhook.md).
        mounts[0].pop("mountPropagation")
        security = {"privileged": False, "capabilities": {"add": ["SYS_ADMIN"]}, **root}
        if settings.fuse_device_resource:
            res["requests"][settings.fuse_device_resource] = "1"
            res["limits"][settings.fuse_device_resource] = "1"
        else:
            device_volume = dns_label(name, "fuse")
            extra_volumes.append(
                {"name": device_volume, "hostPath": {"path": FUSE_DEVICE, "type": "CharDevice"}}
            )
            mounts.append({"name": device_volume, "mountPath": FUSE_DEVICE})
    env = [{"name": k, "value": v} for k, v in fuse.env.items() if k != "EDDY_DATASET"]
    container: dict[str, Any] = {
        "name": name,
        "image": fuse.image_ref or settings.image,
        "imagePullPolicy": fuse.image_pull_policy or settings.image_pull_policy,
        "command": command,
        "env": [*env, {"name": "EDDY_DATASET", "value": dataset.meta.key}],
        "resources": res,
        "securityContext": security,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.native_sidecar:
        container["restartPolicy"] = "Always"
    if settings.native_sidecar and switches.mount_check:
        container["startupProbe"] = {
            "exec": {"command": _check_mount_cmd(2)},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, settings.mount_timeout_s),
        }
    if not settings.native_sidecar and switches.mount_check:
        # The kubelet starts the next container only when postStart returns: the app sees a ready mount.
        check = _check_mount_cmd(settings.mount_timeout_s)
        container["lifecycle"] = {"postStart": {"exec": {"command": check}}}
    if not settings.native_sidecar:
        command += ["--stop-file", PODINFO_ANNOTATIONS]
        mounts.append({"name": podinfo_volume, "mountPath": PODINFO_DIR, "readOnly": True})
    command += sidecar_flags(fuse.args)
    return container, extra_volumes


def sidecar_flags(args: tuple[str, ...]) -> list[str]:
    """The `spec.fuse.args` Eddy's sidecar takes: its own `--flag[=value]`s (Jindo's `-o` FUSE options
    mean nothing to it; `fuse_arg_warnings` names them)."""
    return [a for a in args if a.startswith("--")]


def fuse_arg_warnings(runtime: JindoRuntime) -> list[str]:
    dropped = [a for a in runtime.fuse.args if not a.startswith("--")]
    if not dropped:
        return []
    return [f"JindoRuntime {runtime.meta.key}: spec.fuse.args {' '.join(dropped)}: not flags of Eddy's "
            "sidecar (eddy sidecar mount --help), ignored"]


def inject(
    pod: Mapping[str, Any],
    namespace: str,
    datasets: Mapping[str, Dataset],
    settings: InjectorSettings,
    runtimes: Mapping[str, JindoRuntime] | None = None,
) -> Injection:
    """The pod with one sidecar per Dataset its volumes claim (`datasets`: claim name -> Dataset).

    `namespace` is the AdmissionReview request's (pods made by controllers often have none). Raises
    InjectionDenied when the trigger label holds an unknown target or the `serverless.fluid.io/platform`
    annotation an unknown platform. `runtimes` (Dataset key ->
    JindoRuntime) gives each sidecar its runtime's `spec.fuse`; per-pod annotations win over it.
    """
    profile = requested_profile(pod)
    if profile is None:
        return Injection(dict(pod), (), ())
    switches = pod_switches(labels_of(pod), (pod.get("metadata") or {}).get("annotations") or {})
    out: Pod = json.loads(json.dumps(pod))  # JSON data: a round trip copies it faster than deepcopy
    spec = out.setdefault("spec", {})
    volumes: list[dict[str, Any]] = spec.get("volumes") or []
    warnings: list[str] = []
    # Group the pod's volumes by the Dataset they claim, in the order the volumes appear.
    by_dataset: dict[str, tuple[Dataset, list[int]]] = {}
    for index, volume in enumerate(volumes):
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        dataset = datasets.get(claim) if isinstance(claim, str) else None
        if dataset is None:
            continue
        if dataset.meta.namespace != namespace:
            warnings.append(f"volume {volume.get('name')}: Dataset {dataset.meta.key} is not in {namespace}")
            continue
        by_dataset.setdefault(dataset.meta.key, (dataset, []))[1].append(index)
    if not by_dataset:
        claims = claim_names(pod)
        what = f"its claims ({', '.join(claims)}) belong to no Dataset" if claims else "it claims no PVC"
        warnings.append(f"pod is labelled for Eddy sidecar injection but {what}; nothing injected")
        return Injection(dict(pod), (), tuple(warnings))

    containers: list[dict[str, Any]] = spec.setdefault("containers", [])
    init_containers: list[dict[str, Any]] = spec.get("initContainers") or []
    taken_containers = {str(c.get("name")) for c in [*containers, *init_containers]}
    taken_volumes = {str(v.get("name")) for v in volumes}
    annotations = (out.get("metadata") or {}).get("annotations") or {}
    classic_sidecars: list[dict[str, Any]] = []
    podinfo_volume = "" if settings.native_sidecar else _unique(PODINFO_VOLUME, taken_volumes)
    by_dataset_done: list[str] = []
    # Fluid numbers sidecars after those a pod already has (multi-round injection): fluid-fuse-N.
    index = sum(1 for n in taken_containers if n.startswith(SIDECAR_PREFIX))
    container_labels: dict[str, str] = {}
    for key, (dataset, indexes) in by_dataset.items():
        primary = str(volumes[indexes[0]]["name"])
        duplicates = {str(volumes[i]["name"]) for i in indexes[1:]}
        dataset_volumes = {primary, *duplicates}
        volumes[indexes[0]] = {"name": primary, "emptyDir": {}}
        for container in [*init_containers, *containers]:
            for mount in container.get("volumeMounts") or []:
                if mount.get("name") in dataset_volumes:
                    mount["name"] = primary  # one FUSE mount per dataset serves every alias volume
                    mount["mountPropagation"] = "HostToContainer"
        while f"{SIDECAR_PREFIX}-{index}" in taken_containers:
            index += 1
        name = f"{SIDECAR_PREFIX}-{index}"
        taken_containers.add(name)
        index += 1
        container_labels.update(_dataset_labels(name, dataset))
        base = dns_label(VOLUME_PREFIX + dataset.meta.name)
        config_volume = _unique(dns_label(base, "config"), taken_volumes)
        secret_volumes = [
            (_unique(dns_label(base, "secret", secret), taken_volumes), secret)
            for secret in dataset.secret_names
        ]
        token_volume = _unique(dns_label(base, "token"), taken_volumes)
        runtime = (runtimes or {}).get(key)
        resources, resource_warnings = sidecar_resources(
            profile, annotations, runtime.fuse.resources if runtime else None)
        warnings += [w for w in resource_warnings if w not in warnings]
        warnings += fuse_arg_warnings(runtime) if runtime else []
        if dataset.read_write_requested:
            warnings.append(f"Dataset {key} asks for {', '.join(dataset.access_modes)}, but Eddy's cache is "
                            "read-only: writes under its mount fail with EROFS")
        sidecar, extra_volumes = _sidecar(
            name,
            dataset,
            primary,
            config_volume,
            secret_volumes,
            resources,
            settings,
            SIDECAR_HEALTH_PORT + len(by_dataset_done),
            podinfo_volume,
            token_volume,
            runtime.fuse if runtime else None,
            switches,
        )
        by_dataset_done.append(key)
        for vol in extra_volumes:
            vol["name"] = _unique(vol["name"], taken_volumes)
        volumes.append({"name": config_volume, "configMap": {"name": config_map_name(dataset.meta.name)}})
        volumes.extend({"name": vol, "secret": {"secretName": secret}} for vol, secret in secret_volumes)
        volumes.append({"name": token_volume, "secret": {
            "secretName": token_secret_name(dataset.meta.name),
            "items": [{"key": TOKEN_READ_KEY, "path": TOKEN_READ_KEY}],
        }})
        volumes.extend(extra_volumes)
        users = [str(c.get("name")) for c in init_containers if _uses(c, dataset_volumes)]
        if settings.native_sidecar:
            first_user = next(
                (i for i, c in enumerate(init_containers) if _uses(c, {primary})), len(init_containers)
            )
            init_containers.insert(first_user, sidecar)
        else:
            classic_sidecars.append(sidecar)
            if users:
                warnings.append(
                    f"init container(s) {', '.join(users)} mount Dataset {key}, but in classic sidecar mode "
                    "the mount is only ready once the app containers start: they will see an empty directory"
                )
    # Remove alias volumes after the loop so indexes above stay valid.
    aliases = {str(volumes[i]["name"]) for _, idx in by_dataset.values() for i in idx[1:]}
    spec["volumes"] = [v for v in volumes if not ("persistentVolumeClaim" in v and v.get("name") in aliases)]
    if classic_sidecars:
        annotations_item = {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
        spec["volumes"].append({"name": podinfo_volume, "downwardAPI": {"items": [annotations_item]}})
    spec["containers"] = [*classic_sidecars, *containers]
    if init_containers:
        spec["initContainers"] = init_containers
    if switches.unprivileged:
        warnings.append("unprivileged sidecar (no privileged, no SYS_ADMIN): its FUSE mount works only where "
                        "the platform provides FUSE to unprivileged containers (docs/webhook.md)")
    meta = out.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    labels.update(container_labels)
    labels[LABEL_INJECT_DONE] = "true"
    in_use = {d.strip() for d in str(annotations.get(ANNOTATION_DATASETS_IN_USE, "")).split(",") if d.strip()}
    in_use |= {dataset.meta.name for dataset, _ in by_dataset.values()}
    meta["annotations"] = {
        **annotations, **profile.pod_annotations, ANNOTATION_DATASETS_IN_USE: ",".join(sorted(in_use)),
    }
    return Injection(out, tuple(by_dataset), tuple(warnings))


def _dataset_labels(container: str, dataset: Dataset) -> dict[str, str]:
    """Fluid's container -> Dataset labels (`dataset-name.sidecar.fluid.io/fluid-fuse-0: <name>`). A
    Dataset name longer than a label value allows (63) gets no name label rather than an invalid pod."""
    labels = {LABEL_CONTAINER_DATASET_NAMESPACE + container: dataset.meta.namespace}
    if len(dataset.meta.name) <= 63:
        labels[LABEL_CONTAINER_DATASET_NAME + container] = dataset.meta.name
    return labels


def make_patch(original: Mapping[str, Any], patched: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The RFC 6902 JSON patch turning `original` into `patched` (tests apply it with `jsonpatch`).

    Objects are diffed key by key; a list is diffed element-wise when its length is unchanged, gets
    `add` operations when the old list is a prefix of the new one, and is replaced whole otherwise.
    `jsonpatch.make_patch`'s general list diff gives the same result but costs ~0.7 ms per pod, more
    than the rest of an admission together.
    """
    ops: list[dict[str, Any]] = []
    _diff(original, patched, [], ops)
    return ops


def _pointer(parts: list[str | int]) -> str:
    """RFC 6901 JSON pointer (`~` -> `~0`, `/` -> `~1`), as jsonpatch.JsonPointer.from_parts, 10x cheaper."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _diff(old: Any, new: Any, path: list[str | int], ops: list[dict[str, Any]]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": _pointer([*path, key])})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer([*path, key]), "value": value})
            elif old[key] != value:
                _diff(old[key], value, [*path, key], ops)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                _diff(a, b, [*path, index], ops)
    elif isinstance(old, list) and isinstance(new, list) and len(old) < len(new) and new[: len(old)] == old:
        for index in range(len(old), len(new)):
            ops.append({"op": "add", "path": _pointer([*path, index]), "value": new[index]})
    elif old != new or type(old) is not type(new):
        ops.append({"op": "replace", "path": _pointer(path), "value": new})
