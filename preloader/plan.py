"""The load plan, pure and streaming: DataLoad targets → mount selections → blocks with their owners.

A DataLoad names paths of the Dataset's *view* (`target[].path`, default `/`, the whole dataset);
each Dataset mount is attached at its own `path`. `resolve_targets` maps every target to the mounts it
covers, as `(mount, key prefix, replicas)`. The planner then turns a listing (an async iterator of
`(selection, ObjectInfo)`) into a stream of `Assignment(ref, owners)`: one object at a time, so memory
does not grow with the size of the plan (a 100,000-object / 10 GiB plan is never held whole).

Totals for progress come from a first, counting-only listing pass (`Totals.add`), then the objects
are listed again and streamed into blocks: listing is cheap next to loading (1,000 objects per
request), and it gives exact totals before the first warm request without holding the listing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from eddy.api import DataLoad, Dataset, Mount
from eddy.blocks import DEFAULT_BLOCK_SIZE, BlockRef, blocks_of, owners
from eddy.listing import ObjectInfo


class PlanError(ValueError):
    """The DataLoad's targets cannot be planned against the Dataset; the message says why."""


@dataclass(frozen=True)
class Selection:
    """One target resolved to one mount: every object whose key is `prefix` or under `prefix/`."""

    mount: Mount
    prefix: str  # relative to the mount's prefix; "" = the whole mount
    replicas: int
    target_path: str  # the DataLoad's path, for messages

    def covers(self, key: str) -> bool:
        if not self.prefix:
            return True
        return key == self.prefix or key.startswith(self.prefix.rstrip("/") + "/")

    @property
    def list_prefix(self) -> str:
        """Prefix to list with (the boundary is checked by `covers`, so `a` does not match `ab`)."""
        return self.prefix


def _under(path: str, root: str) -> str | None:
    """`path` relative to `root` if it is `root` or under it (both absolute), else None."""
    root = root.rstrip("/") or "/"
    path = path.rstrip("/") or "/"
    if root == "/":
        return path.lstrip("/")
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return None


def resolve_targets(dataset: Dataset, dataload: DataLoad) -> list[Selection]:
    """Map each `target[].path` to the mounts it covers; overlapping targets are merged.

    A path inside a mount selects that part of it; a path above mounts (e.g. `/`) selects them
    whole. When targets overlap on one mount the broader one wins, with the larger replica count.
    """
    chosen: list[Selection] = []
    for target in dataload.targets:
        matched = False
        for mount in dataset.mounts:
            inside = _under(target.path, mount.path)
            if inside is not None:
                chosen.append(Selection(mount, inside, target.replicas, target.path))
                matched = True
            elif _under(mount.path, target.path) is not None:
                chosen.append(Selection(mount, "", target.replicas, target.path))
                matched = True
        if not matched:
            paths = ", ".join(m.path for m in dataset.mounts) or "none"
            raise PlanError(
                f"target path {target.path!r} is in no mount of Dataset {dataset.meta.key} "
                f"(mount paths: {paths})"
            )
    merged: list[Selection] = []
    for sel in sorted(chosen, key=lambda s: (s.mount.name, len(s.prefix))):
        broader = next(
            (i for i, m in enumerate(merged) if m.mount.name == sel.mount.name and m.covers(sel.prefix)),
            None,
        )
        if broader is None:
            merged.append(sel)
        elif sel.replicas > merged[broader].replicas:
            old = merged[broader]
            merged[broader] = Selection(old.mount, old.prefix, sel.replicas, old.target_path)
    return merged


@dataclass
class Totals:
    """Files, bytes and blocks a plan will load (data bytes: replicas are not multiplied in)."""

    files: int = 0
    bytes: int = 0
    blocks: int = 0
    warms: int = 0  # block-owner requests

    def add(self, info: ObjectInfo, replicas: int, workers: int, block_size: int) -> None:
        if is_marker(info):
            return
        n = max(1, -(-info.size // block_size))
        self.files += 1
        self.bytes += info.size
        self.blocks += n
        self.warms += n * min(replicas, workers)


def is_marker(info: ObjectInfo) -> bool:
    """A "dir/" marker object: listed (and kept in the snapshot) but holding no data to load."""
    return info.key.endswith("/")


@dataclass(frozen=True)
class Assignment:
    """One block and the workers that must hold it (best first)."""

    ref: BlockRef
    owners: tuple[str, ...]
    file_seq: int  # which listed file this block belongs to (progress counts files)
    file_blocks: int  # blocks of that file
    file_size: int


def blocks_for(
    selection: Selection, info: ObjectInfo, workers: Sequence[str], file_seq: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Iterator[Assignment]:
    """Every block of one listed object with its owners (HRW over `workers`, top `replicas`)."""
    refs = list(blocks_of(selection.mount.name, info.key, info.etag, info.size, block_size))
    for ref in refs:
        yield Assignment(ref, tuple(owners(ref, workers, selection.replicas)), file_seq, len(refs), info.size)


async def plan_blocks(
    listing: AsyncIterator[tuple[Selection, ObjectInfo]],
    workers: Sequence[str],
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> AsyncIterator[Assignment]:
    """The plan as a stream: blocks of each listed object (markers and keys outside skipped)."""
    if not workers:
        raise PlanError("no workers to load into")
    seq = 0
    async for selection, info in listing:
        if is_marker(info) or not selection.covers(info.key):
            continue
        for assignment in blocks_for(selection, info, workers, seq, block_size):
            yield assignment
        seq += 1
