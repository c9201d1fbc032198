"""MEM-level block files kept mapped, so a hit is sent with send(2) from the mapping.

Why not sendfile for the MEM level: measured on this kernel (6.18, loopback), sendfile from a tmpfs
file costs the sender ~0.23-0.44 CPU-s/GiB (a page-cache lookup and a pipe buffer per 4 KiB page) and
the receiver ~0.25-0.30 (4 KiB fragments), where send(2) of the same bytes from memory costs the
sender ~0.10-0.20 and the receiver ~0.13-0.18 (docs/worker.md, "Serving hits"). A tmpfs file's pages
are memory already, so mapping them adds no copy and no memory: only page tables (2 KiB per MiB).

A mapping is made once per block (`MAP_POPULATE`: the page tables are filled in one call, not by a
fault per page on the first send) and kept while its file is unchanged. `MappedBlocks` is a plain
LRU bounded in bytes; the tiered store tells it when a block leaves the MEM level (eviction,
demotion, discard, replacement, purge), so an evicted block's tmpfs pages are freed at once, not when
the LRU gets to them. A mapping dropped while a response is still being sent from it is unmapped when
that send finishes (the response holds a view of it; CPython frees the mapping with its last view).
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from dataclasses import dataclass

from worker.blockfile import Stamp

MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


@dataclass(frozen=True)
class Mapped:
    """One block file mapped read-only: `data` is the block's bytes (after the header), `stamp` the
    file's (inode, size, mtime, ctime) when it was mapped and checked."""

    data: memoryview
    stamp: Stamp

    @property
    def size(self) -> int:
        return len(self.data)


def map_block(fd: int, header_len: int, stamp: Stamp) -> Mapped:
    """Map an open block file (the caller keeps and closes `fd`; the mapping outlives it)."""
    mapping = mmap.mmap(fd, 0, flags=MAP_FLAGS, prot=mmap.PROT_READ)
    return Mapped(memoryview(mapping)[header_len:], stamp)


class MappedBlocks:
    """Mappings of MEM-level blocks by digest, least recently used first out, at most `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._maps: OrderedDict[str, Mapped] = OrderedDict()

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, digest: str) -> Mapped | None:
        found = self._maps.get(digest)
        if found is not None:
            self._maps.move_to_end(digest)
        return found

    def add(self, digest: str, mapped: Mapped) -> None:
        self.forget(digest)
        if mapped.size > self.max_bytes:
            return
        while self._maps and self.bytes + mapped.size > self.max_bytes:
            _, old = self._maps.popitem(last=False)
            self.bytes -= old.size
        self._maps[digest] = mapped
        self.bytes += mapped.size

    def forget(self, digest: str) -> None:
        """Drop a block's mapping (its file left the level or changed)."""
        old = self._maps.pop(digest, None)
        if old is not None:
            self.bytes -= old.size

    def clear(self) -> None:
        self._maps.clear()
        self.bytes = 0
