"""Kubernetes API helpers shared by webhook, controller and preloader (see docs/kube.md).

Objects are plain dicts (the API's JSON); Fluid kinds are parsed with `eddy.api.parse_object`.

The names below load on first use (PEP 562), so that importing a light module of this package
(`eddy.kube.flags`, `eddy.kube.hooks`, `eddy.kube.resources`) does not load kubernetes-asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from eddy.kube.hooks import ApiRequest, RequestHook
    from eddy.kube.informer import EventHandler, Informer, object_key
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
    from eddy.kube.selfpod import own_image

__all__ = [
    "ALL_RESOURCES",
    "CONFIGMAPS",
    "DATALOADS",
    "DATASETS",
    "DEPLOYMENTS",
    "EVENTS",
    "EVENTS_V1",
    "JINDORUNTIMES",
    "LEASES",
    "MUTATING_WEBHOOK_CONFIGURATIONS",
    "NAMESPACES",
    "NODES",
    "PATCH_CONTENT_TYPES",
    "PERSISTENT_VOLUMES",
    "PERSISTENT_VOLUME_CLAIMS",
    "PODS",
    "PVCS",
    "PVS",
    "SECRETS",
    "SERVICES",
    "SERVICE_ACCOUNTS",
    "STATEFULSETS",
    "AlreadyExists",
    "ApiRequest",
    "BadRequest",
    "Conflict",
    "EventHandler",
    "EventRecorder",
    "Forbidden",
    "Gone",
    "Informer",
    "Invalid",
    "Kube",
    "KubeError",
    "NotFound",
    "PatchType",
    "RequestHook",
    "Resource",
    "Unavailable",
    "build_event",
    "error_for",
    "from_api_exception",
    "involved_reference",
    "make_api_client",
    "object_key",
    "own_image",
    "resource_for",
    "resource_of",
]

# Light modules first: a name of theirs does not load kubernetes-asyncio.
_MODULES = ("eddy.kube.resources", "eddy.kube.errors", "eddy.kube.hooks", "eddy.kube.events",
            "eddy.kube.client", "eddy.kube.informer", "eddy.kube.selfpod")

if not TYPE_CHECKING:  # mypy reads the imports above; at run time a name is imported when first asked for

    def __getattr__(name: str) -> Any:
        for home in _MODULES if name in __all__ else ():
            module = importlib.import_module(home)
            if hasattr(module, name):
                globals()[name] = value = getattr(module, name)
                return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
