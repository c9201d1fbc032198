"""The read-only FUSE filesystem: a thin pyfuse3 adapter over the tree (`DatasetMetadata`) and the
data path (`DatasetReader`).

Every mutating call fails with EROFS (the mount is also `ro`, so the kernel usually answers first).
Reads go to the reader; any failure there becomes EIO, never an exception that would stop pyfuse3's
main loop.

One version per inode (sidecar/namespace.py): a file's inode number names one ETag, every handle opened
on it is pinned to that ETag, and every block it reads is named by (mount, key, ETag, index). The
kernel's page cache is per inode, so its pages all come from that one version and `keep_cache` is safe.
When the namespace learns a new ETag the name moves to a new inode (the kernel is told to drop the
dentry) and opening the retired inode fails with ESTALE — on which the kernel walks the path again with
LOOKUP_REVAL and opens the new inode. On open, the version is revalidated with a coalesced HEAD when it
was last confirmed more than `metadata_ttl` seconds ago.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3

from sidecar.metadata import DatasetMetadata
from sidecar.namespace import NAME_MAX, ROOT_INODE, Node
from sidecar.reader import DatasetReader, FileHandle, ObjectChangedError, ReadError

log = logging.getLogger(__name__)

NS = 1_000_000_000
# The root's attributes never change in a way that matters; cached "for good" they keep a dead mount's
# root stat-able after a crash, which the container runtime needs to bind the volume into the restarted
# sidecar and libfuse needs to mount over it (sidecar/mounts.py prepare_mountpoint).
ROOT_ATTR_TIMEOUT = 365 * 24 * 3600.0


@dataclass(frozen=True)
class FsOptions:
    uid: int = 0
    gid: int = 0
    direct_io: bool = False
    # An inode's attributes never change (one inode per version, sidecar/namespace.py), and a name
    # that moves to a new inode is invalidated in the kernel at once (`_invalidate_entry`); an open
    # of a dentry the kernel still holds is revalidated anyway (ESTALE). Long timeouts therefore only
    # spare the kernel's LOOKUP/GETATTR round trips (one Python call each per file).
    attr_timeout: float = 60.0
    entry_timeout: float = 60.0
    io_size: int = 1 << 20  # st_blksize: readers such as cp size their buffers from it


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class EddyFS(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, metadata: DatasetMetadata, reader: DatasetReader, options: FsOptions) -> None:
        super().__init__()
        self.metadata = metadata
        self.reader = reader
        self.ns = metadata.namespace
        self.options = options
        self._handles: dict[int, FileHandle] = {}
        # Attributes of file inodes, built once: a file node's size and mtime are fixed for its version
        # (directories' mtimes move, so theirs are built per call). Keyed by inode, checked by identity.
        self._file_attrs: dict[int, tuple[Node, pyfuse3.EntryAttributes]] = {}
        self._next_fh = 1
        self.requests = 0
        self.ns.on_retire = self._invalidate_entry

    @staticmethod
    def _invalidate_entry(parent: int, name: str) -> None:
        """Make the kernel forget `name` in `parent` now rather than when its entry_timeout runs out
        (asynchronous: pyfuse3 sends it from its notify thread; ENOENT = the kernel never had it)."""
        pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)

    # ------------------------------------------------------------------ attributes
    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        cached = self._file_attrs.get(node.ino)
        if cached is not None and cached[0] is node:
            return cached[1]
        attr = self._build_attributes(node)
        if not node.is_dir:
            self._file_attrs[node.ino] = (node, attr)
        return attr

    def _build_attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        attr.entry_timeout = self.options.entry_timeout
        attr.attr_timeout = ROOT_ATTR_TIMEOUT if node.ino == ROOT_INODE else self.options.attr_timeout
        if node.is_dir:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
            attr.st_size = 0
        else:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = node.size
        attr.st_uid = self.options.uid
        attr.st_gid = self.options.gid
        attr.st_rdev = 0
        attr.st_blksize = self.options.io_size
        attr.st_blocks = -(-attr.st_size // 512)
        mtime_ns = int(node.mtime * NS)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        return attr

    def _node(self, ino: int) -> Node:
        node = self.ns.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self.requests += 1
        node = self.ns.lookup(parent_inode, os.fsdecode(name))
        if node is None:
            if len(name) > NAME_MAX:
                raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(node)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Live inode numbers last as long as the process; a retired version can go once the kernel
        # dropped it (no lookup returns a retired inode, so this is its last forget).
        for ino, _ in inode_list:
            self.ns.forget(ino)
            self._file_attrs.pop(ino, None)

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        self._node(inode)
        return not mode & os.W_OK

    # ------------------------------------------------------------------ directories
    async def opendir(self, inode: int, ctx: Any) -> int:
        if not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for next_id, child in self.ns.entries(fh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self.attributes(child), next_id):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = self.options.io_size
        st.f_frsize = 4096
        st.f_blocks = -(-self.ns.stats.bytes // st.f_frsize)
        st.f_bfree = st.f_bavail = 0
        st.f_files = self.ns.stats.files + self.ns.stats.dirs
        st.f_ffree = st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    # ------------------------------------------------------------------ files
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise _erofs()
        if not self.ns.is_live(inode):
            raise pyfuse3.FUSEError(errno.ESTALE)  # a replaced version: the kernel looks the name up again
        if self.metadata.versions.is_fresh(node):  # confirmed within --metadata-ttl: no coroutine hop
            current: Node | None = node
        else:
            try:
                current = await self.metadata.revalidate(node)
            except Exception:  # never let an exception stop the FUSE main loop: open the version known
                log.exception("unexpected error revalidating %s", node.key)
                current = node
        if current is None or current.ino != inode:
            raise pyfuse3.FUSEError(errno.ESTALE)  # changed or gone just now: same
        handle = self.reader.open_file(current)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        # The inode's pages can only hold this version's bytes: keep them across opens.
        return pyfuse3.FileInfo(fh=fh, direct_io=self.options.direct_io, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            # A memoryview is fine: pyfuse3 takes any contiguous buffer (no copy to bytes).
            return await self.reader.read(handle, off, size)  # type: ignore[return-value]
        except ObjectChangedError as exc:
            log.warning("read of %s failed: %s", handle.key, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except ReadError as exc:
            log.warning("read of %s failed: %s", handle.key, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:  # never let an exception stop the FUSE main loop
            log.exception("unexpected error reading %s", handle.key)
            raise pyfuse3.FUSEError(errno.EIO) from None

    # No `flush`: pyfuse3's default answers ENOSYS, after which the kernel stops sending FLUSH on every
    # close (nothing to flush on a read-only mount; one request fewer per file of a `cp -r`).

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # ------------------------------------------------------------------ read-only
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return []

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _erofs()

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise _erofs()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise _erofs()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        raise _erofs()

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise _erofs()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise _erofs()

    async def rename(self, *args: Any) -> None:
        raise _erofs()

    async def symlink(self, *args: Any) -> Any:
        raise _erofs()

    async def link(self, *args: Any) -> Any:
        raise _erofs()

    async def setxattr(self, *args: Any) -> None:
        raise _erofs()

    async def removexattr(self, *args: Any) -> None:
        raise _erofs()
