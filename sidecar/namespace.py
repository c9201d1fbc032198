"""The mounted tree, built from object listings (pure: no I/O, no FUSE).

Every mount of the Dataset contributes its listing below the mount's `path` (`/` puts it at the root).
Directories are synthesized from key prefixes; zero-byte `dir/` marker objects make (possibly empty)
directories. Keys that cannot be file names — empty segments (`a//b`, `/a`), `.` or `..`, a segment
longer than 255 bytes, a NUL — are skipped and logged, never fatal. When a key is both a file and a
prefix of other keys (`a` and `a/b`), the directory wins.

Inode numbers name one *version*: a directory's is stable per path, a file's per (path, ETag), for
the life of the process. A refresh that keeps an object keeps its inode, so the kernel's cached dentries
and pages stay valid; an object replaced under the same key gets a new inode number, and the old one is
*retired*: kept (for `getattr` on descriptors still open) but no longer reachable by name. The kernel's
page cache is per inode, so the pages of two versions can never meet in one file (docs/sidecar.md,
"Consistency").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from eddy.listing import ObjectInfo

log = logging.getLogger(__name__)

ROOT_INODE = 1
NAME_MAX = 255


@dataclass
class Node:
    """A file or directory of the tree. Files carry the object they show; directories their children."""

    ino: int
    name: str
    parent: int
    mtime: float = 0.0
    size: int = 0
    mount: str = ""
    key: str = ""
    etag: str = ""
    children: dict[str, int] | None = None
    checked: float = 0.0  # time.monotonic() when the store last confirmed this version (list or HEAD)
    _sorted: list[str] | None = field(default=None, repr=False)

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def sorted_names(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.children or ())
        return self._sorted


@dataclass(frozen=True)
class LoadStats:
    files: int
    dirs: int
    bytes: int
    skipped: int


def bad_segment(segment: str) -> str | None:
    """Why a path segment cannot be a file name, or None if it can."""
    if segment == "":
        return "empty path segment"
    if segment in (".", ".."):
        return f"segment {segment!r}"
    if "\x00" in segment:
        return "NUL in name"
    if len(segment.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"segment longer than {NAME_MAX} bytes"
    return None


def split_key(key: str) -> tuple[list[str], bool] | str:
    """`(segments, is_dir_marker)` for a key, or the reason it cannot be placed in the tree."""
    marker = key.endswith("/")
    body = key[:-1] if marker else key
    if body == "":
        return "empty key"
    segments = body.split("/")
    for segment in segments:
        reason = bad_segment(segment)
        if reason:
            return reason
    return segments, marker


def file_inode_key(path: str, etag: str) -> str:
    """A file's inode is per version; a directory's (key = its path) per path. NUL never occurs in a path."""
    return f"{path}\x00{etag}"


def mount_segments(path: str) -> list[str]:
    """Segments of a mount's `path` (`/` → [] = the root)."""
    return [s for s in path.strip("/").split("/") if s]


class Namespace:
    """The tree, with inode numbers kept per path across reloads."""

    def __init__(self) -> None:
        self._inodes: dict[str, int] = {"": ROOT_INODE}
        self._inode_lock = threading.Lock()
        self._next_ino = ROOT_INODE + 1
        self._nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", ROOT_INODE, children={})}
        self._files: dict[tuple[str, str], int] = {}
        self._paths: dict[int, str] = {ROOT_INODE: ""}
        self._retired: dict[int, Node] = {}
        self.stats = LoadStats(0, 1, 0, 0)
        # Called with (parent inode, name) of every name whose version changed or that went away, so
        # the FUSE layer can make the kernel forget the dentry (sidecar/fs.py).
        self.on_retire: Callable[[int, str], None] | None = None

    # ------------------------------------------------------------------ building
    def load(self, listings: Mapping[str, Iterable[ObjectInfo]], places: Mapping[str, str]) -> LoadStats:
        """Replace the tree with the given listings; `places` maps mount name → mount `path`."""
        return self.install(self.build(listings, places))

    def build(self, listings: Mapping[str, Iterable[ObjectInfo]], places: Mapping[str, str]) -> _Builder:
        """A new tree from the listings, not yet visible. Safe to run in a thread while the live tree
        serves lookups (a million objects take seconds: the TTL refresh must not stall the mount)."""
        builder = _Builder(self._inode_for)
        for mount, entries in listings.items():
            base = mount_segments(places.get(mount, "/"))
            for segment in base:
                if bad_segment(segment):
                    log.warning("mount %s: path %r cannot be placed; skipped", mount, places.get(mount))
                    break
            else:
                builder.add_mount(mount, base, entries)
        return builder

    def install(self, builder: _Builder) -> LoadStats:
        """Make a built tree the live one (on the event loop, in one step between two requests).

        A version learnt from a HEAD after the listing started is newer than the listing's: it stays."""
        for ident, new_ino in list(builder.files.items()):
            old_ino = self._files.get(ident)
            if old_ino is None or old_ino == new_ino:
                continue
            old = self._nodes[old_ino]
            if old.checked > builder.started and builder.nodes[new_ino].parent == old.parent:
                builder.keep(new_ino, old)
        old_nodes, old_files, old_paths = self._nodes, self._files, self._paths
        self._nodes, self._files, self._paths = builder.nodes, builder.files, builder.paths
        for ident, old_ino in old_files.items():
            if builder.files.get(ident) != old_ino:
                self._retire(old_nodes[old_ino], old_paths.get(old_ino, ""))
        self.stats = LoadStats(
            files=len(builder.files),
            dirs=sum(1 for n in builder.nodes.values() if n.is_dir),
            bytes=builder.total_bytes,
            skipped=builder.skipped,
        )
        return self.stats

    def _inode_for(self, path: str) -> int:
        with self._inode_lock:  # a refresh builds in a thread while the loop may add a file
            ino = self._inodes.get(path)
            if ino is None:
                ino = self._inodes[path] = self._next_ino
                self._next_ino += 1
            return ino

    def _retire(self, node: Node, path: str) -> None:
        """A file version left the tree: keep it for open descriptors, make the kernel drop its name."""
        if node.ino in self._nodes:  # still live (same version, new Node object): nothing to retire
            return
        self._retired[node.ino] = node
        key = file_inode_key(path, node.etag)
        with self._inode_lock:
            if self._inodes.get(key) == node.ino:
                del self._inodes[key]
        if self.on_retire is not None:
            try:
                self.on_retire(node.parent, node.name)
            except Exception:  # the kernel's dentry expires on its own (entry_timeout)
                log.exception("could not invalidate the kernel's entry for %s", path)

    def update_file(
        self, mount: str, key: str, obj: ObjectInfo | None, checked: float | None = None
    ) -> Node | None:
        """Record the object's current version (None: it is gone), as confirmed at `checked` (a
        time.monotonic() value; default now). A new ETag makes a new node with a new inode number and
        retires the old one. Returns the live node, or None if the object is gone."""
        ino = self._files.get((mount, key))
        if ino is None:
            return None
        node = self._nodes[ino]
        when = time.monotonic() if checked is None else checked
        if when < node.checked:  # the tree already holds something newer than this answer
            return node
        path = self._paths.get(ino, "")
        parent = self._nodes.get(node.parent)
        if obj is None:
            if parent is not None and parent.children is not None:
                parent.children.pop(node.name, None)
                parent._sorted = None
            del self._nodes[ino]
            del self._files[(mount, key)]
            self._paths.pop(ino, None)
            self._retire(node, path)
            return None
        if obj.etag == node.etag:
            node.checked = when
            return node
        new = Node(self._inode_for(file_inode_key(path, obj.etag)), node.name, node.parent, obj.mtime,
                   obj.size, mount, key, obj.etag, checked=when)
        if parent is not None and parent.children is not None:
            parent.children[node.name] = new.ino
        del self._nodes[ino]
        self._paths.pop(ino, None)
        self._nodes[new.ino] = new
        self._files[(mount, key)] = new.ino
        self._paths[new.ino] = path
        self._retire(node, path)
        return new

    def forget(self, ino: int) -> None:
        """The kernel dropped the inode: a retired version can go (a live one stays)."""
        self._retired.pop(ino, None)

    # ------------------------------------------------------------------ queries
    def get(self, ino: int) -> Node | None:
        """The node of an inode: live, or retired (a replaced version some descriptor may hold open)."""
        node = self._nodes.get(ino)
        return node if node is not None else self._retired.get(ino)

    def is_live(self, ino: int) -> bool:
        """Whether the inode is the version the tree shows now (not retired)."""
        return ino in self._nodes

    def file(self, mount: str, key: str) -> Node | None:
        """The live node of an object, or None."""
        ino = self._files.get((mount, key))
        return self._nodes.get(ino) if ino is not None else None

    def files_below(self, ino: int, mount: str, prefix: str) -> list[str]:
        """Keys of the live files of `mount` under `prefix` in the subtree of directory `ino`."""
        keys: list[str] = []
        stack = [ino]
        while stack:
            node = self._nodes.get(stack.pop())
            if node is None:
                continue
            if node.children is not None:
                stack.extend(node.children.values())
            elif node.mount == mount and node.key.startswith(prefix):
                keys.append(node.key)
        return keys

    @property
    def retired(self) -> int:
        return len(self._retired)

    def lookup(self, parent: int, name: str) -> Node | None:
        node = self._nodes.get(parent)
        if node is None or node.children is None:
            return None
        if name == ".":
            return node
        if name == "..":
            return self._nodes.get(node.parent)
        ino = node.children.get(name)
        return self._nodes.get(ino) if ino is not None else None

    def resolve(self, path: str) -> Node | None:
        node: Node | None = self._nodes[ROOT_INODE]
        for segment in mount_segments(path):
            if node is None:
                return None
            node = self.lookup(node.ino, segment)
        return node

    def entries(self, ino: int, offset: int) -> Iterator[tuple[int, Node]]:
        """Children of a directory from readdir `offset` on, each with the offset that follows it.

        Offsets are positions in the sorted child list (0 = start), so a reader that stops after any
        entry resumes exactly after it.
        """
        node = self._nodes.get(ino)
        if node is None or node.children is None:
            return
        names = node.sorted_names()
        for index in range(max(0, offset), len(names)):
            child = self._nodes.get(node.children.get(names[index], 0))
            if child is not None:
                yield index + 1, child

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every file and directory below the root with its path (no leading `/`), depth-first in
        name order, each directory just before its contents."""
        stack: list[tuple[str, Iterator[str], Node]] = []
        root = self._nodes[ROOT_INODE]
        stack.append(("", iter(root.sorted_names()), root))
        while stack:
            prefix, names, parent = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                continue
            child = self._nodes.get((parent.children or {}).get(name, 0))
            if child is None:
                continue
            path = f"{prefix}{name}"
            yield path, child
            if child.is_dir:
                stack.append((f"{path}/", iter(child.sorted_names()), child))

    def files(self) -> Iterator[tuple[str, Node]]:
        return ((path, node) for path, node in self.walk() if not node.is_dir)


class _Builder:
    """Builds a fresh node table for one load."""

    def __init__(self, inode_for: Callable[[str], int]) -> None:
        self._ino = inode_for
        self.started = time.monotonic()  # the listing was at least this old: files are checked then
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", ROOT_INODE, children={})}
        self.paths: dict[int, str] = {ROOT_INODE: ""}
        self.files: dict[tuple[str, str], int] = {}
        self.total_bytes = 0
        self.skipped = 0

    def _dir(self, segments: list[str], mtime: float) -> Node:
        node = self.nodes[ROOT_INODE]
        path = ""
        for segment in segments:
            path = f"{path}/{segment}" if path else segment
            assert node.children is not None
            ino = node.children.get(segment)
            child = self.nodes.get(ino) if ino is not None else None
            if child is not None and not child.is_dir:
                log.warning("%r is both a file and a directory; keeping the directory", path)
                del self.files[(child.mount, child.key)]
                del self.nodes[child.ino]
                del self.paths[child.ino]
                del node.children[segment]
                self.total_bytes -= child.size
                self.skipped += 1
                child = None
            if child is None:
                child = Node(self._ino(path), segment, node.ino, mtime=mtime, children={})
                self.nodes[child.ino] = child
                self.paths[child.ino] = path
                node.children[segment] = child.ino
                node._sorted = None
            if mtime > child.mtime:
                child.mtime = mtime
            node = child
        if mtime > node.mtime:
            node.mtime = mtime
        return node

    def add_mount(self, mount: str, base: list[str], entries: Iterable[ObjectInfo]) -> None:
        self._dir(base, 0.0)
        for obj in entries:
            parsed = split_key(obj.key)
            if isinstance(parsed, str):
                log.warning("mount %s: key %r skipped: %s", mount, obj.key, parsed)
                self.skipped += 1
                continue
            segments, marker = parsed
            if marker:
                if obj.size:
                    log.info("mount %s: directory marker %r has %d bytes; shown as a directory",
                             mount, obj.key, obj.size)
                self._dir(base + segments, obj.mtime)
                continue
            parent = self._dir(base + segments[:-1], obj.mtime)
            name = segments[-1]
            assert parent.children is not None
            existing = parent.children.get(name)
            if existing is not None:
                what = "a directory" if self.nodes[existing].is_dir else "another object"
                log.warning("mount %s: key %r skipped: the path is already %s", mount, obj.key, what)
                self.skipped += 1
                continue
            path = "/".join(base + segments)
            node = Node(self._ino(file_inode_key(path, obj.etag)), name, parent.ino, obj.mtime, obj.size,
                        mount, obj.key, obj.etag, checked=self.started)
            self.nodes[node.ino] = node
            self.paths[node.ino] = path
            parent.children[name] = node.ino
            parent._sorted = None
            self.files[(mount, obj.key)] = node.ino
            self.total_bytes += obj.size

    def keep(self, ino: int, node: Node) -> None:
        """Put an existing (newer) version in place of the file this build made at `ino`."""
        made = self.nodes.pop(ino)
        path = self.paths.pop(ino)
        parent = self.nodes[made.parent]
        assert parent.children is not None
        parent.children[made.name] = node.ino
        self.nodes[node.ino] = node
        self.paths[node.ino] = path
        self.files[(node.mount, node.key)] = node.ino
        self.total_bytes += node.size - made.size
