"""The objects a Dataset and its JindoRuntime stand for: a pure function of the two manifests.

`desired_objects(dataset_doc, runtime_doc, settings)` returns plain dicts ready to apply:

- PersistentVolume `<ns>-<name>` and PVC `<name>` with Fluid's labels, so the webhook recognises a
  claim on the dataset. Serverless nodes have no CSI plugin; the PV's CSI source (driver
  `eddy.fluid.io`) is never mounted because the webhook rewires the pod's volume to the FUSE sidecar.
- the ConfigMap `<name>-eddy-config` (key `eddy.yaml`, Secret references only, never values),
- a headless Service and the worker StatefulSet `<name>-eddy-worker` from `replicas` and `tieredstore`,
- the Secret `<name>-eddy-token` with the workers' two random bearer tokens (keys `read`, `admin`;
  created once, never rewritten: the reconciler only creates it) mounted into the workers as files,
- the NetworkPolicy `<name>-eddy-worker`: only Eddy's pods and the pods the webhook injected (label
  `done.sidecar.fluid.io/inject: "true"`, in the Dataset's namespace) reach the workers.

Namespaced objects carry an owner reference to the Dataset; the cluster-scoped PV cannot (Kubernetes
forbids namespaced owners of cluster-scoped objects), so the Dataset's finalizer deletes it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from eddy import names
from eddy.api import Dataset, JindoRuntime, TierLevel, parse_dataset, parse_runtime
from eddy.config import build_config
from eddy.quantity import format_quantity, parse_quantity
from eddy.wire import TOKEN_ADMIN_KEY, TOKEN_DIR, TOKEN_READ_KEY, token_secret_name

CSI_DRIVER = "eddy.fluid.io"
STORAGE_CLASS = "fluid"
PV_CAPACITY = "100Pi"  # what Fluid declares: the dataset's size is not a volume's
MANAGED_BY = "eddy-controller"
CONFIG_HASH_ANNOTATION = "eddy.fluid.io/config-hash"
WORKER_COMPONENT = "eddy-worker"
EDDY_POD_LABELS = {"app.kubernetes.io/part-of": "eddy"}  # the controller's and preloader's pods


@dataclass(frozen=True)
class Settings:
    image: str = "ghcr.io/eddy/eddy:0.1.0"
    worker_port: int = names.WORKER_PORT
    image_pull_policy: str = "IfNotPresent"


def dataset_labels(ds: Dataset) -> dict[str, str]:
    ns, name, uid = ds.meta.namespace, ds.meta.name, ds.meta.uid
    return {
        names.dataset_label(ns, name, uid): "true",
        names.LABEL_DATASET_ID: names.dataset_id(ns, name, uid),
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def worker_selector(ds: Dataset) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": WORKER_COMPONENT,
        names.LABEL_DATASET_ID: names.dataset_id(ds.meta.namespace, ds.meta.name, ds.meta.uid),
    }


def owner_reference(dataset_doc: dict[str, Any]) -> dict[str, Any]:
    meta = dataset_doc.get("metadata") or {}
    return {
        "apiVersion": str(dataset_doc.get("apiVersion")),
        "kind": "Dataset",
        "name": str(meta.get("name")),
        "uid": str(meta.get("uid") or ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, ds: Dataset, owner: dict[str, Any] | None, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if owner is not None:
        meta["namespace"] = ds.meta.namespace
        if owner["uid"]:
            meta["ownerReferences"] = [owner]
    return meta


def persistent_volume(ds: Dataset) -> dict[str, Any]:
    ns, name = ds.meta.namespace, ds.meta.name
    meta = _meta(names.pv_name(ns, name), ds, None, dataset_labels(ds))
    meta["annotations"] = {"CreatedBy": "fluid"}  # what Fluid's tooling looks for on a dataset's PV
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": meta,
        "spec": {
            "accessModes": list(ds.access_modes),
            "capacity": {"storage": PV_CAPACITY},
            "storageClassName": STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": ns, "name": names.pvc_name(name)},
            "csi": {
                "driver": CSI_DRIVER,
                "volumeHandle": names.dataset_id(ns, name),
                "readOnly": True,  # Eddy serves every mount read-only (a read-write ask gets a condition)
                "volumeAttributes": {"dataset": name, "namespace": ns},
            },
        },
    }


def persistent_volume_claim(ds: Dataset, owner: dict[str, Any]) -> dict[str, Any]:
    ns, name = ds.meta.namespace, ds.meta.name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(names.pvc_name(name), ds, owner, dataset_labels(ds)),
        "spec": {
            "accessModes": list(ds.access_modes),
            "resources": {"requests": {"storage": PV_CAPACITY}},
            "storageClassName": STORAGE_CLASS,
            "volumeName": names.pv_name(ns, name),
            "selector": {"matchLabels": {names.dataset_label(ns, name, ds.meta.uid): "true"}},
        },
    }


def config_map(ds: Dataset, dataset_doc: dict[str, Any], runtime_doc: dict[str, Any],
               owner: dict[str, Any], settings: Settings) -> dict[str, Any]:
    config = build_config(dataset_doc, runtime_doc, worker_port=settings.worker_port)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names.config_map_name(ds.meta.name), ds, owner, dataset_labels(ds)),
        "data": {names.CONFIG_FILE_KEY: config.dump()},
    }


def worker_service(ds: Dataset, owner: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.worker_name(ds.meta.name), ds, owner, dataset_labels(ds)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": worker_selector(ds),
            "ports": [{"name": "http", "port": settings.worker_port, "targetPort": "http"}],
        },
    }


def _level_volumes(index: int, level: TierLevel) -> list[tuple[dict[str, Any], str]]:
    """(volume, mount path) per directory of the level (`path: /a,/b` is several disks)."""
    out: list[tuple[dict[str, Any], str]] = []
    paths = level.paths or (level.path,)
    quotas = level.quotas or (level.quota,)
    for j, (path, quota) in enumerate(zip(paths, quotas, strict=False)):
        name = f"tier-{index}-{level.mediumtype.lower()}" + (f"-{j}" if j else "")
        if level.volume_type == "emptyDir":
            size = level.quota_text if len(paths) == 1 else format_quantity(quota)
            empty: dict[str, Any] = {"sizeLimit": size}
            if level.mediumtype == "MEM":
                empty["medium"] = "Memory"
            out.append(({"name": name, "emptyDir": empty}, path))
        else:
            out.append(({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}}, path))
    return out


def worker_resources(rt: JindoRuntime) -> dict[str, Any]:
    """`spec.worker.resources` with the memory request raised to the MEM tier's quota, as Fluid does
    (a worker holds that much in memory; without it the pod is BestEffort and evicted first). A limit
    below the raised request is raised with it."""
    resources: dict[str, Any] = {k: dict(v) for k, v in rt.worker.resources.items() if isinstance(v, dict)}
    mem = rt.mem_quota
    if mem <= 0:
        return resources
    requests = resources.setdefault("requests", {})
    current = requests.get("memory")
    if current is None or _bytes(current) < mem:
        requests["memory"] = format_quantity(mem)
    limits = resources.get("limits") or {}
    if "memory" in limits and _bytes(limits["memory"]) < _bytes(requests["memory"]):
        limits["memory"] = requests["memory"]
    return resources


def _bytes(value: Any) -> int:
    try:
        return parse_quantity(value)
    except (TypeError, ValueError):
        return 0


def _placement(ds: Dataset, rt: JindoRuntime) -> dict[str, Any]:
    """Worker pod placement: `spec.worker.nodeSelector`/`tolerations`, the Dataset's `tolerations` and
    its `nodeAffinity.required` (where the cache may live)."""
    out: dict[str, Any] = {}
    if rt.worker.node_selector:
        out["nodeSelector"] = dict(rt.worker.node_selector)
    tolerations = [dict(t) for t in (*ds.tolerations, *rt.worker.tolerations)]
    if tolerations:
        out["tolerations"] = [t for i, t in enumerate(tolerations) if t not in tolerations[:i]]
    required = ds.node_affinity.get("required")
    if isinstance(required, dict) and required.get("nodeSelectorTerms"):
        out["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    return out


def token_secret(ds: Dataset, owner: dict[str, Any]) -> dict[str, Any]:
    """Fresh random tokens each call: the reconciler creates this Secret once and never patches it."""
    data = {key: base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
            for key in (TOKEN_READ_KEY, TOKEN_ADMIN_KEY)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(token_secret_name(ds.meta.name), ds, owner, dataset_labels(ds)),
        "type": "Opaque",
        "data": data,
    }


def worker_network_policy(ds: Dataset, owner: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Ingress to the workers' port from Eddy's own pods (any namespace) and injected app pods."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(names.worker_name(ds.meta.name), ds, owner, dataset_labels(ds)),
        "spec": {
            "podSelector": {"matchLabels": worker_selector(ds)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": EDDY_POD_LABELS}},
                    {"podSelector": {"matchLabels": {names.LABEL_INJECT_DONE: "true"}}},
                ],
                "ports": [{"protocol": "TCP", "port": settings.worker_port}],
            }],
        },
    }


NONROOT_UID = 65532  # the image's unprivileged user (distroless "nonroot")


def uses_host_path(rt: JindoRuntime) -> bool:
    return any(level.volume_type != "emptyDir" for level in rt.levels)


def worker_security(rt: JindoRuntime) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod, container) securityContext of the workers.

    emptyDir tiers (MEM, and SSD/HDD on emptyDir) run as 65532 with fsGroup 65532: the kubelet makes
    those volumes group-writable for it. A hostPath tier is a node directory the kubelet creates as
    root (0755) and that may hold blocks of an earlier worker, so those workers run as uid 0, still
    with every capability dropped and no privilege escalation (docs/controller.md, "Security")."""
    pod: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if uses_host_path(rt):
        pod["runAsUser"] = 0
    else:
        pod.update({"runAsNonRoot": True, "runAsUser": NONROOT_UID, "runAsGroup": NONROOT_UID,
                    "fsGroup": NONROOT_UID})
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def worker_anti_affinity(ds: Dataset) -> dict[str, Any]:
    """Spread a Dataset's workers across nodes where possible (preferred: never blocks scheduling)."""
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"labelSelector": {"matchLabels": worker_selector(ds)},
                            "topologyKey": "kubernetes.io/hostname"},
    }]}}


def worker_pdb(ds: Dataset, owner: dict[str, Any]) -> dict[str, Any]:
    """At most one worker of a Dataset evicted at a time by a drain: a cache never blocks a drain (one
    replica can still go) but a drain does not empty it at once."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(names.worker_name(ds.meta.name), ds, owner, dataset_labels(ds)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": worker_selector(ds)}},
    }


def worker_statefulset(ds: Dataset, rt: JindoRuntime, config_hash: str, owner: dict[str, Any],
                       settings: Settings) -> dict[str, Any]:
    name = names.worker_name(ds.meta.name)
    labels = {**dataset_labels(ds), **worker_selector(ds)}
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": names.config_map_name(ds.meta.name)}}
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": names.CONFIG_MOUNT_DIR, "readOnly": True}
    ]
    for i, secret in enumerate(ds.secret_names):
        volumes.append({"name": f"secret-{i}", "secret": {"secretName": secret}})
        mounts.append({"name": f"secret-{i}", "mountPath": f"{names.SECRETS_MOUNT_DIR}/{secret}",
                       "readOnly": True})
    volumes.append({"name": "worker-token", "secret": {"secretName": token_secret_name(ds.meta.name)}})
    mounts.append({"name": "worker-token", "mountPath": TOKEN_DIR, "readOnly": True})
    for i, level in enumerate(rt.levels):
        for volume, path in _level_volumes(i, level):
            volumes.append(volume)
            mounts.append({"name": volume["name"], "mountPath": path})
    env = [{"name": k, "value": v} for k, v in sorted(rt.worker.env.items())]
    pod_security, container_security = worker_security(rt)
    container: dict[str, Any] = {
        "name": "worker",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "worker",
            f"--config={names.CONFIG_MOUNT_DIR}/{names.CONFIG_FILE_KEY}",
            f"--secret-dir={names.SECRETS_MOUNT_DIR}",
            f"--port={settings.worker_port}",
            f"--token-dir={TOKEN_DIR}",
        ],
        "ports": [{"name": "http", "containerPort": settings.worker_port}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
        },
        # Patient: a restart empties a MEM tier, so only a worker silent for a minute is restarted.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "securityContext": container_security,
        "volumeMounts": mounts,
    }
    if env:
        container["env"] = env
    resources = worker_resources(rt)
    if resources:
        container["resources"] = resources
    pod_labels = {**rt.worker.labels, **labels}
    placement = _placement(ds, rt)
    placement["affinity"] = {**placement.get("affinity", {}), **worker_anti_affinity(ds)}
    pod_annotations = {**rt.worker.annotations, CONFIG_HASH_ANNOTATION: config_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, ds, owner, labels),
        "spec": {
            "serviceName": name,
            "replicas": rt.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": worker_selector(ds)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": {"securityContext": pod_security, "containers": [container], "volumes": volumes,
                         **placement},
            },
        },
    }


def desired_objects(
    dataset_doc: dict[str, Any], runtime_doc: dict[str, Any], settings: Settings
) -> list[dict[str, Any]]:
    """Every object the pair stands for, in creation order; raises ValidationError for a bad manifest."""
    ds = parse_dataset(dataset_doc)
    rt = parse_runtime(runtime_doc)
    owner = owner_reference(dataset_doc)
    cm = config_map(ds, dataset_doc, runtime_doc, owner, settings)
    # Workers restart when what they serve changes, not when the runtime is merely scaled.
    unscaled = build_config(dataset_doc, {**runtime_doc, "spec": {
        **(runtime_doc.get("spec") or {}), "replicas": 0}}, worker_replicas=0).dump()
    config_hash = hashlib.sha256(unscaled.encode()).hexdigest()[:16]
    return [
        persistent_volume(ds),
        persistent_volume_claim(ds, owner),
        cm,
        token_secret(ds, owner),
        worker_service(ds, owner, settings),
        worker_network_policy(ds, owner, settings),
        worker_pdb(ds, owner),
        worker_statefulset(ds, rt, config_hash, owner, settings),  # last: its pods find config and token
    ]
