"""The controller's view of the API: `eddy.kube.Kube`, the resources it writes, and a request hook
that counts every API request by verb and resource (`eddy_controller_api_requests_total{verb,resource}`).
"""

from __future__ import annotations

from eddy.kube import Kube, KubeError
from eddy.kube.metrics import api_request_counter
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
# The request hook the controller's `Kube` carries (`kube.add_request_hook(count_request)`).
count_request = api_request_counter("controller")
