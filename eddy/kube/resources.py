"""Resource descriptors: where each kind lives in the Kubernetes API and how its URLs are built."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Resource:
    """One API resource. `group` is "" for the core group (`/api/v1`)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = False  # has a `status` subresource (spec and status are written separately)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The collection URL (all namespaces when `namespace` is None), one object's, or a subresource's."""
        path = self.prefix
        if self.namespaced and namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{self.plural}"
        if name is not None:
            if self.namespaced and not namespace:
                raise ValueError(f"{self.plural} is namespaced: a namespace is needed to address {name!r}")
            path += f"/{quote(name, safe='')}"
            if subresource:
                path += f"/{subresource}"
        return path


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False, has_status=True)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False, has_status=True)
PODS = Resource("", "v1", "pods", "Pod", has_status=True)
PERSISTENT_VOLUME_CLAIMS = Resource(
    "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", has_status=True
)
PERSISTENT_VOLUMES = Resource(
    "", "v1", "persistentvolumes", "PersistentVolume", namespaced=False, has_status=True
)
SERVICES = Resource("", "v1", "services", "Service", has_status=True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
EVENTS = Resource("", "v1", "events", "Event")  # core/v1 events (what `kubectl describe` shows)
EVENTS_V1 = Resource("events.k8s.io", "v1", "events", "Event")
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet", has_status=True)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", has_status=True)
MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
    namespaced=False,
)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
FLUID_GROUP = "data.fluid.io"
FLUID_VERSION = "v1alpha1"
DATASETS = Resource(FLUID_GROUP, FLUID_VERSION, "datasets", "Dataset", has_status=True)
JINDORUNTIMES = Resource(FLUID_GROUP, FLUID_VERSION, "jindoruntimes", "JindoRuntime", has_status=True)
DATALOADS = Resource(FLUID_GROUP, FLUID_VERSION, "dataloads", "DataLoad", has_status=True)

# Short aliases.
PVCS = PERSISTENT_VOLUME_CLAIMS
PVS = PERSISTENT_VOLUMES

ALL_RESOURCES: tuple[Resource, ...] = (
    NAMESPACES, NODES, PODS, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, SERVICES, CONFIGMAPS, SECRETS,
    SERVICE_ACCOUNTS, EVENTS, EVENTS_V1, STATEFULSETS, DEPLOYMENTS, MUTATING_WEBHOOK_CONFIGURATIONS, LEASES,
    DATASETS, JINDORUNTIMES, DATALOADS,
)
_BY_KIND = {(r.api_version, r.kind): r for r in ALL_RESOURCES}


def resource_for(api_version: str, kind: str) -> Resource:
    """The descriptor of a known `apiVersion`/`kind` (KeyError otherwise)."""
    try:
        return _BY_KIND[(api_version, kind)]
    except KeyError:
        raise KeyError(f"no Resource for apiVersion {api_version!r} kind {kind!r}") from None


def resource_of(obj: dict[str, object]) -> Resource:
    """The descriptor of an object by its `apiVersion` and `kind`."""
    return resource_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
