"""AdmissionReview in, AdmissionReview out: the pure decision around the injector.

`parse_review(body)` checks the envelope (HTTP 400 material: `BadReview`); `pod_claims(request)` names
the PVCs the server must resolve; `decide(request, resolved, settings)` returns the response. The server
only adds transport, caches and metrics.

Dataset not yet bound (phase other than `Bound`, or no runtime yet): the pod is INJECTED and ALLOWED with
a warning. The sidecar needs the Dataset's ConfigMap, which the kubelet waits for (the pod stays in
ContainerCreating until the controller writes it), and once running it reads through to the object store
when workers are not ready: the pod works, just without the cache at first. Denying instead would make
every Deployment created together with its Dataset (`kubectl apply -f dir/`) fail and back off.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eddy.api import Dataset, JindoRuntime, parse_dataset, parse_runtime
from webhook.injector import claim_names, inject, make_patch, requested_profile
from webhook.profiles import InjectionDenied, InjectorSettings

API_VERSION = "admission.k8s.io/v1"


def pod_create_review(pod: Mapping[str, Any], namespace: str, uid: str) -> dict[str, Any]:
    """The AdmissionReview the API server sends when `pod` is created in `namespace` (what the demo,
    the benchmark and the tests post to `/mutate`)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": dict(pod),
        },
    }


def pod_of_template(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The Pod a Deployment (or any workload with `spec.template`) would create."""
    template = workload["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]}


class BadReview(ValueError):
    """The body is not an AdmissionReview v1 request (answered with HTTP 400 and this message)."""


@dataclass(frozen=True)
class Resolved:
    """What a claim resolved to: its Dataset, and whether that Dataset is ready to serve."""

    dataset: Dataset
    bound: bool = True
    why_not_bound: str = ""
    runtime: JindoRuntime | None = None  # its spec.fuse shapes the sidecar


@dataclass
class Decision:
    response: dict[str, Any]
    outcome: str  # injected | unchanged | skipped | denied
    warnings: list[str] = field(default_factory=list)


def parse_review(body: bytes) -> dict[str, Any]:
    """The `request` of an AdmissionReview v1 body; BadReview explains what is wrong."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadReview(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadReview("body must be a JSON object (an AdmissionReview)")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise BadReview(
            f"expected apiVersion {API_VERSION} kind AdmissionReview, got "
            f"apiVersion {doc.get('apiVersion')!r} kind {doc.get('kind')!r}"
        )
    request = doc.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("AdmissionReview.request with a uid is required")
    return request


def _is_pod(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind") or {}
    obj = request.get("object")
    return (
        isinstance(kind, Mapping)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and isinstance(obj, dict)
        and isinstance(obj.get("spec"), dict)
    )


def request_namespace(request: Mapping[str, Any]) -> str:
    """The request's namespace; the pod's own, then `default`, only if the request has none."""
    obj = request.get("object") or {}
    meta = obj.get("metadata") or {} if isinstance(obj, Mapping) else {}
    return str(request.get("namespace") or meta.get("namespace") or "default")


def pod_claims(request: Mapping[str, Any]) -> list[str]:
    """The claims to resolve, or [] when the request cannot lead to an injection."""
    if not _is_pod(request) or request.get("operation", "CREATE") != "CREATE":
        return []
    try:
        if requested_profile(request["object"]) is None:
            return []
    except InjectionDenied:
        return []
    return claim_names(request["object"])


def _response(uid: str, allowed: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": allowed, **extra},
    }


def decide(
    request: Mapping[str, Any], resolved: Mapping[str, Resolved], settings: InjectorSettings
) -> Decision:
    uid = str(request["uid"])
    if not _is_pod(request) or request.get("operation", "CREATE") != "CREATE":
        return Decision(_response(uid), "skipped")
    pod: dict[str, Any] = request["object"]
    namespace = request_namespace(request)
    try:
        runtimes = {r.dataset.meta.key: r.runtime for r in resolved.values() if r.runtime is not None}
        injection = inject(pod, namespace, {c: r.dataset for c, r in resolved.items()}, settings, runtimes)
    except InjectionDenied as denied:
        message = str(denied)
        return Decision(_response(uid, False, status={"code": 403, "message": message}), "denied", [message])
    warnings = list(injection.warnings)
    for claim, res in resolved.items():
        if res.dataset.meta.key in injection.injected and not res.bound:
            warnings.append(
                f"Dataset {res.dataset.meta.key} (claim {claim}) is not bound yet ({res.why_not_bound}); "
                "the sidecar waits for its config, then reads from the object store until the cache is ready"
            )
    if not injection.changed:
        extra: dict[str, Any] = {"warnings": warnings} if warnings else {}
        return Decision(_response(uid, **extra), "unchanged", warnings)
    patch = make_patch(pod, injection.pod)
    encoded = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    extra = {"patchType": "JSONPatch", "patch": encoded}
    if warnings:
        extra["warnings"] = warnings
    return Decision(_response(uid, **extra), "injected", warnings)


# A Dataset, its JindoRuntime and a pod that mounts it, as the API server would hand them over: what
# `warm_up` admits once before the server listens.
_WARM_UP_DATASET: dict[str, Any] = {
    "apiVersion": "data.fluid.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "warm-up", "namespace": "default", "resourceVersion": "1"},
    "spec": {"mounts": [{"name": "warm-up", "mountPoint": "s3://warm-up/data", "path": "/"}]},
    "status": {"phase": "Bound"},
}
_WARM_UP_RUNTIME: dict[str, Any] = {
    "apiVersion": "data.fluid.io/v1alpha1",
    "kind": "JindoRuntime",
    "metadata": {"name": "warm-up", "namespace": "default", "resourceVersion": "1"},
    "spec": {"replicas": 1, "tieredstore": {"levels": [
        {"mediumtype": "MEM", "volumeType": "emptyDir", "path": "/dev/shm", "quota": "1Gi",
         "high": "0.95", "low": "0.7"},
    ]}},
}
_WARM_UP_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"generateName": "warm-up-", "labels": {"serverless.fluid.io/inject": "true"}},
    "spec": {
        "containers": [
            {"name": "app", "image": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "warm-up"}}],
    },
}


def warm_up(settings: InjectorSettings) -> Decision:
    """Admit a sample pod against a sample Dataset and JindoRuntime, parsed as the resolver parses them.

    The first admission of a process otherwise pays for work done once: lazy imports, the CRD schema
    validators and the CEL rules' parser (lark builds its grammar tables), 0.2-0.45 s on the event loop
    in the benchmark, during which every other admission waits. Run before the server listens (in a
    thread)."""
    request = pod_create_review(_WARM_UP_POD, "default", "warm-up")["request"]
    claims = pod_claims(request)
    dataset = parse_dataset(_WARM_UP_DATASET, "default")
    runtime = parse_runtime(_WARM_UP_RUNTIME, "default")
    decision = decide(request, {c: Resolved(dataset, runtime=runtime) for c in claims}, settings)
    json.dumps(decision.response)
    return decision
