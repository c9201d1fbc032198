"""The object store client for a Dataset mount: paged list, head, ranged get.

`oss://bucket/dir` mounts talk to Alibaba OSS through its S3-compatible API (endpoint option
`fs.oss.endpoint`); `s3://bucket/dir` mounts to any S3 endpoint (`fs.s3.endpoint`, `fs.s3.region`).
Addressing is virtual-hosted (OSS requires it) except for an IP or `localhost` endpoint, or when
`fs.<scheme>.path-style-access: "true"`. An endpoint without a scheme means https.

List and head go through aiobotocore. Ranged GETs — the data path, thousands per second — are signed
with botocore's SigV4 signer and sent on a plain aiohttp session: the full client costs ~5 ms of CPU per
request in its event/parse machinery, this path well under 1 ms (docs/objectstore.md has the numbers).

Every request runs in our own retry loop (botocore's retries are off, so the budget is ours and
testable): throttling (503 SlowDown, 429), other 5xx, connection errors, timeouts and truncated bodies
are retried under `eddy.retry.RetryPolicy` (exponential backoff, full jitter), then surface as
`ObjectStoreUnavailable`. Ranged GETs (the data path: a reader has a worker or another copy to try) get
`RetryPolicy.attempts` tries; LIST and HEAD — one failed LIST fails a whole DataLoad or mount — keep
retrying for a time budget, `RetryPolicy.budget` seconds (default 60; the mount option
`fs.eddy.retry-budget-seconds` sets it).
Errors are typed (`ObjectNotFound`, `ObjectChanged`, `ObjectStoreDenied`) and
name the operation and the object, never a credential: messages are scrubbed of the key pair and no
library exception is chained into them. botocore's DEBUG logging (which prints the Authorization
header, and so the access key id) is capped at INFO unless a user configures it explicitly.

A LIST page's `LastModified` values are parsed by `parse_s3_timestamp` (the ISO-8601 form S3 and
SeaweedFS send, `2024-01-02T03:04:05.000Z`, by `datetime.fromisoformat`; anything else by botocore's
default parser): botocore's own, through dateutil, was ~60% of a LIST's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import botocore.utils
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from prometheus_client import Counter
from yarl import URL

from eddy.api import Mount
from eddy.listing import ObjectInfo
from eddy.retry import RetriesExhausted, RetryPolicy, retrying
from eddy.secrets import Credentials, SecretSource, credentials_for

log = logging.getLogger(__name__)
T = TypeVar("T")

for _name in ("botocore", "aiobotocore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.INFO)

REQUESTS = Counter(
    "eddy_objectstore_requests", "Object store requests by operation and outcome", ["op", "outcome"]
)
RETRIES = Counter("eddy_objectstore_retries", "Object store request attempts that were retried", ["op"])
BYTES = Counter("eddy_objectstore_read_bytes", "Bytes read from the object store by ranged GETs")

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
_OSS_HOST = re.compile(r"^(?:s3\.)?oss-(?P<region>[a-z0-9-]+?)(?P<internal>-internal)?\.aliyuncs\.com$")


# --------------------------------------------------------------------------------------------- errors
Chunks = list[bytes]  # a body as received (named here: ObjectStore.list shadows the builtin in the class)


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


class _HttpError(Exception):
    """A non-2xx answer on the direct GET path: `(status, S3 error code, message)`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message


class _ShortBody(Exception):
    """The body ended before the announced length: retryable."""


class _Transient(Exception):
    """A failure worth another try, already translated into the error to report if none is left."""

    def __init__(self, error: ObjectStoreError) -> None:
        super().__init__(str(error))
        self.error = error


# ---------------------------------------------------------------------------------------------- model
DEFAULT_RETRY_BUDGET = 60.0
RETRY_BUDGET_OPTION = "fs.eddy.retry-budget-seconds"


def retry_budget(options: Mapping[str, str], default: float = DEFAULT_RETRY_BUDGET) -> float:
    """The mount's LIST/HEAD retry budget in seconds (option `fs.eddy.retry-budget-seconds`)."""
    raw = options.get(RETRY_BUDGET_OPTION)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"mount option {RETRY_BUDGET_OPTION}: {raw!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise ValueError(f"mount option {RETRY_BUDGET_OPTION}: {raw!r} is not between 0 and 86400 seconds")
    return value


# Ranged GETs: 6 tries, the first included; LIST and HEAD: retry until the budget is spent. Pauses are
# uniform in [0, min(5 s, 0.1 s * 2**(n-1))] (full jitter). A policy without a budget gets this one's.
DEFAULT_RETRY = RetryPolicy(initial=0.1, maximum=5.0, jitter=1.0, attempts=6, budget=DEFAULT_RETRY_BUDGET)


@functools.lru_cache(maxsize=64)
def _limited(policy: RetryPolicy, budgeted: bool) -> RetryPolicy:
    """The policy with one limit: LIST and HEAD the time budget alone, ranged GETs the tries alone."""
    return replace(policy, attempts=None) if budgeted else replace(policy, budget=None)


_S3_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z", re.ASCII)


def parse_s3_timestamp(value: Any) -> datetime:
    """A response timestamp as botocore's default parser gives it (an aware UTC datetime), fast for the
    form S3 and SeaweedFS use in LIST pages (`2024-01-02T03:04:05.000Z`: ~0.2 us against ~45 us through
    dateutil, ~60% of a 600-key LIST's CPU); other forms (HEAD's RFC 822 dates, epochs, offsets) go to
    botocore's parser. Digits past microseconds are dropped, as botocore drops them."""
    if isinstance(value, str) and _S3_TIMESTAMP.fullmatch(value):
        return datetime.fromisoformat(value)  # Python 3.11: "Z" is UTC, 1-9 fraction digits
    parsed: datetime = botocore.utils.parse_timestamp(value)
    return parsed


@functools.cache
def _session() -> Any:
    """One shared aiobotocore session: it caches the S3 service model, which costs ~0.5 s to load. Its
    response parsers read timestamps with `parse_s3_timestamp`."""
    session = get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_s3_timestamp)
    return session


def _strip_etag(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def endpoint_settings(scheme: str, endpoint: str, options: Mapping[str, str]) -> tuple[str | None, str, bool]:
    """`(endpoint_url, region, path_style)` for a mount; pure, so the addressing rules are unit-testable.

    A Jindo-style OSS endpoint (`oss-cn-hangzhou.aliyuncs.com`) becomes its S3-compatible form
    (`https://s3.oss-cn-hangzhou.aliyuncs.com`, region `cn-hangzhou`).
    """
    region = options.get(f"fs.{scheme}.region", "")
    url: str | None = None
    if endpoint:
        url = endpoint if "://" in endpoint else f"https://{endpoint}"
        parts = urlsplit(url)
        host = parts.hostname or ""
        match = _OSS_HOST.match(host)
        if match and scheme == "oss":
            region = region or match["region"]
            if not host.startswith("s3."):
                url = f"{parts.scheme}://s3.{parts.netloc}{parts.path}".rstrip("/")
    path_style = _truthy(options.get(f"fs.{scheme}.path-style-access"))
    if url is not None and not path_style:
        host = urlsplit(url).hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            path_style = True
        else:
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(host)
                path_style = True
    return url, region or "us-east-1", path_style


def _env_credentials() -> tuple[Credentials | None, str | None]:
    """botocore's environment credentials, for mounts that name none (no network probing)."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return Credentials(key, secret), os.environ.get("AWS_SESSION_TOKEN") or None
    return None, None


# ---------------------------------------------------------------------------------------------- store
@dataclass(eq=False)
class ObjectStore:
    """An async client for one bucket and key prefix. Use `async with`, or call `close()`.

    Without credentials (none on the mount, none in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) requests
    are anonymous, for public buckets.
    """

    scheme: str
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    path_style: bool = False
    credentials: Credentials | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_connections: int = 32
    request_timeout: float = 30.0
    connect_timeout: float = 10.0
    retry: RetryPolicy = DEFAULT_RETRY
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _client: Any = field(default=None, repr=False)
    _http: aiohttp.ClientSession | None = field(default=None, repr=False)
    _stack: AsyncExitStack | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.credentials is None:
            self.credentials, self.session_token = _env_credentials()
        if self.endpoint_url is None:
            self.endpoint_url = f"https://s3.{self.region}.amazonaws.com"
        if self.retry.budget is None:
            self.retry = replace(self.retry, budget=DEFAULT_RETRY_BUDGET)

    @classmethod
    def for_mount(
        cls,
        mount: Mount,
        secrets: SecretSource | None = None,
        *,
        max_connections: int = 32,
        request_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> ObjectStore:
        """A store for a Dataset mount; credentials come from its options or, via `secrets`, its Secrets."""
        url, region, path_style = endpoint_settings(mount.scheme, mount.endpoint, mount.options)
        policy = retry or DEFAULT_RETRY
        if RETRY_BUDGET_OPTION in mount.options:
            policy = replace(policy, budget=retry_budget(mount.options))
        return cls(
            scheme=mount.scheme, bucket=mount.bucket, prefix=mount.prefix, endpoint_url=url, region=region,
            path_style=path_style, credentials=credentials_for(mount, secrets),
            max_connections=max_connections, request_timeout=request_timeout, retry=policy,
        )

    # ------------------------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> ObjectStore:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        stack, self._stack, self._client, self._http = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    async def _open(self) -> Any:
        """The aiobotocore client (list, head) and the aiohttp session (GETs), created once."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                config = AioConfig(
                    max_pool_connections=self.max_connections,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.request_timeout,
                    retries={"total_max_attempts": 1},  # our loop retries, see _call
                    s3={"addressing_style": "path" if self.path_style else "virtual"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    signature_version=None if self.credentials else UNSIGNED,
                )
                kwargs: dict[str, Any] = {
                    "region_name": self.region, "config": config, "endpoint_url": self.endpoint_url,
                }
                if self.credentials is not None:
                    kwargs["aws_access_key_id"] = self.credentials.access_key
                    kwargs["aws_secret_access_key"] = self.credentials.secret_key
                    kwargs["aws_session_token"] = self.session_token
                stack = AsyncExitStack()
                client = await stack.enter_async_context(_session().create_client("s3", **kwargs))
                self._http = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self.max_connections),
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=self.connect_timeout, sock_read=self.request_timeout
                    ),
                    auto_decompress=False,
                )
                stack.push_async_callback(self._http.close)
                self._stack, self._client = stack, client
        return self._client

    # ------------------------------------------------------------------------------------ operations
    def uri(self, key: str = "") -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}{key}"

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object under `prefix` (relative to the mount), page by page, keys relative to the mount."""
        client = await self._open()
        token: str | None = None
        while True:
            params: dict[str, Any] = {
                "Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": page_size
            }
            if token:
                params["ContinuationToken"] = token
            page: dict[str, Any] = await self._call(
                "ListObjectsV2", self.uri(prefix), functools.partial(client.list_objects_v2, **params),
                budgeted=True,
            )
            for item in page.get("Contents", ()):
                key = str(item["Key"])[len(self.prefix):]
                if key:  # skip the mount root's own "dir/" marker
                    yield ObjectInfo(key, int(item["Size"]), _strip_etag(item.get("ETag", "")),
                                     item["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def head(self, key: str) -> ObjectInfo:
        client = await self._open()
        meta = await self._call(
            "HeadObject", self.uri(key),
            lambda: client.head_object(Bucket=self.bucket, Key=self.prefix + key), budgeted=True,
        )
        return ObjectInfo(key, int(meta["ContentLength"]), _strip_etag(meta.get("ETag", "")),
                          meta["LastModified"].timestamp())

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes `[start, end)` of an object (fewer if it ends sooner); `etag` pins the version.

        An empty range returns b"" without a request, a range starting at or past the end b"" after one
        (HTTP 416). With `etag`, another version raises ObjectChanged
        (If-Match gets a 412; the returned ETag is checked as well, for servers that ignore If-Match).
        """
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return b""
        await self._open()

        async def attempt() -> bytes:
            async with self._ranged(key, start, end, etag) as resp:
                if resp is None:
                    return b""
                # One copy: join the received chunks once (resp.read() joins twice, ~2x the CPU on 8 MiB).
                data = b"".join([chunk async for chunk, _ in resp.content.iter_chunks()])
                content_range = resp.headers.get("Content-Range", "")
            if not content_range:  # a server that ignored Range sent the whole object
                data = data[start:end]
            _check_length(content_range, start, end, len(data))
            return data

        data = await self._call("GetObject", self.uri(key), attempt)
        BYTES.inc(len(data))
        return data

    async def get_range_chunks(self, key: str, start: int, end: int, etag: str | None = None) -> Chunks:
        """`get_range` as the received chunks, never joined: a caller that writes them out (`os.writev`)
        and checksums them chunk by chunk never assembles the body in a second buffer."""
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return []
        await self._open()

        async def attempt() -> Chunks:
            async with self._ranged(key, start, end, etag) as resp:
                if resp is None:
                    return []
                chunks = [chunk async for chunk, _ in resp.content.iter_chunks()]
                content_range = resp.headers.get("Content-Range", "")
            if not content_range:  # a server that ignored Range sent the whole object
                chunks = [b"".join(chunks)[start:end]]
            _check_length(content_range, start, end, sum(len(c) for c in chunks))
            return chunks

        chunks = await self._call("GetObject", self.uri(key), attempt)
        BYTES.inc(sum(len(c) for c in chunks))
        return chunks

    @contextlib.asynccontextmanager
    async def _ranged(
        self, key: str, start: int, end: int, etag: str | None
    ) -> AsyncIterator[aiohttp.ClientResponse | None]:
        """One signed ranged GET; yields the checked response, or None when the range starts past the end."""
        assert self._http is not None
        url, headers = self.ranged_request(key, start, end, etag)
        async with self._http.get(URL(url, encoded=True), headers=headers, allow_redirects=False) as resp:
            if resp.status == 416:  # the range starts at or past the end: nothing to read, like read(2)
                yield None
                return
            if resp.status >= 300:
                raise _HttpError(resp.status, *_parse_error(await resp.read()))
            got = _strip_etag(resp.headers.get("ETag", ""))
            if etag and got and got != etag:
                raise ObjectChanged(f"GetObject {self.uri(key)}: ETag is now {got!r}, expected {etag!r}",
                                    code="ETagMismatch", status=resp.status)
            yield resp

    def ranged_request(self, key: str, start: int, end: int, etag: str | None) -> tuple[str, dict[str, str]]:
        """The URL and signed headers of a GET of bytes `[start, end)` pinned to `etag` (If-Match): what
        `_ranged` sends, for a caller that sends it on its own connection (the worker's read-through
        fast path, worker/rangefetch.py, which leaves every answer but a plain 206 to this client)."""
        url = self._object_url(key)
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        return url, self._sign("GET", url, headers)

    def _object_url(self, key: str) -> str:
        parts = urlsplit(self.endpoint_url or "")
        path = quote(self.prefix + key, safe="/~")
        base = parts.path.rstrip("/")
        if self.path_style:
            return f"{parts.scheme}://{parts.netloc}{base}/{self.bucket}/{path}"
        return f"{parts.scheme}://{self.bucket}.{parts.netloc}{base}/{path}"

    def _sign(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        if self.credentials is None:
            return headers
        request = botocore.awsrequest.AWSRequest(method=method, url=url, headers=headers)
        creds = botocore.credentials.Credentials(*self.credentials, token=self.session_token)
        botocore.auth.S3SigV4Auth(creds, "s3", self.region).add_auth(request)
        return dict(request.headers.items())

    # --------------------------------------------------------------------------------------- retries
    async def _call(
        self, op: str, where: str, fn: Callable[[], Awaitable[T]], *, budgeted: bool = False
    ) -> T:
        """Run `fn` under the retry policy; translate every failure into a typed, scrubbed error.

        Not `budgeted`: at most `retry.attempts` tries. Budgeted: tries until the next pause would end
        more than `retry.budget` seconds after the first try began (at least one try, whatever the budget).
        """
        policy = _limited(self.retry, budgeted)

        async def once() -> T:
            try:
                return await fn()
            except ObjectStoreError:
                raise
            except Exception as exc:
                transient, error = self._translate(op, where, exc)
                if not transient:
                    raise error from None
                raise _Transient(error) from None

        def note(failures: int, pause: float, exc: BaseException) -> None:
            RETRIES.labels(op).inc()
            log.info("%s; retry %d in %.2fs", exc, failures, pause)

        try:
            result = await retrying(once, policy, retry_on=_Transient, rng=self.rng, on_retry=note)
        except RetriesExhausted as gave_up:
            REQUESTS.labels(op, "unavailable").inc()
            assert isinstance(gave_up.last, _Transient)  # the only failure retried
            error = gave_up.last.error
            how = f"{gave_up.tries} attempts"
            if budgeted:
                how += f" in the {policy.budget:g}s retry budget"
            raise ObjectStoreUnavailable(
                f"{error} (gave up after {how})", code=error.code, status=error.status
            ) from None
        except ObjectStoreError:
            REQUESTS.labels(op, "error").inc()
            raise
        REQUESTS.labels(op, "ok").inc()
        return result

    def _translate(self, op: str, where: str, exc: Exception) -> tuple[bool, ObjectStoreError]:
        """(transient?, error) for a failure; the text holds no library message but the server's."""
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = str(err.get("Code", "") or status)
            return self._classify(op, where, status, code, str(err.get("Message", "")))
        if isinstance(exc, _HttpError):
            return self._classify(op, where, exc.status, exc.code or str(exc.status), exc.message)
        kind = type(exc).__name__
        if isinstance(exc, _ShortBody):
            return True, ObjectStoreError(f"{op} {where}: {exc}", code=kind)
        if isinstance(exc, _TRANSIENT_ERRORS):
            return True, ObjectStoreError(self._scrub(f"{op} {where}: {kind}"), code=kind)
        return False, ObjectStoreError(self._scrub(f"{op} {where}: {kind}: {exc}"), code=kind)

    def _classify(
        self, op: str, where: str, status: int, code: str, message: str
    ) -> tuple[bool, ObjectStoreError]:
        text = self._scrub(f"{op} {where}: {code} (HTTP {status})" + (f": {message}" if message else ""))
        if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
            return True, ObjectStoreError(text, code=code, status=status)
        if status == 404 or code in _NOT_FOUND_CODES:
            return False, ObjectNotFound(text, code=code, status=status)
        if status == 412 or code == "PreconditionFailed":
            return False, ObjectChanged(text, code=code, status=status)
        if status in (401, 403) or code in _DENIED_CODES:
            return False, ObjectStoreDenied(text, code=code, status=status)
        return False, ObjectStoreError(text, code=code, status=status)

    def _scrub(self, text: str) -> str:
        for value in (*(self.credentials or ()), self.session_token):
            if value:
                text = text.replace(value, "***")
        return text


def _parse_error(body: bytes) -> tuple[str, str]:
    """`(Code, Message)` of an S3 XML error body; empty strings when there is none (e.g. HEAD)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return (root.findtext("Code") or "", root.findtext("Message") or "")


def _check_length(content_range: str, start: int, end: int, got: int) -> None:
    """A ranged GET must return up to `end`, clipped to the size in `bytes a-b/size`; else retry."""
    total = content_range.rsplit("/", 1)[-1] if "/" in content_range else ""
    if total.isdigit():
        expected = max(0, min(end, int(total)) - start)
        if got != expected:
            raise _ShortBody(f"short body: {got} of {expected} bytes")
