"""How the worker answers failures: every exception maps to an HTTP status, an error code and a message.

Codes are eddy/wire.py's `ERR_*`. Object-store failures are 5xx whose message says the object store
failed (and how), so a caller can tell a sick cache from a sick store. Messages never hold credentials
(the object store scrubs its own; nothing else here sees them).
"""

from __future__ import annotations

import asyncio

from eddy.objectstore import (
    ObjectChanged,
    ObjectNotFound,
    ObjectStoreDenied,
    ObjectStoreError,
    ObjectStoreUnavailable,
)
from eddy.wire import (
    ERR_BAD_REQUEST,
    ERR_BLOCK_SIZE,
    ERR_OBJECT_CHANGED,
    ERR_OBJECT_GONE,
    ERR_STORE_DENIED,
    ERR_STORE_FAILED,
    ERR_STORE_TIMEOUT,
    ERR_STORE_UNAVAILABLE,
    ERR_UNKNOWN_MOUNT,
    BadBlockRef,
    BlockSizeMismatch,
)


class UnknownMount(LookupError):
    """The block names a mount the worker's dataset does not have."""


class BadRequest(ValueError):
    """A malformed request other than a block reference (body, parameter, header)."""


def describe(exc: BaseException) -> tuple[int, str, str]:
    """`(status, code, message)` for a failure."""
    if isinstance(exc, BlockSizeMismatch):
        return 400, ERR_BLOCK_SIZE, str(exc)
    if isinstance(exc, BadBlockRef | BadRequest):
        return 400, ERR_BAD_REQUEST, str(exc)
    if isinstance(exc, UnknownMount):
        return 404, ERR_UNKNOWN_MOUNT, str(exc)
    if isinstance(exc, ObjectNotFound):
        return 404, ERR_OBJECT_GONE, f"the object is gone from the object store: {exc}"
    if isinstance(exc, ObjectChanged):
        return 412, ERR_OBJECT_CHANGED, f"the object changed in the object store (ETag differs): {exc}"
    if isinstance(exc, ObjectStoreDenied):
        return 502, ERR_STORE_DENIED, f"the object store refused the worker: {exc}"
    if isinstance(exc, ObjectStoreUnavailable):
        return 503, ERR_STORE_UNAVAILABLE, f"the object store failed: {exc}"
    if isinstance(exc, ObjectStoreError):
        return 502, ERR_STORE_FAILED, f"the object store failed: {exc}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return 504, ERR_STORE_TIMEOUT, "the object store did not answer in time"
    return 500, "internal", f"internal error: {type(exc).__name__}"
