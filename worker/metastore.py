"""Small named blobs (the preloader's listing snapshot), kept on the first disk level if there is one.

Blobs live in memory and, when the worker has a disk level, also in `<level>/meta/<name>` (written to a
temp file and renamed), so a restarted worker still has them. MEM-only workers keep them in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BadMetaName(ValueError):
    pass


class MetaStore:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._blobs: dict[str, bytes] = {}

    async def open(self) -> None:
        if self.directory is None:
            return
        self._blobs.update(await asyncio.to_thread(self._load))

    def _load(self) -> dict[str, bytes]:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        blobs: dict[str, bytes] = {}
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()
            elif NAME.match(path.name) and path.is_file():
                blobs[path.name] = path.read_bytes()
        return blobs

    @staticmethod
    def check(name: str) -> None:
        if not NAME.match(name):
            raise BadMetaName(f"meta name {name!r} must be 1-128 letters, digits, '.', '_' or '-'")

    def peek(self, name: str) -> bytes:
        """The blob of that name, or b"" (no name check: for size accounting)."""
        return self._blobs.get(name, b"")

    def total_bytes(self) -> int:
        return sum(len(b) for b in self._blobs.values())

    def get(self, name: str) -> bytes | None:
        self.check(name)
        return self._blobs.get(name)

    async def put(self, name: str, data: bytes) -> None:
        self.check(name)
        if self.directory is not None:
            await asyncio.to_thread(self._write, name, data)
        self._blobs[name] = data

    def _write(self, name: str, data: bytes) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)

    def names(self) -> list[str]:
        return sorted(self._blobs)
