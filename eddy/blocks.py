"""Block identity and placement.

An object is cut into fixed-size blocks. A block is named by `(mount, key, etag, index)`: the ETag is
part of the name, so a replaced object can never mix old and new bytes in a cache.

Placement is rendezvous (highest-random-weight) hashing: every worker gets a score for a block and the
k highest scores own it. Sidecars and the preloader compute the same owners from the same worker list,
with no coordinator, and adding a worker moves only the blocks it now wins (~1/n of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

MiB = 1024 * 1024

# 8 MiB: big enough that per-request overhead (HTTP round trip, S3 request latency of tens of ms on a
# real OSS link) is amortised over many bytes, small enough that a cold random 4 KiB read costs one
# bounded fetch and a MEM tier of a few GiB holds hundreds of blocks. bench/blocksize.py measures
# ranged-GET throughput per block size against the local S3 server; see README "Block size".
DEFAULT_BLOCK_SIZE = 8 * MiB


@dataclass(frozen=True, order=True)
class BlockRef:
    """One block of one version of one object."""

    mount: str
    key: str
    etag: str
    index: int
    # Object size and block size travel with the reference so any holder can compute the byte range.
    object_size: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE

    @property
    def start(self) -> int:
        return self.index * self.block_size

    @property
    def length(self) -> int:
        """Bytes in this block: the last block is short; an empty object has one 0-byte block."""
        return max(0, min(self.block_size, self.object_size - self.start))

    @property
    def end(self) -> int:
        """Exclusive end offset in the object."""
        return self.start + self.length

    @cached_property  # asked for on every cache lookup and placement: computed once per reference
    def identity(self) -> str:
        """Stable text naming the block; the input to placement and to the cache file name."""
        return f"{self.mount}\x00{self.key}\x00{self.etag}\x00{self.index}"

    @property
    def digest(self) -> str:
        """A hash of the identity: the block's file name in a cache (never the key itself)."""
        return hashlib.blake2b(self.identity.encode(), digest_size=16).hexdigest()


def block_count(object_size: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Number of blocks of an object; an empty object still has one (empty) block."""
    return max(1, -(-object_size // block_size))


def blocks_of(
    mount: str, key: str, etag: str, object_size: int, block_size: int = DEFAULT_BLOCK_SIZE
) -> Iterator[BlockRef]:
    for index in range(block_count(object_size, block_size)):
        yield BlockRef(mount, key, etag, index, object_size, block_size)


def blocks_for_range(
    mount: str, key: str, etag: str, object_size: int, offset: int, length: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[BlockRef]:
    """The blocks covering `[offset, offset+length)` of an object, clipped to its size."""
    end = min(object_size, offset + length)
    if end <= offset:
        return []
    first, last = offset // block_size, (end - 1) // block_size
    return [BlockRef(mount, key, etag, i, object_size, block_size) for i in range(first, last + 1)]


def _score(worker: str, identity: str) -> int:
    digest = hashlib.blake2b(f"{worker}\x00{identity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(block: BlockRef | str, workers: Sequence[str], k: int = 1) -> list[str]:
    """The k distinct workers that own a block, best first (fewer if fewer workers exist).

    The full ranking (k = len(workers)) is the fallback order a reader walks when an owner is down.
    """
    identity = block if isinstance(block, str) else block.identity
    unique = list(dict.fromkeys(workers))
    ranked = sorted(unique, key=lambda w: _score(w, identity), reverse=True)
    return ranked[: max(0, k)]
