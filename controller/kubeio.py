"""The controller's view of the API: `eddy.kube.Kube`, the resources it writes, and a request hook
that counts every API request by HTTP method (`eddy_controller_api_requests_total{verb}`).
"""

from __future__ import annotations

from prometheus_client import Counter

from eddy.kube import ApiRequest, Kube, KubeError
from eddy.kube.resources import (
    CONFIGMAPS,
    DATASETS,
    JINDORUNTIMES,
    PODS,
    PVCS,
    PVS,
    SECRETS,
    SERVICES,
    STATEFULSETS,
    Resource,
)

API_REQUESTS = Counter("eddy_controller_api_requests_total", "Kubernetes API requests", ["verb"])
ApiError = KubeError
RUNTIMES = JINDORUNTIMES
CONFIG_MAPS = CONFIGMAPS
BY_KIND: dict[str, Resource] = {
    "PersistentVolume": PVS,
    "PersistentVolumeClaim": PVCS,
    "ConfigMap": CONFIGMAPS,
    "Service": SERVICES,
    "StatefulSet": STATEFULSETS,
    "Secret": SECRETS,
    "NetworkPolicy": Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    "PodDisruptionBudget": Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
}
__all__ = ["BY_KIND", "CONFIG_MAPS", "DATASETS", "PODS", "PVCS", "PVS", "RUNTIMES", "SECRETS",
           "SERVICES", "STATEFULSETS", "ApiError", "Kube", "Resource", "count_request"]


def count_request(request: ApiRequest) -> None:
    """The request hook the controller's `Kube` carries (`kube.add_request_hook(count_request)`)."""
    API_REQUESTS.labels(request.method).inc()
