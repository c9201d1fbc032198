"""The object store client for a Dataset mount: paged list, head, ranged get.

`oss://bucket/dir` mounts talk to Alibaba OSS through its S3-compatible API (endpoint option
`fs.oss.endpoint`); `s3://bucket/dir` mounts to any S3 endpoint (`fs.s3.endpoint`, `fs.s3.region`).
Addressing is virtual-hosted (OSS requires it) except for an IP or `localhost` endpoint, or when
`fs.<scheme>.path-style-access: "true"`. An endpoint without a scheme means https.

List and head go through aiobotocore (eddy/objectstore_meta.py). Ranged GETs — the data path, thousands
per second — are signed with botocore's SigV4 signer and sent on a plain aiohttp session
(eddy/objectstore_ranged.py): the full client costs ~5 ms of CPU per request in its event/parse
machinery, this path well under 1 ms (docs/objectstore.md has the numbers). This module holds what they
share: the mount's settings, the sessions' lifecycle and the retry loop.

Every request runs in our own retry loop (botocore's retries are off, so the budget is ours and
testable): throttling (503 SlowDown, 429), other 5xx, connection errors, timeouts and truncated bodies
are retried under `eddy.retry.RetryPolicy` (exponential backoff, full jitter), then surface as
`ObjectStoreUnavailable`. Ranged GETs (the data path: a reader has a worker or another copy to try) get
`RetryPolicy.attempts` tries; LIST and HEAD — one failed LIST fails a whole DataLoad or mount — keep
retrying for a time budget, `RetryPolicy.budget` seconds (default 60; the mount option
`fs.eddy.retry-budget-seconds` sets it).
Errors are typed (`ObjectNotFound`, `ObjectChanged`, `ObjectStoreDenied`; eddy/objectstore_errors.py)
and name the operation and the object, never a credential: messages are scrubbed of the key pair and no
library exception is chained into them. botocore's DEBUG logging (which prints the Authorization
header, and so the access key id) is capped at INFO unless a user configures it explicitly.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter

from eddy import objectstore_meta as meta
from eddy import objectstore_ranged as ranged
from eddy.api import Mount
from eddy.listing import ObjectInfo
from eddy.objectstore_errors import (
    ObjectChanged,
    ObjectNotFound,
    ObjectStoreDenied,
    ObjectStoreError,
    ObjectStoreUnavailable,
    Transient,
    translate,
)
from eddy.objectstore_ranged import Chunks
from eddy.retry import RetriesExhausted, RetryPolicy, retrying
from eddy.secrets import Credentials, SecretSource, credentials_for

# The errors are part of this client's API: callers import them from here.
__all__ = [
    "DEFAULT_RETRY", "DEFAULT_RETRY_BUDGET", "REQUESTS", "RETRIES", "RETRY_BUDGET_OPTION", "Chunks",
    "ObjectChanged", "ObjectNotFound", "ObjectStore", "ObjectStoreDenied", "ObjectStoreError",
    "ObjectStoreUnavailable", "endpoint_settings", "retry_budget",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

for _name in ("botocore", "aiobotocore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.INFO)

REQUESTS = Counter(
    "eddy_objectstore_requests", "Object store requests by operation and outcome", ["op", "outcome"]
)
RETRIES = Counter("eddy_objectstore_retries", "Object store request attempts that were retried", ["op"])

_OSS_HOST = re.compile(r"^(?:s3\.)?oss-(?P<region>[a-z0-9-]+?)(?P<internal>-internal)?\.aliyuncs\.com$")

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
                stack = AsyncExitStack()
                client = await meta.open_client(
                    stack, region=self.region, endpoint_url=self.endpoint_url, path_style=self.path_style,
                    credentials=self.credentials, session_token=self.session_token,
                    max_connections=self.max_connections, connect_timeout=self.connect_timeout,
                    request_timeout=self.request_timeout,
                )
                self._http = ranged.open_http(
                    self.max_connections, self.connect_timeout, self.request_timeout
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
            for info in meta.page_objects(page, self.prefix):
                yield info
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def head(self, key: str) -> ObjectInfo:
        client = await self._open()
        answer = await self._call(
            "HeadObject", self.uri(key),
            lambda: client.head_object(Bucket=self.bucket, Key=self.prefix + key), budgeted=True,
        )
        return meta.head_object(key, answer)

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes `[start, end)` of an object (fewer if it ends sooner); `etag` pins the version.

        An empty range returns b"" without a request, a range starting at or past the end b"" after one
        (HTTP 416). With `etag`, another version raises ObjectChanged
        (If-Match gets a 412; the returned ETag is checked as well, for servers that ignore If-Match).
        """
        # One copy: the received chunks joined once (one chunk, as when a server ignored Range, as it is).
        return b"".join(await self.get_range_chunks(key, start, end, etag))

    async def get_range_chunks(self, key: str, start: int, end: int, etag: str | None = None) -> Chunks:
        """`get_range` as the received chunks, never joined: a caller that writes them out (`os.writev`)
        and checksums them chunk by chunk never assembles the body in a second buffer."""
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return []
        await self._open()

        async def attempt() -> Chunks:
            assert self._http is not None
            url, headers = self.ranged_request(key, start, end, etag)
            return await ranged.read_range_chunks(self._http, url, headers, start, end, etag, self.uri(key))

        chunks = await self._call("GetObject", self.uri(key), attempt)
        ranged.BYTES.inc(sum(len(c) for c in chunks))
        return chunks

    def ranged_request(self, key: str, start: int, end: int, etag: str | None) -> tuple[str, dict[str, str]]:
        """The URL and signed headers of a GET of bytes `[start, end)` pinned to `etag` (If-Match): what
        `get_range` sends, for a caller that sends it on its own connection (the worker's read-through
        fast path, worker/rangefetch.py, which leaves every answer but a plain 206 to this client)."""
        url = self._object_url(key)
        headers = ranged.range_headers(start, end, etag)
        return url, ranged.sign("GET", url, headers, self.credentials, self.session_token, self.region)

    def _object_url(self, key: str) -> str:
        return ranged.object_url(
            self.endpoint_url, self.bucket, self.prefix + key, path_style=self.path_style
        )

    # --------------------------------------------------------------------------------------- retries
    async def _call(
        self, op: str, where: str, fn: Callable[[], Awaitable[T]], *, budgeted: bool = False
    ) -> T:
        """Run `fn` under the retry policy; translate every failure into a typed, scrubbed error.

        Not `budgeted`: at most `retry.attempts` tries. Budgeted: tries until the next pause would end
        more than `retry.budget` seconds after the first try began (at least one try, whatever the budget).
        """
        policy = _limited(self.retry, budgeted)
        secrets = (*(self.credentials or ()), self.session_token)

        async def once() -> T:
            try:
                return await fn()
            except ObjectStoreError:
                raise
            except Exception as exc:
                transient, error = translate(op, where, exc, secrets)
                if not transient:
                    raise error from None
                raise Transient(error) from None

        def note(failures: int, pause: float, exc: BaseException) -> None:
            RETRIES.labels(op).inc()
            log.info("%s; retry %d in %.2fs", exc, failures, pause)

        try:
            result = await retrying(once, policy, retry_on=Transient, rng=self.rng, on_retry=note)
        except RetriesExhausted as gave_up:
            REQUESTS.labels(op, "unavailable").inc()
            assert isinstance(gave_up.last, Transient)  # the only failure retried
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
