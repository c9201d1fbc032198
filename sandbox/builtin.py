"""What kube-apiserver itself (and the controllers that ship inside kube-controller-manager for
namespaces) does to built-in objects, as pure functions the sandbox API server calls:

- defaults on pods, `kubernetes.io/metadata.name` on namespaces, a Secret's `stringData` folded into
  `data`, the initial status of some kinds;
- the ServiceAccount admission plugin (default service account, the `kube-api-access-*` projected
  volume mounted in every container);
- what each namespace gets: the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap;
- CustomResourceDefinitions: validation, the kinds they serve, and their status conditions.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import random
from collections.abc import Callable

from sandbox.api_kinds import ApiError, Column, Kind, Obj, now

TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT_CA = "kube-root-ca.crt"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public")
NAME_LABEL = "kubernetes.io/metadata.name"

INITIAL_STATUS: dict[str, Obj] = {
    "Pod": {"phase": "Pending"},
    "Namespace": {"phase": "Active"},
    "PersistentVolumeClaim": {"phase": "Pending"},
    "PersistentVolume": {"phase": "Pending"},
}


def normalize(kind: Kind, obj: Obj) -> None:
    """What the real API server does on every write that clients can see: a Secret's `stringData` is
    folded into base64 `data`; a namespace carries its name as the `kubernetes.io/metadata.name` label;
    a ValidatingAdmissionPolicy's status has the generation observed."""
    if kind.kind == "Secret" and isinstance(obj.get("stringData"), dict):
        data = obj.get("data") or {}
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    if (kind.group, kind.plural) == ("admissionregistration.k8s.io", "validatingadmissionpolicies"):
        # what the policy type-checking controller reports once it has seen a generation
        generation = (obj.get("metadata") or {}).get("generation", 1)
        obj["status"] = {**(obj.get("status") or {}), "observedGeneration": generation}
    if (kind.group, kind.kind) == ("", "Namespace"):
        meta = obj.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), NAME_LABEL: meta.get("name", "")}


def _pull_policy(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return "IfNotPresent"
    return "Always" if ":" not in tail or tail.endswith(":latest") else "IfNotPresent"


def default_pod(pod: Obj) -> Obj:
    """The defaults kube-apiserver fills into a pod before admission sees it (the ones a webhook or a
    kubelet reads: restart and DNS policy, grace period, scheduler, container message paths)."""
    spec = pod.setdefault("spec", {})
    for key, value in (
        ("restartPolicy", "Always"),
        ("dnsPolicy", "ClusterFirst"),
        ("terminationGracePeriodSeconds", 30),
        ("schedulerName", "default-scheduler"),
        ("securityContext", {}),
        ("enableServiceLinks", True),
    ):
        spec.setdefault(key, copy.deepcopy(value))
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            if container.get("image"):
                container.setdefault("imagePullPolicy", _pull_policy(str(container["image"])))
    return pod


def minor_version(git_version: str) -> int:
    try:
        return int(git_version.lstrip("v").split(".")[1])
    except (IndexError, ValueError):
        return 99


TEMPLATED = {
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
}


def drop_disabled_fields(kind: Kind, obj: Obj, minor: int) -> None:
    """Fields of disabled feature gates are dropped on write, as kube-apiserver does: before 1.29 the
    SidecarContainers gate is off, so an init container's `restartPolicy` (native sidecars) is removed
    from pods and pod templates, and such a sidecar runs as an ordinary init container."""
    if minor >= 29:
        return
    spec: object = None
    if (kind.group, kind.plural) == ("", "pods"):
        spec = obj.get("spec")
    elif (kind.group, kind.plural) in TEMPLATED:
        spec = ((obj.get("spec") or {}).get("template") or {}).get("spec")
    if isinstance(spec, dict):
        for container in spec.get("initContainers") or []:
            if isinstance(container, dict):
                container.pop("restartPolicy", None)


def _suffix() -> str:
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))


def token_volume(name: str) -> Obj:
    return {
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }


def admit_service_account(
    pod: Obj, namespace: str, lookup: Callable[[str, str], Obj | None], *, require: bool
) -> Obj:
    """The ServiceAccount admission plugin on pod CREATE: `serviceAccountName` defaults to `default`;
    unless the pod (or else its ServiceAccount) says `automountServiceAccountToken: false`, a projected
    `kube-api-access-<5>` volume (token, the cluster CA, the namespace) is added and mounted read-only at
    /var/run/secrets/kubernetes.io/serviceaccount in every init and app container that has no mount
    there already. With `require`, a missing ServiceAccount is Forbidden, as in a cluster."""
    spec = pod.setdefault("spec", {})
    sa_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = sa_name
    account = lookup(namespace, sa_name)
    if account is None and require:
        name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "")
        raise ApiError(
            403,
            "Forbidden",
            f'pods "{name}" is forbidden: error looking up service account '
            f'{namespace}/{sa_name}: serviceaccount "{sa_name}" not found',
        )
    automount = spec.get("automountServiceAccountToken")
    if automount is None:
        automount = (account or {}).get("automountServiceAccountToken", True)
    if automount is False:
        return pod
    volumes = spec.get("volumes") or []
    existing = next(
        (v["name"] for v in volumes if str(v.get("name", "")).startswith("kube-api-access-")), None
    )
    volume_name = existing or f"kube-api-access-{_suffix()}"
    needed = False
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(group) or []:
            mounts = container.setdefault("volumeMounts", [])
            if not any(m.get("mountPath") == TOKEN_MOUNT for m in mounts):
                mounts.append({"name": volume_name, "readOnly": True, "mountPath": TOKEN_MOUNT})
                needed = True
    if needed and existing is None:
        spec["volumes"] = [*volumes, token_volume(volume_name)]
    return pod


def namespace_objects(namespace: str, ca_pem: str) -> list[Obj]:
    """What kube-controller-manager puts into every namespace (the service account and root CA
    publisher controllers)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": ROOT_CA,
                "namespace": namespace,
                "annotations": {
                    "kubernetes.io/description": "Contains a CA bundle that can be used to "
                    "verify the kube-apiserver when using internal endpoints such as the "
                    "internal service IP or kubernetes.default.svc. No other usage is "
                    "guaranteed across distributions of Kubernetes clusters."
                },
            },
            "data": {"ca.crt": ca_pem},
        },
    ]


# ---------------------------------------------------------------------------------------------- CRDs
def _invalid(name: str, message: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: {message}',
        {"name": name, "group": "apiextensions.k8s.io", "kind": "CustomResourceDefinition"},
    )


def validate_crd(crd: Obj) -> None:
    name = str((crd.get("metadata") or {}).get("name") or "")
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not group or not plural or not kind:
        raise _invalid(name, "spec.group, spec.names.plural and spec.names.kind are required")
    if name != f"{plural}.{group}":
        raise _invalid(
            name, f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+spec.group'
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        raise _invalid(name, 'spec.scope: Unsupported value: supported values: "Cluster", "Namespaced"')
    versions = spec.get("versions") or []
    if not versions or not all(isinstance(v, dict) and v.get("name") for v in versions):
        raise _invalid(name, "spec.versions: Required value: must have exactly one version marked as storage")
    if sum(1 for v in versions if v.get("storage")) != 1:
        raise _invalid(
            name, "spec.versions: Invalid value: must have exactly one version marked as storage version"
        )


def crd_kinds(crd: Obj) -> list[Kind]:
    """One Kind per served version of a (validated) CRD."""
    spec, name = crd["spec"], crd["metadata"]["name"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        columns = tuple(
            Column(
                str(c.get("name", "")),
                str(c.get("type", "string")),
                str(c.get("jsonPath", "")),
                str(c.get("description", "")),
                str(c.get("format", "")),
                int(c.get("priority", 0)),
            )
            for c in version.get("additionalPrinterColumns") or []
        )
        out.append(
            Kind(
                spec["group"],
                version["name"],
                names["plural"],
                names["kind"],
                namespaced=spec["scope"] == "Namespaced",
                has_status="status" in (version.get("subresources") or {}),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                singular=names.get("singular") or names["kind"].lower(),
                columns=columns,
                crd=name,
            )
        )
    return out


def crd_status(crd: Obj, old_status: Obj | None) -> Obj:
    """What the apiextensions controllers write: names accepted, established, the stored version."""
    spec = crd["spec"]
    names = dict(spec["names"])
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    stored = list((old_status or {}).get("storedVersions") or [])
    if storage not in stored:
        stored.append(storage)
    previous = {c.get("type"): c for c in (old_status or {}).get("conditions") or []}
    conditions = []
    for ctype, reason, message in (
        ("NamesAccepted", "NoConflicts", "no conflicts found"),
        ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
    ):
        since = previous.get(ctype, {}).get("lastTransitionTime") or now()
        conditions.append(
            {
                "type": ctype,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
            }
        )
    return {"acceptedNames": names, "conditions": conditions, "storedVersions": stored}


# ---------------------------------------------------------------------------------------------- services
def default_service(svc: Obj, taken: set[str], cidr: str) -> Obj:
    """Service defaults and ClusterIP allocation (kube-apiserver's service REST storage): type
    ClusterIP, TCP ports with targetPort = port, and for ClusterIP/NodePort/LoadBalancer services a free
    address of the service CIDR (the first one is left for the `kubernetes` Service); `None` stays
    headless. A requested address that is taken or outside the CIDR is refused."""
    spec = svc.setdefault("spec", {})
    kind = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        if "port" in port:
            port.setdefault("targetPort", port["port"])
    if kind == "ExternalName":
        return svc
    network = ipaddress.ip_network(cidr)
    asked = spec.get("clusterIP") or ""
    name = (svc.get("metadata") or {}).get("name", "")
    if asked == "None":
        spec["clusterIPs"] = ["None"]
    elif asked:
        try:
            inside = ipaddress.ip_address(asked) in network
        except ValueError:
            inside = False
        if not inside or asked in taken:
            why = (
                "provided IP is already allocated"
                if inside
                else f"provided IP is not in the valid range {cidr}"
            )
            raise ApiError(
                422,
                "Invalid",
                f'Service "{name}" is invalid: spec.clusterIPs: Invalid value: '
                f'["{asked}"]: failed to allocate IP {asked}: {why}',
            )
        spec["clusterIPs"] = [asked]
    else:
        free = next((str(ip) for ip in network.hosts() if str(ip) not in taken and ip != network[1]), None)
        if free is None:
            raise ApiError(500, "InternalError", f"failed to allocate a serviceIP: range {cidr} is full")
        spec["clusterIP"], spec["clusterIPs"] = free, [free]
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    return svc


def kubernetes_service(cidr: str, address: str, port: int) -> list[Obj]:
    """What kube-apiserver's bootstrap controller keeps in `default`: the `kubernetes` Service on the
    service CIDR's first address, port 443 (https) to the server's secure port, and its Endpoints and
    EndpointSlice naming the server's advertised address."""
    vip = str(ipaddress.ip_network(cidr)[1])
    labels = {"component": "apiserver", "provider": "kubernetes"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": vip,
                "clusterIPs": [vip],
                "sessionAffinity": "None",
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
            },
            "subsets": [
                {
                    "addresses": [{"ip": address}],
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                }
            ],
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
    ]
