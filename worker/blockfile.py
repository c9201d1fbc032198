"""The on-disk form of one cached block (after Mountpoint for S3's block cache), and its file I/O.

A block file is `<level>/blocks/<digest[:2]>/<digest>` (the digest is `BlockRef.digest`, a hash: the
object key never appears in a path). It starts with a header, then the block's data:

    magic "EDDYBLK1" | u32 header_len | u32 header_crc | u32 data_crc | u64 data_len
    | u64 index | u64 object_size | u64 block_size | u32 len(mount) | u32 len(key) | u32 len(etag)
    | mount | key | etag                                                  (little-endian)

`header_len` is the data's file offset (what `sendfile` starts at), `header_crc` a CRC32C of the
header bytes after it, `data_crc` the CRC32C of the data. Files are written to a temp name beside
the final one and renamed into place, so a crash leaves either the whole block or a temp file that the
next start discards. Every function here is blocking: callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from eddy.blocks import BlockRef
from eddy.crc import crc32c_of

MAGIC = b"EDDYBLK1"
_FIXED = struct.Struct("<8sIIIQQQQIII")
TEMP_SUFFIX = ".tmp"
CHUNK = 1 << 20


class BlockFileError(Exception):
    """A block file is unreadable, truncated, or does not match its header or checksum."""


@dataclass(frozen=True)
class BlockHeader:
    ref: BlockRef
    data_len: int
    data_crc: int
    header_len: int

    @property
    def file_size(self) -> int:
        return self.header_len + self.data_len


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def encode_header(ref: BlockRef, data_len: int, data_crc: int) -> bytes:
    mount, key, etag = ref.mount.encode(), ref.key.encode(), ref.etag.encode()
    header_len = _FIXED.size + len(mount) + len(key) + len(etag)
    rest = struct.pack(
        "<IQQQQIII", data_crc, data_len, ref.index, ref.object_size, ref.block_size,
        len(mount), len(key), len(etag),
    ) + mount + key + etag
    return MAGIC + struct.pack("<II", header_len, crc32c(rest)) + rest


def decode_header(raw: bytes) -> BlockHeader:
    """Parse a header from the first bytes of a block file; raises BlockFileError if it is not one."""
    if len(raw) < _FIXED.size:
        raise BlockFileError("truncated header")
    magic, header_len, header_crc, data_crc, data_len, index, object_size, block_size, lm, lk, le = (
        _FIXED.unpack_from(raw)
    )
    if magic != MAGIC:
        raise BlockFileError("not a block file (bad magic)")
    if header_len != _FIXED.size + lm + lk + le or len(raw) < header_len:
        raise BlockFileError("bad header length")
    if crc32c(bytes(raw[16:header_len])) != header_crc:
        raise BlockFileError("header checksum mismatch")
    strings = raw[_FIXED.size:header_len]
    try:
        mount = strings[:lm].decode()
        key = strings[lm:lm + lk].decode()
        etag = strings[lm + lk:].decode()
    except UnicodeDecodeError:
        raise BlockFileError("header strings are not UTF-8") from None
    if block_size <= 0:
        raise BlockFileError("bad block size in header")
    ref = BlockRef(mount, key, etag, index, object_size, block_size)
    return BlockHeader(ref, data_len, data_crc, header_len)


def block_path(root: Path, digest: str) -> Path:
    return root / digest[:2] / digest


def _create(path: str) -> int:
    """Create a new file for writing; its fan-out directory is made only when it is missing (once per
    directory, not a `mkdir` per block)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o644)


Body = bytes | bytearray | memoryview | list[bytes]  # a block's data, whole or as the chunks it arrived in


def body_length(data: Body) -> int:
    return sum(len(c) for c in data) if isinstance(data, list) else len(data)


def write_block(root: Path, ref: BlockRef, data: Body, data_crc: int) -> BlockHeader:
    """Write a block file atomically (temp file + rename); returns its header. Chunks are written as
    they are (`os.writev`), never joined first."""
    length = body_length(data)
    header = encode_header(ref, length, data_crc)
    digest = ref.digest
    sub = os.path.join(root, digest[:2])
    final = os.path.join(sub, digest)
    tmp = os.path.join(sub, f".{digest}.{os.getpid()}.{id(data):x}{TEMP_SUFFIX}")
    try:
        fd = _create(tmp)
        try:
            _write_all(fd, [header, *data] if isinstance(data, list) else [header, data])
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return BlockHeader(ref, length, data_crc, len(header))


_IOV_MAX = 1024


def _write_all(fd: int, pieces: list[bytes] | list[bytes | bytearray | memoryview]) -> None:
    """Write every piece in order with `writev` (IOV_MAX pieces at a time), finishing short writes."""
    for first in range(0, len(pieces), _IOV_MAX):
        batch = [memoryview(p) for p in pieces[first:first + _IOV_MAX] if len(p)]
        while batch:
            written = os.writev(fd, batch)
            while batch and written >= len(batch[0]):
                written -= len(batch[0])
                batch.pop(0)
            if batch and written:
                batch[0] = batch[0][written:]


def read_header_file(path: Path) -> BlockHeader:
    """The header of a block file, checked against the file's name and size."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
            if len(raw) >= _FIXED.size:
                need = _FIXED.unpack_from(raw)[1]
                if 4096 < need < 1 << 20:
                    raw += f.read(need - len(raw))
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise BlockFileError(f"unreadable: {exc.strerror}") from None
    header = decode_header(raw)
    if header.ref.digest != path.name:
        raise BlockFileError("file name does not match the header's block")
    if size != header.file_size:
        raise BlockFileError(f"size {size} does not match the header ({header.file_size})")
    return header


def read_verified(path: Path, header_len: int, data_len: int, data_crc: int) -> bytes:
    """The block's data, read and checked against its CRC32C; raises BlockFileError on a mismatch.

    FileNotFoundError passes through (the block was evicted or moved meanwhile).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, data_len, header_len)
    finally:
        os.close(fd)
    if len(data) != data_len:
        raise BlockFileError(f"truncated: {len(data)} of {data_len} bytes")
    if crc32c(data) != data_crc:
        raise BlockFileError("data checksum mismatch")
    return data


Stamp = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns): changes with any write to a file


def open_block(path: Path) -> tuple[int, bool]:
    """Open a block file for checking and sending: `(fd, writable)`. FileNotFoundError passes through.

    Read-write when allowed, because a shared writable mapping can be checksummed without a copy (the
    mapping is never written); read-only otherwise.
    """
    try:
        return os.open(path, os.O_RDWR), True
    except PermissionError:
        return os.open(path, os.O_RDONLY), False


def fd_stamp(fd: int) -> Stamp:
    st = os.fstat(fd)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def verify_fd(fd: int, writable: bool, header_len: int, data_len: int, data_crc: int) -> Stamp:
    """Check an open block file's data in place (mmap + CRC32C, no copy); returns its stamp."""
    stamp = fd_stamp(fd)
    if stamp[1] != header_len + data_len:
        raise BlockFileError(f"size {stamp[1]} does not match the header ({header_len + data_len})")
    if data_len == 0:
        crc = 0
    elif writable:
        with mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE) as mapping:
            view = memoryview(mapping)
            data = view[header_len:]
            try:
                crc = crc32c_of(data)
            finally:
                data.release()
                view.release()
    else:
        crc, done = 0, 0
        while done < data_len:
            chunk = os.pread(fd, min(CHUNK, data_len - done), header_len + done)
            if not chunk:
                raise BlockFileError(f"truncated: {done} of {data_len} bytes")
            crc = google_crc32c.extend(crc, chunk)
            done += len(chunk)
    if crc != data_crc:
        raise BlockFileError("data checksum mismatch")
    return stamp


def file_stamp(path: Path) -> Stamp:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def copy_block(src: Path, dest_root: Path, digest: str) -> None:
    """Copy a block file to another level (temp + rename); the source stays (caller unlinks)."""
    final = block_path(dest_root, digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{digest}.{os.getpid()}.copy{TEMP_SUFFIX}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            size = os.fstat(fin.fileno()).st_size
            done = 0
            while done < size:
                sent = os.sendfile(fout.fileno(), fin.fileno(), done, size - done)
                if sent == 0:
                    break
                done += sent
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def move_block(src: Path, dest_root: Path, digest: str) -> None:
    """Move a block file to another level: a rename on one filesystem, else copy + unlink."""
    final = block_path(dest_root, digest)
    try:
        try:
            os.rename(src, final)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)  # (or the source is gone: raised again)
            os.rename(src, final)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: different filesystems
            raise
    copy_block(src, dest_root, digest)
    with contextlib.suppress(FileNotFoundError):
        src.unlink()


def remove_block(root: Path, digest: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        block_path(root, digest).unlink()


@dataclass(frozen=True)
class ScannedBlock:
    header: BlockHeader
    mtime: float


def scan_level(root: Path) -> tuple[list[ScannedBlock], int]:
    """Every valid block file under a level's block root, oldest first; and how many were discarded.

    Temp files (a write cut short) and files with a bad header, name or size are deleted.
    """
    found: list[ScannedBlock] = []
    discarded = 0
    if not root.is_dir():
        return found, 0
    for sub in root.iterdir():
        if not sub.is_dir():
            continue
        for path in sub.iterdir():
            if path.name.endswith(TEMP_SUFFIX) or path.name.startswith("."):
                discarded += 1
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                header = read_header_file(path)
                mtime = path.stat().st_mtime
            except (BlockFileError, OSError):
                discarded += 1
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(ScannedBlock(header, mtime))
    found.sort(key=lambda b: b.mtime)
    return found, discarded
