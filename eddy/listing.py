"""What a listing of the object store yields, as plain data: importable by pure modules (the preloader's
plan, the sidecar's namespace, the snapshot format) without loading the object-store client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the mount prefix; "dir/" markers keep their trailing "/"
    size: int
    etag: str  # without quotes
    mtime: float  # seconds since the epoch
