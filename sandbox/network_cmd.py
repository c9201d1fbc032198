"""`ip` (iproute2) through an asyncio subprocess, for the pod network and its service proxy."""

from __future__ import annotations

import asyncio


class NetworkError(RuntimeError):
    """The pod network could not be set up (missing capability, a conflicting route, a failed command)."""


async def run_ip(*args: str, check: bool = True) -> str:
    """`ip ARGS...`; returns stdout, raises NetworkError with stderr when `check` and it fails."""
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if check and proc.returncode:
        raise NetworkError(f"ip {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")
