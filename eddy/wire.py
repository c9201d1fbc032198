"""The worker's HTTP API: paths and the JSON shapes both sides share.

A worker serves one dataset. Every block reference travels as the same fields
(`mount`, `key`, `etag`, `index`, `size` = object size, `block_size`):

- `GET  /v1/block?mount=&key=&etag=&index=&size=&block_size=` → the block's bytes
  (`Range: bytes=a-b` inside the block is honoured with 206). Headers: `X-Eddy-Cache: hit|miss`,
  `X-Eddy-Tier: MEM|SSD|HDD`, `X-Eddy-Crc32c` (of the whole block). A miss reads through from the
  object store, keeps the block and serves it.
- `POST /v1/warm` `{"blocks": [ref, ...]}` → `{"results": [{"index": i, "status": "cached"|"fetched"|
  "error", "tier": ..., "bytes": n, "error": "..."}]}`; idempotent, bounded concurrency inside.
- `PUT|GET /v1/meta/{name}` → an opaque small blob (the preloader's listing snapshot).
- `GET  /v1/stats` → `{"dataset": "ns/name", "cached_bytes": n, "blocks": n,
  "levels": [{"mediumtype", "path", "quota", "used", "blocks", "high", "low"}]}`.
- `DELETE /v1/blocks` → purge every block of the dataset.
- `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text).

Errors are JSON `{"error": "<code>", "message": "<human text>"}` with a 4xx/5xx status.

Authentication (docs/worker.md, "Security"): a worker given tokens wants `Authorization: Bearer <token>`
on every `/v1/` request. The read token opens `GET /v1/block`, `GET /v1/meta/*` and `GET /v1/stats`;
the admin token opens those and `POST /v1/warm`, `PUT /v1/meta/*`, `DELETE /v1/blocks`. A missing or
wrong token gets 401 `unauthorized`, a read token on an admin path 403 `forbidden`. The controller keeps
both in the Secret `<dataset>-eddy-token` (keys `read`, `admin`); pods get them as mounted files under
`TOKEN_DIR` (sidecars only `read`), never as environment variables.

The block size is the worker's (its config file's `blockSize`, or `eddy worker --block-size`): a request
naming another `block_size` gets 400 `block_size_mismatch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eddy.blocks import DEFAULT_BLOCK_SIZE, BlockRef

BLOCK_PATH = "/v1/block"
WARM_PATH = "/v1/warm"
META_PATH = "/v1/meta/{name}"
STATS_PATH = "/v1/stats"
PURGE_PATH = "/v1/blocks"

HEADER_CACHE = "X-Eddy-Cache"
HEADER_TIER = "X-Eddy-Tier"
HEADER_CRC = "X-Eddy-Crc32c"

# Metadata blob name under which the preloader stores the listing snapshot (loadMetadata: true).
LISTING_SNAPSHOT = "listing"

# Optional on every request (query parameter; also a `"dataset"` field of the warm body): the
# `namespace/name` (or bare `name`) of the dataset the caller means. A worker serving another dataset
# answers 404 `unknown_dataset`, so a misrouted request never reads another dataset's cache.
DATASET_PARAM = "dataset"

# Meta blobs are small (a listing snapshot); a bigger PUT gets 413, one that would take the worker's
# blobs past META_MAX_TOTAL (all names together) 507.
META_MAX_BYTES = 64 * 1024 * 1024
META_MAX_TOTAL = 128 * 1024 * 1024

# Object keys in block references: at most this many UTF-8 bytes (S3's own limit), no NUL or other
# control character, no "." or ".." segment, no leading "/" (keys are relative to the mount's prefix).
MAX_KEY_BYTES = 1024
MAX_ETAG_CHARS = 256
MAX_OBJECT_SIZE = 1 << 53  # 8 PiB: any bigger "size" is not a real object (S3's maximum is 5 TiB)

# Tokens: `Authorization: Bearer <token>`; the Secret `<dataset>-eddy-token` holds both roles' tokens.
AUTH_HEADER = "Authorization"
TOKEN_DIR = "/etc/eddy/worker-token"  # where pods mount the token Secret (sidecars: only `read`)
TOKEN_READ_KEY = "read"
TOKEN_ADMIN_KEY = "admin"
TOKEN_FILE_ENV = "EDDY_WORKER_TOKEN_FILE"  # optional: the *path* of a token file (never the token)

# The `"error"` codes of JSON error bodies, with the status each comes with.
ERR_BAD_REQUEST = "bad_request"  # 400: malformed block reference, body or parameter
ERR_UNKNOWN_DATASET = "unknown_dataset"  # 404
ERR_UNKNOWN_MOUNT = "unknown_mount"  # 404: the dataset has no mount of that name
ERR_NOT_FOUND = "not_found"  # 404: no meta blob of that name
ERR_OBJECT_GONE = "object_gone"  # 404: the object no longer exists in the object store
ERR_OBJECT_CHANGED = "object_changed"  # 412: the object's ETag is not the block's
ERR_RANGE = "range_not_satisfiable"  # 416: a Range outside the block
ERR_TOO_LARGE = "too_large"  # 413: a meta blob over META_MAX_BYTES
ERR_STORE_DENIED = "object_store_denied"  # 502: the object store refused the worker's credentials
ERR_STORE_FAILED = "object_store_error"  # 502: the object store answered with an error
ERR_STORE_UNAVAILABLE = "object_store_unavailable"  # 503: the object store kept failing (retries spent)
ERR_STORE_TIMEOUT = "object_store_timeout"  # 504
ERR_CACHE_FULL = "cache_full"  # warm result only: the block does not fit in any level
ERR_UNAUTHORIZED = "unauthorized"  # 401: no token, or not one of this worker's
ERR_FORBIDDEN = "forbidden"  # 403: the read token on an admin path
ERR_BLOCK_SIZE = "block_size_mismatch"  # 400: a block_size other than the worker's
ERR_META_FULL = "meta_full"  # 507: the meta blobs would pass META_MAX_TOTAL
ERR_TIMEOUT = "request_timeout"  # 408: the request body did not arrive in time


def token_secret_name(dataset: str) -> str:
    """The Secret holding a Dataset's worker tokens (created by the controller, owned by the Dataset)."""
    return f"{dataset}-eddy-token"


def bad_key_reason(key: str) -> str | None:
    """Why `key` is not a key a worker may fetch (relative to the mount's prefix), or None if it is."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "holds a NUL or another control character"
    if key.startswith("/"):
        return "starts with '/' (keys are relative to the mount)"
    if any(part in (".", "..") for part in key.split("/")):
        return "has a '.' or '..' segment"
    return None


def ref_to_params(ref: BlockRef) -> dict[str, str]:
    return {
        "mount": ref.mount,
        "key": ref.key,
        "etag": ref.etag,
        "index": str(ref.index),
        "size": str(ref.object_size),
        "block_size": str(ref.block_size),
    }


def ref_to_json(ref: BlockRef) -> dict[str, Any]:
    return {
        "mount": ref.mount,
        "key": ref.key,
        "etag": ref.etag,
        "index": ref.index,
        "size": ref.object_size,
        "block_size": ref.block_size,
    }


class BadBlockRef(ValueError):
    """A block reference that is missing a field or holds a value of the wrong form."""


class BlockSizeMismatch(BadBlockRef):
    """A block reference whose `block_size` is not the worker's."""


def ref_from_mapping(raw: Mapping[str, Any], *, block_size: int | None = None) -> BlockRef:
    """Parse a reference from query parameters or JSON; raises BadBlockRef naming the field.

    With `block_size` (a worker's own), a reference without the field gets it and one naming another
    size raises BlockSizeMismatch: the caller never chooses how much a worker reads per block.
    """
    try:
        mount = str(raw["mount"])
        key = str(raw["key"])
        etag = str(raw["etag"])
    except KeyError as missing:
        raise BadBlockRef(f"block reference is missing {missing.args[0]!r}") from None
    if not mount or not key:
        raise BadBlockRef("block reference needs a non-empty mount and key")
    why = bad_key_reason(key)
    if why is not None:
        raise BadBlockRef(f"block reference key {why}")
    if len(etag) > MAX_ETAG_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in etag):
        raise BadBlockRef(f"block reference etag is longer than {MAX_ETAG_CHARS} characters or holds "
                          "a control character")
    numbers: dict[str, int] = {}
    own = block_size or DEFAULT_BLOCK_SIZE
    for name, default in (("index", None), ("size", None), ("block_size", own)):
        value = raw.get(name, default)
        if value is None:
            raise BadBlockRef(f"block reference is missing {name!r}")
        try:
            if not isinstance(value, int | str) or isinstance(value, bool) or len(str(value)) > 20:
                raise ValueError
            numbers[name] = int(value)
        except (TypeError, ValueError):
            raise BadBlockRef(
                f"block reference field {name!r} is not an integer: {str(value)[:40]!r}"
            ) from None
        if numbers[name] < 0:
            raise BadBlockRef(f"block reference field {name!r} is negative: {value!r}")
        if numbers[name] > MAX_OBJECT_SIZE:
            raise BadBlockRef(f"block reference field {name!r} is too large: {value!r}")
    if numbers["block_size"] <= 0:
        raise BadBlockRef("block reference field 'block_size' must be positive")
    if block_size is not None and numbers["block_size"] != block_size:
        raise BlockSizeMismatch(
            f"block_size {numbers['block_size']} is not this worker's block size {block_size}"
        )
    ref = BlockRef(mount, key, etag, numbers["index"], numbers["size"], numbers["block_size"])
    if ref.index > 0 and ref.start >= ref.object_size:
        raise BadBlockRef(f"block index {ref.index} is past the end of a {ref.object_size}-byte object")
    return ref
