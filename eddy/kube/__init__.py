"""Kubernetes API helpers shared by webhook, controller and preloader (see docs/kube.md).

Objects are plain dicts (the API's JSON); Fluid kinds are parsed with `eddy.api.parse_object`.
"""

from eddy.kube.client import PATCH_CONTENT_TYPES, Kube, PatchType, make_api_client
from eddy.kube.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    Unavailable,
    error_for,
    from_api_exception,
)
from eddy.kube.events import EventRecorder, build_event, involved_reference
from eddy.kube.informer import EventHandler, Informer, backoff_delay, object_key
from eddy.kube.resources import (
    ALL_RESOURCES,
    CONFIGMAPS,
    DATALOADS,
    DATASETS,
    DEPLOYMENTS,
    EVENTS,
    EVENTS_V1,
    JINDORUNTIMES,
    LEASES,
    MUTATING_WEBHOOK_CONFIGURATIONS,
    NAMESPACES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    PVCS,
    PVS,
    SECRETS,
    SERVICE_ACCOUNTS,
    SERVICES,
    STATEFULSETS,
    Resource,
    resource_for,
    resource_of,
)

__all__ = [
    "ALL_RESOURCES", "CONFIGMAPS", "DATALOADS", "DATASETS", "DEPLOYMENTS", "EVENTS", "EVENTS_V1",
    "JINDORUNTIMES", "LEASES", "MUTATING_WEBHOOK_CONFIGURATIONS", "NAMESPACES", "NODES",
    "PATCH_CONTENT_TYPES", "PERSISTENT_VOLUMES", "PERSISTENT_VOLUME_CLAIMS", "PODS", "PVCS", "PVS",
    "SECRETS", "SERVICES", "SERVICE_ACCOUNTS", "STATEFULSETS", "AlreadyExists", "BadRequest", "Conflict",
    "EventHandler", "EventRecorder", "Forbidden", "Gone", "Informer", "Invalid", "Kube", "KubeError",
    "NotFound", "PatchType", "Resource", "Unavailable", "backoff_delay", "build_event", "error_for",
    "from_api_exception", "involved_reference", "make_api_client", "object_key", "resource_for",
    "resource_of",
]
