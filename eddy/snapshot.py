"""The listing snapshot (DataLoad `loadMetadata: true`): every mount's object listing in one blob.

The preloader stores it on every worker under `eddy.wire.LISTING_SNAPSHOT` (`PUT /v1/meta/listing`),
so a new sidecar mounts from it instead of listing the bucket. The format (the sidecar reads the same
via this module) is exactly:

    gzip( JSON {"version": 1, "mounts": {"<mount name>": [["key", size, "etag", mtime], ...]}} )

`key` is relative to the mount's prefix (as `ObjectInfo.key`), `etag` has no quotes, `mtime` is
seconds since the epoch. Directory markers (`dir/`, size 0) may be included. The gzip header carries
no timestamp, so the same listing always encodes to the same bytes.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping
from typing import Any

from eddy.listing import ObjectInfo

SNAPSHOT_VERSION = 1


class SnapshotError(ValueError):
    """A blob that is not a listing snapshot of a version this code reads."""


def encode_snapshot(mounts: Mapping[str, Iterable[ObjectInfo]]) -> bytes:
    """Encode `{mount name: [ObjectInfo, ...]}` (any iterable: it is consumed once)."""
    doc: dict[str, Any] = {
        "version": SNAPSHOT_VERSION,
        "mounts": {
            name: [[o.key, o.size, o.etag, o.mtime] for o in objects] for name, objects in mounts.items()
        },
    }
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return gzip.compress(raw, compresslevel=6, mtime=0)


def decode_snapshot(data: bytes) -> dict[str, list[ObjectInfo]]:
    """Decode a snapshot; raises SnapshotError naming what is malformed."""
    try:
        doc = json.loads(gzip.decompress(data))
    except (OSError, EOFError, ValueError) as exc:
        raise SnapshotError(f"listing snapshot is not gzip'd JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != SNAPSHOT_VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise SnapshotError(f"listing snapshot version {version!r} is not {SNAPSHOT_VERSION}")
    mounts = doc.get("mounts")
    if not isinstance(mounts, dict):
        raise SnapshotError("listing snapshot has no 'mounts' object")
    out: dict[str, list[ObjectInfo]] = {}
    for name, rows in mounts.items():
        if not isinstance(rows, list):
            raise SnapshotError(f"listing snapshot mount {name!r} is not a list")
        objects: list[ObjectInfo] = []
        for row in rows:
            try:
                key, size, etag, mtime = row
                objects.append(ObjectInfo(str(key), int(size), str(etag), float(mtime)))
            except (TypeError, ValueError):
                raise SnapshotError(f"listing snapshot mount {name!r} has a malformed row: {row!r}") from None
        out[str(name)] = objects
    return out
