"""A pyfuse3 filesystem serving files from memory: the ceiling for FUSE from Python on this machine.

    python -m bench.memfs --mountpoint DIR --size-mib N [--tree N] [--direct-io/--no-direct-io] [--seed S]

Serves `DIR/data.bin` whose bytes are `bench_content(size, seed)` (the same bytes the sidecar
benchmark uploads), and with `--tree N` the small-file tree `DIR/tree/<name>` of `tree_files(N)`, as
memoryview slices (no copy per request). It uses the same pyfuse3/asyncio plumbing
(`sidecar/fuseloop.py`) and kernel tuning as the sidecar, so the gap between the two is the sidecar's
own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import random
import signal
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pyfuse3

MiB = 1024 * 1024
FILE_NAME = "data.bin"
FILE_INODE = 2
TREE_NAME = "tree"
TREE_INODE = 3
FIRST_TREE_FILE = 10


def tree_files(count: int) -> dict[str, bytes]:
    """`count` small files (4 KiB..260 KiB, like the demo's small-file tree): name -> bytes."""
    rng = random.Random(11)
    out: dict[str, bytes] = {}
    for i in range(count):
        size = rng.choice([4096, 65536, 262144]) + rng.randrange(4096)
        out[f"f{i:04}.bin"] = random.Random(i).randbytes(size)
    return out


def bench_content(size: int, seed: int = 7) -> bytes:
    """`size` bytes: one random MiB repeated, each MiB stamped with its index (so misplaced MiBs show)."""
    rng = random.Random(seed)
    chunk = rng.randbytes(MiB)
    out = bytearray(size)
    for i, start in enumerate(range(0, size, MiB)):
        piece = (i.to_bytes(8, "big") * 2 + chunk[16:])[: size - start]
        out[start : start + len(piece)] = piece
    return bytes(out)


class MemFS(pyfuse3.Operations):
    def __init__(self, data: bytes, direct_io: bool, tree: dict[str, bytes] | None = None) -> None:
        super().__init__()
        self.data = memoryview(data)
        self.direct_io = direct_io
        tree = tree or {}
        self.names = [n.encode() for n in tree]
        self.files = {FIRST_TREE_FILE + i: memoryview(b) for i, b in enumerate(tree.values())}
        self.inodes = {n: FIRST_TREE_FILE + i for i, n in enumerate(self.names)}
        self.read_sizes: Counter[int] = Counter()  # FUSE read request sizes the kernel sent
        self.requests: Counter[str] = Counter()  # requests answered, by operation

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = 60
        if inode in (pyfuse3.ROOT_INODE, TREE_INODE):
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFDIR | 0o555, 2, 0
        elif inode == FILE_INODE:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o444, 1, len(self.data)
        elif inode in self.files:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o444, 1, len(self.files[inode])
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_blksize = MiB
        attr.st_blocks = -(-attr.st_size // 512)
        return attr

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self.requests["getattr"] += 1
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self.requests["lookup"] += 1
        if parent_inode == pyfuse3.ROOT_INODE and name == FILE_NAME.encode():
            return self._attr(FILE_INODE)
        if parent_inode == pyfuse3.ROOT_INODE and name == TREE_NAME.encode() and self.files:
            return self._attr(TREE_INODE)
        if parent_inode == TREE_INODE and name in self.inodes:
            return self._attr(self.inodes[name])
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: Any) -> int:
        self.requests["opendir"] += 1
        return inode

    async def releasedir(self, fh: int) -> None:
        self.requests["releasedir"] += 1

    async def forget(self, inode_list: Any) -> None:
        self.requests["forget"] += 1

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.requests["readdir"] += 1
        if fh == TREE_INODE:
            for i in range(start_id, len(self.names)):
                if not pyfuse3.readdir_reply(token, self.names[i], self._attr(FIRST_TREE_FILE + i), i + 1):
                    return
            return
        if start_id == 0 and not pyfuse3.readdir_reply(token, FILE_NAME.encode(), self._attr(FILE_INODE), 1):
            return
        if start_id <= 1 and self.files:
            pyfuse3.readdir_reply(token, TREE_NAME.encode(), self._attr(TREE_INODE), 2)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        self.requests["open"] += 1
        if inode != FILE_INODE and inode not in self.files:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=self.direct_io, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.requests["read"] += 1
        self.read_sizes[size] += 1
        data = self.data if fh == FILE_INODE else self.files[fh]
        return data[off : off + size]  # type: ignore[return-value]

    async def release(self, fh: int) -> None:
        self.requests["release"] += 1

    # No flush (as the sidecar): pyfuse3 answers ENOSYS once and the kernel stops sending FLUSH.


async def serve(mountpoint: str, data: bytes, direct_io: bool, readahead_kib: int,
                tree: dict[str, bytes] | None = None) -> MemFS:
    """Serve until SIGTERM/SIGINT; returns the filesystem (its request counts)."""
    from sidecar import fuseloop
    from sidecar.lifecycle import terminate_fuse
    from sidecar.mounts import probe, set_kernel_readahead

    fuseloop.enable()  # the sidecar's pyfuse3 plumbing, so that the gap is the sidecar's own work
    fs = MemFS(data, direct_io, tree)
    pyfuse3.init(fs, mountpoint, {"fsname=eddy-memfs", "ro"})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    main = loop.create_task(pyfuse3.main())
    # after the INIT exchange (the kernel lowers read-ahead to the INIT reply's value)
    await asyncio.to_thread(probe, mountpoint, 10.0)
    await asyncio.to_thread(set_kernel_readahead, mountpoint, readahead_kib)
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        terminate_fuse()
        await asyncio.wait_for(main, 10)
    finally:
        stopper.cancel()
        pyfuse3.close(unmount=True)
    return fs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memfs", description=__doc__)
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--direct-io", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--kernel-readahead-kib", type=int, default=4096)
    parser.add_argument("--tree", type=int, default=0, help="also serve tree/ with this many small files")
    parser.add_argument("--counts", default="",
                        help='on exit, write {"read_sizes": {size: n}, "requests": {operation: n}} here')
    args = parser.parse_args(argv)
    data = bench_content(args.size_mib * MiB, args.seed)
    os.makedirs(args.mountpoint, exist_ok=True)
    fs = asyncio.run(serve(args.mountpoint, data, args.direct_io, args.kernel_readahead_kib,
                           tree_files(args.tree) if args.tree else None))
    if args.counts:  # which requests the kernel sent, and of which read sizes: measured, not assumed
        counts = {"read_sizes": dict(sorted(fs.read_sizes.items())),
                  "requests": dict(sorted(fs.requests.items()))}
        Path(args.counts).write_text(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
