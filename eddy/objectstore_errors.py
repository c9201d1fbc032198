"""The object store's typed errors, and how a failed request becomes one (eddy/objectstore.py).

Every failure — a botocore `ClientError` from LIST or HEAD, a non-2xx answer or a short body on the
ranged-GET path, a connection error or timeout — is translated into an `ObjectStoreError` that names
the operation and the object, and into whether another try may cure it. The text holds no library
message (only the server's own) and is scrubbed of the key pair, and no library exception is chained
into it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp
import botocore.exceptions

_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
     "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "InvalidToken",
     "ExpiredToken"}
)
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError,
    botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError,
    aiohttp.ClientError, asyncio.TimeoutError, ConnectionError,
)


class ObjectStoreError(Exception):
    """Base of every object store error; the text names operation and object, never a credential."""

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ObjectNotFound(ObjectStoreError):
    """The object (or the bucket) does not exist."""


class ObjectChanged(ObjectStoreError):
    """The object no longer has the pinned ETag (HTTP 412, or the server returned another ETag)."""


class ObjectStoreDenied(ObjectStoreError):
    """The store refused the credentials or the access (403, unknown key id, bad signature)."""


class ObjectStoreUnavailable(ObjectStoreError):
    """Transient failures (throttling, 5xx, timeouts, connection errors) outlasted the retry budget."""


class HttpError(Exception):
    """A non-2xx answer on the direct GET path: `(status, S3 error code, message)`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message


class ShortBody(Exception):
    """The body ended before the announced length: retryable."""


class Transient(Exception):
    """A failure worth another try, already translated into the error to report if none is left."""

    def __init__(self, error: ObjectStoreError) -> None:
        super().__init__(str(error))
        self.error = error


def translate(
    op: str, where: str, exc: Exception, secrets: Iterable[str | None]
) -> tuple[bool, ObjectStoreError]:
    """(transient?, error) for a failure; the text holds no library message but the server's, and none
    of `secrets`."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = str(err.get("Code", "") or status)
        return _classify(op, where, status, code, str(err.get("Message", "")), secrets)
    if isinstance(exc, HttpError):
        return _classify(op, where, exc.status, exc.code or str(exc.status), exc.message, secrets)
    kind = type(exc).__name__
    if isinstance(exc, ShortBody):
        return True, ObjectStoreError(f"{op} {where}: {exc}", code=kind)
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True, ObjectStoreError(scrub(f"{op} {where}: {kind}", secrets), code=kind)
    return False, ObjectStoreError(scrub(f"{op} {where}: {kind}: {exc}", secrets), code=kind)


def _classify(
    op: str, where: str, status: int, code: str, message: str, secrets: Iterable[str | None]
) -> tuple[bool, ObjectStoreError]:
    text = scrub(f"{op} {where}: {code} (HTTP {status})" + (f": {message}" if message else ""), secrets)
    if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
        return True, ObjectStoreError(text, code=code, status=status)
    if status == 404 or code in _NOT_FOUND_CODES:
        return False, ObjectNotFound(text, code=code, status=status)
    if status == 412 or code == "PreconditionFailed":
        return False, ObjectChanged(text, code=code, status=status)
    if status in (401, 403) or code in _DENIED_CODES:
        return False, ObjectStoreDenied(text, code=code, status=status)
    return False, ObjectStoreError(text, code=code, status=status)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every one of `secrets` (the key pair, the session token) replaced by `***`."""
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return text
