"""kubelet's AtomicWriter: a volume's files change all at once or not at all.

Layout of a configMap/secret/downwardAPI/projected volume directory (as on a node):

    ..2026_11_30_03_49_00.123456789/   the payload of one version (files with their modes)
    ..data -> ..2026_11_30_03_49_00.123456789
    key -> ..data/key                  one symlink per top-level entry of the payload

An update writes a new timestamped directory, points `..data_tmp` at it and renames that over `..data`
(rename(2) is atomic), adds the new top-level symlinks, then removes the old directory and the
symlinks of entries that are gone. A reader that opens `key` sees the old or the new file, whole.
Blocking file I/O: call `write` in a thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"


@dataclass(frozen=True)
class FileProjection:
    data: bytes
    mode: int = 0o644


def validate_path(path: str) -> str:
    """A payload path must be relative, without `..` elements, and not start with `..`."""
    if not path or path.startswith("/") or path.startswith(".."):
        raise ValueError(f"invalid path {path!r} in a volume payload")
    if any(part == ".." for part in path.split("/")):
        raise ValueError(f"invalid path {path!r}: '..' is not allowed")
    return path.strip("/")


def write(target: Path, payload: dict[str, FileProjection], *, gid: int | None = None) -> bool:
    """Make `target` show `payload`; returns False when it already did (nothing written). With `gid`
    (the pod's fsGroup) files and directories belong to that group and are group-readable."""
    target.mkdir(parents=True, exist_ok=True)
    payload = {validate_path(p): f for p, f in payload.items()}
    current = _current_dir(target)
    if current is not None and _same(current, payload, gid):
        return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    os.chmod(new_dir, 0o755)
    for rel, proj in sorted(payload.items()):
        path = new_dir / rel
        for parent in reversed(path.relative_to(new_dir).parents[:-1]):
            d = new_dir / parent
            if not d.exists():
                d.mkdir(mode=0o755)
                _own(d, gid, 0o755)
        path.write_bytes(proj.data)
        _own(path, gid, proj.mode)
    if gid is not None:
        os.chown(new_dir, -1, gid)
    tmp_link = target / DATA_TMP
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(new_dir.name, tmp_link)
    os.rename(tmp_link, target / DATA)
    tops = {rel.split("/", 1)[0] for rel in payload}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            os.symlink(f"{DATA}/{top}", link)
    for entry in os.listdir(target):
        if entry in tops or entry in (DATA, DATA_TMP, new_dir.name):
            continue
        path = target / entry
        if entry.startswith(".."):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        elif path.is_symlink():  # a user-visible entry no longer in the payload
            path.unlink()
    return True


def _own(path: Path, gid: int | None, mode: int) -> None:
    if gid is not None:
        os.chown(path, -1, gid)
        mode |= 0o040 if path.is_file() else 0o050
    os.chmod(path, mode)


def _current_dir(target: Path) -> Path | None:
    link = target / DATA
    if not link.is_symlink():
        return None
    return target / os.readlink(link)


def _same(current: Path, payload: dict[str, FileProjection], gid: int | None) -> bool:
    """Whether the live version already holds exactly `payload` (bytes and modes)."""
    seen = set()
    for dirpath, _dirs, files in os.walk(current):
        for name in files:
            full = Path(dirpath) / name
            seen.add(str(full.relative_to(current)))
    if seen != set(payload):
        return False
    for rel, proj in payload.items():
        full = current / rel
        st = full.stat()
        mode = proj.mode | (0o040 if gid is not None else 0)
        if (st.st_mode & 0o7777) != mode or (gid is not None and st.st_gid != gid):
            return False
        if full.read_bytes() != proj.data:
            return False
    return True
