"""The object store's data path: one ranged GET, signed with botocore's SigV4 signer and sent on a
plain aiohttp session (eddy/objectstore.py runs it under its retry loop).

The full aiobotocore client costs ~5 ms of CPU per request in its event/parse machinery, this path
well under 1 ms (docs/objectstore.md has the numbers). The body is kept as the received chunks and
joined at most once.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import aiohttp
import botocore.auth
import botocore.awsrequest
import botocore.credentials
from prometheus_client import Counter
from yarl import URL

from eddy.objectstore_errors import HttpError, ObjectChanged, ShortBody
from eddy.secrets import Credentials

BYTES = Counter("eddy_objectstore_read_bytes", "Bytes read from the object store by ranged GETs")

Chunks = list[bytes]  # a body as received


def open_http(max_connections: int, connect_timeout: float, request_timeout: float) -> aiohttp.ClientSession:
    """The session the ranged GETs are sent on (no decompression: the bytes are the object's)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=request_timeout),
        auto_decompress=False,
    )


def strip_etag(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def object_url(endpoint_url: str | None, bucket: str, key: str, *, path_style: bool) -> str:
    """The URL of the object `key` (the whole key, the mount's prefix included)."""
    parts = urlsplit(endpoint_url or "")
    path = quote(key, safe="/~")
    base = parts.path.rstrip("/")
    if path_style:
        return f"{parts.scheme}://{parts.netloc}{base}/{bucket}/{path}"
    return f"{parts.scheme}://{bucket}.{parts.netloc}{base}/{path}"


def range_headers(start: int, end: int, etag: str | None) -> dict[str, str]:
    """`Range` for bytes `[start, end)`, and `If-Match` when `etag` pins the version."""
    headers = {"Range": f"bytes={start}-{end - 1}"}
    if etag:
        headers["If-Match"] = f'"{etag}"'
    return headers


def sign(
    method: str, url: str, headers: dict[str, str], credentials: Credentials | None,
    session_token: str | None, region: str,
) -> dict[str, str]:
    """`headers` with a SigV4 signature for `method url` (unchanged without credentials: anonymous)."""
    if credentials is None:
        return headers
    request = botocore.awsrequest.AWSRequest(method=method, url=url, headers=headers)
    creds = botocore.credentials.Credentials(*credentials, token=session_token)
    botocore.auth.S3SigV4Auth(creds, "s3", region).add_auth(request)
    return dict(request.headers.items())


@contextlib.asynccontextmanager
async def ranged(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], etag: str | None, where: str
) -> AsyncIterator[aiohttp.ClientResponse | None]:
    """One signed ranged GET; yields the checked response, or None when the range starts past the end.
    `where` names the object in errors."""
    async with http.get(URL(url, encoded=True), headers=headers, allow_redirects=False) as resp:
        if resp.status == 416:  # the range starts at or past the end: nothing to read, like read(2)
            yield None
            return
        if resp.status >= 300:
            raise HttpError(resp.status, *_parse_error(await resp.read()))
        got = strip_etag(resp.headers.get("ETag", ""))
        if etag and got and got != etag:
            raise ObjectChanged(f"GetObject {where}: ETag is now {got!r}, expected {etag!r}",
                                code="ETagMismatch", status=resp.status)
        yield resp


async def read_range_chunks(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], start: int, end: int, etag: str | None,
    where: str,
) -> Chunks:
    """One attempt at bytes `[start, end)`, as the received chunks (never joined here: a caller joins them
    once, where resp.read() joins twice, ~2x the CPU on 8 MiB)."""
    async with ranged(http, url, headers, etag, where) as resp:
        if resp is None:
            return []
        chunks = [chunk async for chunk, _ in resp.content.iter_chunks()]
        content_range = resp.headers.get("Content-Range", "")
    if not content_range:  # a server that ignored Range sent the whole object
        chunks = [b"".join(chunks)[start:end]]
    _check_length(content_range, start, end, sum(len(c) for c in chunks))
    return chunks


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
            raise ShortBody(f"short body: {got} of {expected} bytes")
