"""What `Kube` tells its request hooks: one `ApiRequest` per API call, after it ends.

The parts count and time their API traffic through this one public hook (`Kube.add_request_hook`)
instead of wrapping the client. Pure: no I/O library is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One finished API request.

    `verb` is the Kubernetes verb (`get list watch create update patch delete`, as in an audit log);
    `method` the HTTP one; `path` has no query; `status` is the HTTP status, 0 when no answer came
    (connection error, timeout); `seconds` runs until the answer was read (a watch: until its headers).
    """

    verb: str
    method: str
    path: str
    status: int
    seconds: float

    @property
    def resource(self) -> str:
        """The resource's plural, with its subresource (`"dataloads/status"`); "" for other paths
        (`/version`, discovery)."""
        return resource_of_path(self.path)[0]

    @property
    def writes(self) -> bool:
        return self.method in WRITE_METHODS


RequestHook = Callable[[ApiRequest], None]


def resource_of_path(path: str) -> tuple[str, str]:
    """`(resource, name)` of an API path: `/api/v1/namespaces/ns/pods/p/binding` -> `("pods/binding",
    "p")`; `("", "")` for paths that are not a resource's (`/version`, `/apis/data.fluid.io/v1alpha1`)."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if parts[0] == "api":
        rest = parts[2:]
    elif parts[0] == "apis":
        rest = parts[3:]
    else:
        return "", ""
    namespace_itself = len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES  # namespaces/{ns}/status
    if len(rest) >= 3 and rest[0] == "namespaces" and not namespace_itself:
        rest = rest[2:]  # /namespaces/{ns}/{plural}/...: a namespaced resource
    if not rest or not rest[0]:
        return "", ""
    resource = f"{rest[0]}/{rest[2]}" if len(rest) > 2 else rest[0]
    return resource, rest[1] if len(rest) > 1 else ""


def api_verb(method: str, path: str, watch: bool = False) -> str:
    """The Kubernetes verb of a request: a GET is `watch`, `get` (one object, or a non-resource path)
    or `list` (a collection); a DELETE of a collection is `deletecollection`."""
    if method not in ("GET", "DELETE"):
        return _VERBS.get(method, method.lower())
    if watch:
        return "watch"
    resource, name = resource_of_path(path)
    collection = bool(resource) and not name
    if method == "DELETE":
        return "deletecollection" if collection else "delete"
    return "list" if collection else "get"
