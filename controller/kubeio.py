"""The controller's view of the API transport: `eddy.kube.Kube` plus request counting.

Every request is counted by verb in a Prometheus counter, and writes in `Kube.writes`, which is also
how the tests see that a second reconcile writes nothing.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from eddy.kube import Kube as BaseKube
from eddy.kube import KubeError, make_api_client
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
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")
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
           "SERVICES", "STATEFULSETS", "ApiError", "Kube", "Resource"]


class Kube(BaseKube):
    """`eddy.kube.Kube` that counts its requests (metric by verb; `writes` for the tests)."""

    writes = 0

    @classmethod
    async def connect(cls, url: str | None = None, kubeconfig: str | None = None) -> Kube:
        return cls(await make_api_client(url, kubeconfig))

    async def _send(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
                    body: Any = None, content_type: str = "application/json", timeout: Any = None) -> Any:
        API_REQUESTS.labels(method).inc()
        if method in WRITE_VERBS:
            self.writes += 1
        return await super()._send(method, path, query, body, content_type, timeout)
