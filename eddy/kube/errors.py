"""Errors of the Kubernetes API, translated from HTTP statuses and `Status` objects."""

from __future__ import annotations

from typing import Any


class KubeError(Exception):
    """An API call failed. `status` is the HTTP status (0: no answer); `reason` the Status reason."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class BadRequest(KubeError):
    """400: the request itself is wrong (bad patch, bad selector)."""


class Forbidden(KubeError):
    """401/403: missing credentials or RBAC."""


class NotFound(KubeError):
    """404: no such object (or namespace, or resource)."""


class Conflict(KubeError):
    """409: the object changed since it was read (stale resourceVersion)."""


class AlreadyExists(Conflict):
    """409 AlreadyExists: create of a name that is taken."""


class Gone(KubeError):
    """410: the resourceVersion is older than the server's history; list again."""


class Invalid(KubeError):
    """422: the object failed validation, or a JSON patch could not be applied."""


class Unavailable(KubeError):
    """5xx, 429, a timeout or a connection failure: worth retrying later."""


def error_for(status: int, reason: str = "", message: str = "") -> KubeError:
    """The KubeError subclass for an HTTP status and Status reason."""
    cls: type[KubeError]
    if status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status == 0 or status == 429 or status >= 500:
        cls = Unavailable
    else:
        cls = {400: BadRequest, 401: Forbidden, 403: Forbidden, 404: NotFound, 410: Gone, 422: Invalid}.get(
            status, KubeError
        )
    return cls(status, reason, message)


def error_from_status(doc: Any, status: int) -> KubeError:
    """Translate a `Status` object (or any error body) answered with HTTP `status`."""
    if isinstance(doc, dict):
        code = doc.get("code")
        return error_for(
            int(code) if isinstance(code, int) and code else status,
            str(doc.get("reason") or ""),
            str(doc.get("message") or ""),
        )
    return error_for(status, "", str(doc)[:200] if doc is not None else "")


def from_api_exception(exc: Any) -> KubeError:
    """Translate a kubernetes-asyncio `ApiException` (its body is the Status JSON, when there is one)."""
    import json

    body = getattr(exc, "body", None)
    doc: Any = None
    if body:
        try:
            doc = json.loads(body)
        except (TypeError, ValueError):
            doc = None
    status = int(getattr(exc, "status", 0) or 0)
    if isinstance(doc, dict):
        return error_from_status(doc, status)
    return error_for(status, str(getattr(exc, "reason", "") or ""), "")
