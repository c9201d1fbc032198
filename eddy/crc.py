"""CRC32C over any buffer (bytearray, mmap, memoryview) without copying it, and with the GIL released.

`google_crc32c`'s Python binding accepts only `bytes` and holds the GIL while it runs. Its bundled
native library exports `crc32c_extend(crc, ptr, len)`; calling that through ctypes checks an mmap of a
block file in place (no copy into a Python object, other threads keep running). If the library cannot
be found, the binding is used on a `bytes` copy instead.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import google_crc32c

_extend: Any = None


def _load() -> Any:
    base = os.path.dirname(os.path.dirname(google_crc32c.__file__))
    for path in sorted(glob.glob(os.path.join(base, "google_crc32c.libs", "libcrc32c*.so*"))):
        try:
            lib = ctypes.CDLL(path)
            fn = lib.crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        return fn
    return None


_extend = _load()


def crc32c_of(buf: Any, crc: int = 0) -> int:
    """CRC32C of a buffer (extending `crc`); zero-copy for writable buffers (bytearray, mmap)."""
    view = memoryview(buf).cast("B")
    n = len(view)
    if n == 0:
        return crc
    if _extend is not None and not view.readonly:
        pointer = ctypes.addressof(ctypes.c_char.from_buffer(view))
        return int(_extend(crc, pointer, n))
    return int(google_crc32c.extend(crc, bytes(view)))


def native() -> bool:
    return _extend is not None
