"""Server-side `Table` responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), what
`kubectl get` prints.

As kube-apiserver does it:
- a CRD kind: `Name`, then its `additionalPrinterColumns` (a version without any gets `Age`), each cell
  from a simple JSONPath; `type: date` cells are turned into an age here, by the server (kubectl
  prints cells as they come); `string` cells are the JSONPath's text output;
- pods: Name, Ready, Status, Restarts, Age and, at priority 1 (`-o wide`), IP, Node, Nominated Node,
  Readiness Gates, with kubectl's status logic (Init:N/M, waiting/terminated reasons, Terminating);
- other built-ins: the columns kube-apiserver prints for the common ones (api_printers.py),
  `Name` and `Age` for the rest.
The server always sends the priority-1 columns; kubectl shows them with `-o wide`.
`includeObject=None|Metadata|Object` (default Metadata) says what each row carries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sandbox.api_kinds import ApiError, Column, Kind, Obj

Printer = tuple[list[Column], Callable[[Obj], list[Any]]]
NAME = Column("Name", "string", ".metadata.name", "Name must be unique within a namespace.", "name")
AGE = Column(
    "Age",
    "date",
    ".metadata.creationTimestamp",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
)


def wants_table(accept: str) -> bool:
    return "as=Table" in accept.replace(" ", "")


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any) -> str:
    """What kube-apiserver prints for a timestamp (translateTimestampSince)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.now(UTC) - then).total_seconds())


# ---------------------------------------------------------------------------------------------- JSONPath
_STEP = re.compile(
    r"""\.([A-Za-z0-9_\-$]+)|\[(\d+|\*)\]|\[['"]([^'"]+)['"]\]|\[\?\(@\.([\w.\-]+)\s*==\s*['"]?([^'")]*)['"]?\)\]"""
)


def json_path(obj: Any, path: str) -> list[Any]:
    """Evaluate a simple JSONPath (`.a.b`, `.a[0]`, `.a[*].b`, `.a['k.x']`, `.a[?(@.type=="Ready")].b`,
    optionally wrapped in `{}`) and return every match."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m:
            raise ValueError(f"unsupported JSONPath {path!r}")
        pos = m.end()
        field, index, quoted, fkey, fvalue = m.groups()
        nxt: list[Any] = []
        for value in current:
            if field is not None or quoted is not None:
                key = field if field is not None else quoted
                if isinstance(value, dict) and key in value:
                    nxt.append(value[key])
            elif index is not None and isinstance(value, list):
                if index == "*":
                    nxt.extend(value)
                elif int(index) < len(value):
                    nxt.append(value[int(index)])
            elif fkey is not None and isinstance(value, list):
                for item in value:
                    found = json_path(item, "." + fkey)
                    if found and _text(found[0]) == fvalue:
                        nxt.append(item)
        current = nxt
    return current


def _text(value: Any) -> str:
    """Go's fmt.Print of a decoded JSON value, which is what `kubectl`'s JSONPath printing writes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_text(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_text(v) for v in value) + "]"
    return "" if value is None else str(value)


def _cell(column: Column, obj: Obj) -> Any:
    """One CRD printer-column cell (apiextensions-apiserver's tableconvertor)."""
    try:
        found = json_path(obj, column.json_path)
    except ValueError:
        return None
    if not found or found[0] is None:
        return None
    value = found[0]
    if column.type == "string":
        return _text(value)
    if column.type == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if column.type == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if column.type == "boolean" and isinstance(value, bool):
        return value
    if column.type == "date" and isinstance(value, str):
        return age(value)
    return None


def crd_printer(columns: tuple[Column, ...]) -> Printer:
    shown = list(columns) or [AGE]
    return [NAME, *shown], lambda o: [o["metadata"].get("name", ""), *(_cell(c, o) for c in shown)]


# ---------------------------------------------------------------------------------------------- pods
def _col(name: str, description: str = "", priority: int = 0) -> Column:
    return Column(name, "string", "", description, "", priority)


POD_COLUMNS = [
    NAME,
    _col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    _col("Status", "The aggregate status of the containers in this pod."),
    _col(
        "Restarts",
        "The number of times the containers in this pod have been restarted and when "
        "the last container in this pod has restarted.",
    ),
    _col("Age", AGE.description),
    _col("IP", "IP address allocated to the pod.", 1),
    _col("Node", "NodeName is the node the pod is bound to.", 1),
    _col("Nominated Node", "nominatedNodeName is set when this pod preempts other pods.", 1),
    _col("Readiness Gates", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
]


def _restartable(container: Obj | None) -> bool:
    return bool(container) and (container or {}).get("restartPolicy") == "Always"


def _terminated_reason(term: Obj, prefix: str = "") -> str:
    if term.get("reason"):
        return prefix + str(term["reason"])
    if term.get("signal"):
        return f"{prefix}Signal:{term['signal']}"
    return f"{prefix}ExitCode:{term.get('exitCode', 0)}"


def _later(a: str, term: Obj | None) -> str:
    finished = str((term or {}).get("finishedAt") or "")
    return finished if finished > a else a


def pod_row(pod: Obj) -> list[Any]:
    """kubectl's printPod (pkg/printers/internalversion)."""
    spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, pod["metadata"]
    phase = str(status.get("phase") or "")
    reason = str(status.get("reason") or phase)
    inits = {c.get("name"): c for c in spec.get("initContainers") or []}
    total = len(spec.get("containers") or []) + sum(1 for c in inits.values() if _restartable(c))
    ready = restarts = sidecar_restarts = 0
    last = sidecar_last = ""
    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    for i, cs in enumerate(init_statuses):
        state, term_last = cs.get("state") or {}, (cs.get("lastState") or {}).get("terminated")
        restarts += int(cs.get("restartCount") or 0)
        last = _later(last, term_last)
        sidecar = _restartable(inits.get(cs.get("name")))
        if sidecar:
            sidecar_restarts += int(cs.get("restartCount") or 0)
            sidecar_last = _later(sidecar_last, term_last)
        term, waiting = state.get("terminated"), state.get("waiting")
        if term is not None and int(term.get("exitCode") or 0) == 0:
            continue
        if sidecar and cs.get("started"):
            ready += 1 if cs.get("ready") else 0
            continue
        if term is not None:
            reason = _terminated_reason(term, "Init:")
        elif waiting and waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{len(inits)}"
        initializing = True
        break
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if not initializing or conditions.get("Initialized") == "True":
        restarts, last = sidecar_restarts, sidecar_last
        running = False
        for cs in reversed(status.get("containerStatuses") or []):
            state = cs.get("state") or {}
            restarts += int(cs.get("restartCount") or 0)
            last = _later(last, (cs.get("lastState") or {}).get("terminated"))
            waiting, term = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = str(waiting["reason"])
            elif term is not None:
                reason = _terminated_reason(term)
            elif cs.get("ready") and state.get("running") is not None:
                running = True
                ready += 1
        if reason == "Completed" and running:
            reason = "Running" if "Ready" in conditions else "NotReady"
    if meta.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"
    restart_text = str(restarts)
    if restarts and last:
        restart_text = f"{restarts} ({age(last)} ago)"
    ips = status.get("podIPs") or []
    ip = (ips[0].get("ip") if ips else status.get("podIP")) or "<none>"
    gates = spec.get("readinessGates") or []
    gate_text = "<none>"
    if gates:
        passed = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
        gate_text = f"{passed}/{len(gates)}"
    return [
        meta.get("name", ""),
        f"{ready}/{total}",
        reason,
        restart_text,
        age(meta.get("creationTimestamp")),
        ip,
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gate_text,
    ]


# ---------------------------------------------------------------------------------------------- tables
def printer_for(kind: Kind) -> Printer:
    from sandbox.api_printers import BUILTIN_PRINTERS

    if kind.columns is not None:
        return crd_printer(kind.columns)
    if (kind.group, kind.plural) == ("", "pods"):
        return POD_COLUMNS, pod_row
    if (kind.group, kind.plural) in BUILTIN_PRINTERS:
        return BUILTIN_PRINTERS[(kind.group, kind.plural)]
    return [NAME, _col("Age", AGE.description)], lambda o: [
        o["metadata"].get("name", ""),
        age(o["metadata"].get("creationTimestamp")),
    ]


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(
    kind: Kind,
    objs: list[Obj],
    *,
    include: str = "Metadata",
    resource_version: str = "",
    no_headers: bool = False,
) -> Obj:
    if include not in ("None", "Metadata", "Object"):
        raise ApiError(400, "BadRequest", f"includeObject={include!r}: must be None, Metadata or Object")
    columns, row_of = printer_for(kind)
    rows = []
    for obj in objs:
        row: Obj = {"cells": row_of(obj)}
        carried = _row_object(obj, include)
        if carried is not None:
            row["object"] = carried
        phase = (obj.get("status") or {}).get("phase") if kind.plural == "pods" else None
        if phase in ("Succeeded", "Failed"):
            row["conditions"] = [
                {
                    "type": "Completed",
                    "status": "True",
                    "reason": phase,
                    "message": "The pod has completed "
                    + ("successfully." if phase == "Succeeded" else "and failed."),
                }
            ]
        rows.append(row)
    out: Obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "rows": rows}
    if resource_version:
        out["metadata"]["resourceVersion"] = resource_version
    if not no_headers:
        out["columnDefinitions"] = [
            {
                "name": c.name,
                "type": c.type,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            }
            for c in columns
        ]
    return out
