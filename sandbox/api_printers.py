"""Table columns kube-apiserver prints for common built-in kinds (pkg/printers/internalversion), in
the short form `kubectl get` shows; pods live in tables.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sandbox.api_kinds import Column, Obj
from sandbox.tables import AGE, NAME, Printer, age, human_duration


def _c(name: str, priority: int = 0) -> Column:
    return Column(name, "string", "", "", "", priority)


def _get(obj: Obj, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for part in path:
        cur = cur.get(part) if isinstance(cur, dict) else None
    return default if cur is None else cur


def _printer(names: list[str | tuple[str, int]], cells: Callable[[Obj], list[Any]]) -> Printer:
    columns = [NAME]
    for n in names:
        columns.append(_c(n) if isinstance(n, str) else _c(*n))
    return columns, lambda o: [o["metadata"].get("name", ""), *cells(o)]


def _created(o: Obj) -> str:
    return age(o["metadata"].get("creationTimestamp"))


def _selector(o: Obj) -> str:
    sel = _get(o, "spec", "selector", default={})
    labels = sel.get("matchLabels", sel) if isinstance(sel, dict) else {}
    text = ",".join(f"{k}={v}" for k, v in labels.items() if isinstance(v, str))
    return text or "<none>"


def _containers(o: Obj) -> tuple[str, str]:
    cs = _get(o, "spec", "template", "spec", "containers", default=[])
    return ",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)


def _ports(o: Obj) -> str:
    out = []
    for p in _get(o, "spec", "ports", default=[]):
        text = f"{p.get('port')}"
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        out.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _job_status(o: Obj) -> str:
    for cond in _get(o, "status", "conditions", default=[]):
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed", "Suspended"):
            return str(cond["type"])
    return "Running"


def _job_duration(o: Obj) -> str:
    start, end = _get(o, "status", "startTime"), _get(o, "status", "completionTime")
    if not start:
        return ""
    if not end:
        return age(start)

    def parse(t: str) -> datetime:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))

    return human_duration((parse(end) - parse(start)).total_seconds())


def _wide(o: Obj) -> list[str]:
    names, images = _containers(o)
    return [names, images, _selector(o)]


BUILTIN_PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "namespaces"): _printer(
        ["Status", "Age"], lambda o: [_get(o, "status", "phase", default=""), _created(o)]
    ),
    ("", "nodes"): _printer(
        ["Status", "Roles", "Age", "Version"],
        lambda o: [
            "Ready"
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in _get(o, "status", "conditions", default=[])
            )
            else "NotReady",
            "<none>",
            _created(o),
            _get(o, "status", "nodeInfo", "kubeletVersion", default=""),
        ],
    ),
    ("", "services"): _printer(
        ["Type", "Cluster-IP", "External-IP", "Port(s)", "Age", ("Selector", 1)],
        lambda o: [
            _get(o, "spec", "type", default="ClusterIP"),
            _get(o, "spec", "clusterIP", default="<none>"),
            "<none>",
            _ports(o),
            _created(o),
            ",".join(f"{k}={v}" for k, v in _get(o, "spec", "selector", default={}).items()) or "<none>",
        ],
    ),
    ("", "configmaps"): _printer(
        ["Data", "Age"], lambda o: [len(o.get("data") or {}) + len(o.get("binaryData") or {}), _created(o)]
    ),
    ("", "secrets"): _printer(
        ["Type", "Data", "Age"], lambda o: [o.get("type", "Opaque"), len(o.get("data") or {}), _created(o)]
    ),
    ("", "serviceaccounts"): _printer(
        ["Secrets", "Age"], lambda o: [len(o.get("secrets") or []), _created(o)]
    ),
    ("", "persistentvolumeclaims"): _printer(
        ["Status", "Volume", "Capacity", "Access Modes", "StorageClass", "Age"],
        lambda o: [
            _get(o, "status", "phase", default=""),
            _get(o, "spec", "volumeName", default=""),
            _get(o, "status", "capacity", "storage", default=""),
            ",".join(_get(o, "status", "accessModes", default=[])),
            _get(o, "spec", "storageClassName", default=""),
            _created(o),
        ],
    ),
    ("", "persistentvolumes"): _printer(
        ["Capacity", "Access Modes", "Reclaim Policy", "Status", "Claim", "StorageClass", "Age"],
        lambda o: [
            _get(o, "spec", "capacity", "storage", default=""),
            ",".join(_get(o, "spec", "accessModes", default=[])),
            _get(o, "spec", "persistentVolumeReclaimPolicy", default="Retain"),
            _get(o, "status", "phase", default=""),
            "/".join(
                filter(None, [_get(o, "spec", "claimRef", "namespace"), _get(o, "spec", "claimRef", "name")])
            ),
            _get(o, "spec", "storageClassName", default=""),
            _created(o),
        ],
    ),
    ("apps", "deployments"): _printer(
        ["Ready", "Up-to-date", "Available", "Age", ("Containers", 1), ("Images", 1), ("Selector", 1)],
        lambda o: [
            f"{_get(o, 'status', 'readyReplicas', default=0)}/{_get(o, 'spec', 'replicas', default=1)}",
            _get(o, "status", "updatedReplicas", default=0),
            _get(o, "status", "availableReplicas", default=0),
            _created(o),
            *_wide(o),
        ],
    ),
    ("apps", "statefulsets"): _printer(
        ["Ready", "Age", ("Containers", 1), ("Images", 1)],
        lambda o: [
            f"{_get(o, 'status', 'readyReplicas', default=0)}/{_get(o, 'spec', 'replicas', default=1)}",
            _created(o),
            *_wide(o)[:2],
        ],
    ),
    ("apps", "replicasets"): _printer(
        ["Desired", "Current", "Ready", "Age", ("Containers", 1), ("Images", 1), ("Selector", 1)],
        lambda o: [
            _get(o, "spec", "replicas", default=1),
            _get(o, "status", "replicas", default=0),
            _get(o, "status", "readyReplicas", default=0),
            _created(o),
            *_wide(o),
        ],
    ),
    ("apps", "daemonsets"): _printer(
        ["Desired", "Current", "Ready", "Up-to-date", "Available", "Age"],
        lambda o: [
            _get(o, "status", "desiredNumberScheduled", default=0),
            _get(o, "status", "currentNumberScheduled", default=0),
            _get(o, "status", "numberReady", default=0),
            _get(o, "status", "updatedNumberScheduled", default=0),
            _get(o, "status", "numberAvailable", default=0),
            _created(o),
        ],
    ),
    ("batch", "jobs"): _printer(
        ["Status", "Completions", "Duration", "Age", ("Containers", 1), ("Images", 1), ("Selector", 1)],
        lambda o: [
            _job_status(o),
            f"{_get(o, 'status', 'succeeded', default=0)}/{_get(o, 'spec', 'completions', default=1)}",
            _job_duration(o),
            _created(o),
            *_wide(o),
        ],
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions"): (
        [NAME, Column("Created At", "date", "", AGE.description)],
        lambda o: [o["metadata"].get("name", ""), o["metadata"].get("creationTimestamp", "")],
    ),
}


def _event_row(o: Obj) -> list[Any]:
    involved = o.get("involvedObject") or o.get("regarding") or {}
    last = o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
    first = o.get("firstTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
    source = o.get("source") or {}
    origin = ", ".join(
        filter(None, [source.get("component") or o.get("reportingController"), source.get("host")])
    )
    return [
        age(last),
        o.get("type", ""),
        o.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        involved.get("fieldPath", ""),
        origin,
        o.get("message") or o.get("note", ""),
        age(first),
        o.get("count", 1),
        o["metadata"].get("name", ""),
    ]


EVENT_PRINTER: Printer = (
    [
        _c("Last Seen"),
        _c("Type"),
        _c("Reason"),
        _c("Object"),
        _c("Subobject", 1),
        _c("Source", 1),
        _c("Message"),
        _c("First Seen", 1),
        _c("Count", 1),
        Column("Name", "string", "", "", "name", 1),
    ],
    _event_row,
)


def _endpoints(o: Obj) -> str:
    out = [
        f"{a.get('ip')}:{p.get('port')}"
        for sub in o.get("subsets") or []
        for a in sub.get("addresses") or []
        for p in sub.get("ports") or [{}]
    ]
    return ",".join(out[:3]) + (f" + {len(out) - 3} more..." if len(out) > 3 else "") or "<none>"


def _slice_endpoints(o: Obj) -> str:
    out = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    return ",".join(out[:3]) + (f" + {len(out) - 3} more..." if len(out) > 3 else "") or "<unset>"


def _role_ref(o: Obj) -> str:
    ref = o.get("roleRef") or {}
    return f"{ref.get('kind', '')}/{ref.get('name', '')}"


def _created_at(o: Obj) -> str:
    return str(o["metadata"].get("creationTimestamp", ""))


CREATED_AT = Column("Created At", "date", "", AGE.description)
MORE_PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "events"): EVENT_PRINTER,
    ("events.k8s.io", "events"): EVENT_PRINTER,
    ("", "endpoints"): _printer(["Endpoints", "Age"], lambda o: [_endpoints(o), _created(o)]),
    ("discovery.k8s.io", "endpointslices"): _printer(
        ["AddressType", "Ports", "Endpoints", "Age"],
        lambda o: [
            o.get("addressType", ""),
            ",".join(str(p.get("port", "")) for p in o.get("ports") or []) or "<unset>",
            _slice_endpoints(o),
            _created(o),
        ],
    ),
    ("coordination.k8s.io", "leases"): _printer(
        ["Holder", "Age"], lambda o: [_get(o, "spec", "holderIdentity", default=""), _created(o)]
    ),
    ("rbac.authorization.k8s.io", "roles"): (
        [NAME, CREATED_AT],
        lambda o: [o["metadata"]["name"], _created_at(o)],
    ),
    ("rbac.authorization.k8s.io", "clusterroles"): (
        [NAME, CREATED_AT],
        lambda o: [o["metadata"]["name"], _created_at(o)],
    ),
    ("rbac.authorization.k8s.io", "rolebindings"): _printer(
        ["Role", "Age"], lambda o: [_role_ref(o), _created(o)]
    ),
    ("rbac.authorization.k8s.io", "clusterrolebindings"): _printer(
        ["Role", "Age"], lambda o: [_role_ref(o), _created(o)]
    ),
    ("networking.k8s.io", "networkpolicies"): _printer(
        ["Pod-Selector", "Age"],
        lambda o: [
            ",".join(f"{k}={v}" for k, v in _get(o, "spec", "podSelector", "matchLabels", default={}).items())
            or "<none>",
            _created(o),
        ],
    ),
    ("policy", "poddisruptionbudgets"): _printer(
        ["Min Available", "Max Unavailable", "Allowed Disruptions", "Age"],
        lambda o: [
            str(_get(o, "spec", "minAvailable", default="N/A")),
            str(_get(o, "spec", "maxUnavailable", default="N/A")),
            _get(o, "status", "disruptionsAllowed", default=0),
            _created(o),
        ],
    ),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): _printer(
        ["Webhooks", "Age"], lambda o: [len(o.get("webhooks") or []), _created(o)]
    ),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): _printer(
        ["Webhooks", "Age"], lambda o: [len(o.get("webhooks") or []), _created(o)]
    ),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies"): _printer(
        ["Validations", "ParamKind", "Age"],
        lambda o: [
            len(_get(o, "spec", "validations", default=[])),
            "/".join(
                filter(
                    None, [_get(o, "spec", "paramKind", "apiVersion"), _get(o, "spec", "paramKind", "kind")]
                )
            )
            or "<unset>",
            _created(o),
        ],
    ),
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings"): _printer(
        ["PolicyName", "ParamRef", "Age"],
        lambda o: [
            _get(o, "spec", "policyName", default=""),
            _get(o, "spec", "paramRef", "name", default="<unset>"),
            _created(o),
        ],
    ),
}
BUILTIN_PRINTERS.update(MORE_PRINTERS)
