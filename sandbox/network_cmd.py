"""`ip` (iproute2) through an asyncio subprocess, for the pod network and its service proxy."""

from __future__ import annotations

import asyncio


class NetworkError(RuntimeError):
    """The pod network could not be set up (missing capability, a conflicting route, a failed command)."""


NETNS_DIR = "/run/netns"


async def run_ip(*args: str, check: bool = True) -> str:
    """`ip ARGS...`; returns stdout, raises NetworkError with stderr when `check` and it fails.

    `ip -n NS ...` runs as `nsenter --net=/run/netns/NS ip ...`: iproute2's own switch also remounts
    `/` (`mount --make-rslave /`), which fails where `/` is not a mount point (a chroot, such as the
    fresh-Debian check's); entering the network namespace alone is all these commands need.
    """
    argv = ["ip", *args]
    if len(args) >= 2 and args[0] == "-n":
        argv = ["nsenter", f"--net={NETNS_DIR}/{args[1]}", "ip", *args[2:]]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if check and proc.returncode:
        raise NetworkError(f"ip {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")
