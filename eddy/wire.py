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

# Meta blobs are small (a listing snapshot); a bigger PUT gets 413.
META_MAX_BYTES = 64 * 1024 * 1024

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


def ref_from_mapping(raw: Mapping[str, Any]) -> BlockRef:
    """Parse a reference from query parameters or JSON; raises BadBlockRef naming the field."""
    try:
        mount = str(raw["mount"])
        key = str(raw["key"])
        etag = str(raw["etag"])
    except KeyError as missing:
        raise BadBlockRef(f"block reference is missing {missing.args[0]!r}") from None
    if not mount or not key:
        raise BadBlockRef("block reference needs a non-empty mount and key")
    numbers: dict[str, int] = {}
    for name, default in (("index", None), ("size", None), ("block_size", DEFAULT_BLOCK_SIZE)):
        value = raw.get(name, default)
        if value is None:
            raise BadBlockRef(f"block reference is missing {name!r}")
        try:
            if isinstance(value, bool):
                raise ValueError
            numbers[name] = int(value)
        except (TypeError, ValueError):
            raise BadBlockRef(f"block reference field {name!r} is not an integer: {value!r}") from None
        if numbers[name] < 0:
            raise BadBlockRef(f"block reference field {name!r} is negative: {value!r}")
    if numbers["block_size"] <= 0:
        raise BadBlockRef("block reference field 'block_size' must be positive")
    ref = BlockRef(mount, key, etag, numbers["index"], numbers["size"], numbers["block_size"])
    if ref.index > 0 and ref.start >= ref.object_size:
        raise BadBlockRef(f"block index {ref.index} is past the end of a {ref.object_size}-byte object")
    return ref
