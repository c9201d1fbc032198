"""pyfuse3 on asyncio with less work per FUSE request than `pyfuse3.asyncio`.

pyfuse3 runs its request loop against a small trio-like interface (`pyfuse3.trio`); `pyfuse3.asyncio`
fills it in for asyncio, and there every request pays for a fresh future, an `add_reader` and a
`remove_reader` on `/dev/fuse` (two `epoll_ctl` calls and the selector's bookkeeping) and a trip
through the event loop, even when the next request is already queued. On a tree of small files
(three requests per file: OPEN, READ, RELEASE) that was about a sixth of the filesystem's own CPU.

Here the reader stays registered while tasks keep coming back to wait, and a wait first asks
`poll(fd, 0)`: when a request is queued (the kernel often sends a file's RELEASE and the next file's
OPEN back to back, and several read-ahead READs at once), the waiting task goes on to read it with no
future and no trip through the loop. pyfuse3's read of `/dev/fuse` blocks, so a wait returns only on
that `poll`, asked right before the read, also after an epoll wake-up: epoll's report may be of a
request another task has read since through the `poll` (it then waits again). Only one task waits at
a time (pyfuse3's read lock) and it reads right after the wait returns. The reader is removed once
`/dev/fuse` was reported readable twice with nobody waiting (level-triggered epoll would otherwise
wake the loop for nothing) and added again by the next wait.

`enable()` replaces `pyfuse3.asyncio.enable()`; `bench/memfs.py` (the ceiling) uses it too, so the gap
between the two stays the sidecar's own cost.
"""

from __future__ import annotations

import asyncio
import collections
import select
import types

import pyfuse3
import pyfuse3.asyncio as pyfuse3_asyncio

ClosedResourceError = pyfuse3_asyncio.ClosedResourceError


class ReadableFd:
    """Readiness of one descriptor for the tasks that take turns waiting on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self.registered = False
        self.waiter: asyncio.Future[None] | None = None
        self.idle_wakeups = 0  # readiness reported with nobody waiting, since the last wait
        self.closed = False

    async def wait(self) -> None:
        """Return when a request can be read without blocking (pyfuse3's read is a blocking one)."""
        self.idle_wakeups = 0  # somebody came to read: the reports so far were not for nothing
        while True:
            if self.closed:
                raise ClosedResourceError()
            # Asked right before the read, never taken from an earlier report: epoll's report of a
            # request some task has read since (through this poll) would otherwise block the loop.
            if self._poll.poll(0):  # a request is queued (or the device is gone: the read says so)
                return
            future = self.loop.create_future()
            self.waiter = future
            if not self.registered:
                self.loop.add_reader(self.fd, self._on_readable)
                self.registered = True
            try:
                await future
            finally:
                self.waiter = None

    def _on_readable(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            self.waiter = None
            return
        # Nobody waiting: the woken task has not read yet, or every task is busy. Twice with no wait
        # in between means the loop would keep waking for nothing; the next wait registers again.
        self.idle_wakeups += 1
        if self.idle_wakeups > 1:
            self._unregister()

    def _unregister(self) -> None:
        if self.registered:
            self.loop.remove_reader(self.fd)
            self.registered = False

    def close(self) -> None:
        """Wake the waiter with ClosedResourceError (pyfuse3's loop then ends); no more waits."""
        self.closed = True
        self._unregister()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClosedResourceError())


class HandoffLock:
    """pyfuse3's read lock (`async with lock:`), cheaper than `asyncio.Lock`: a release hands the lock
    straight to the first waiter (which then need not re-check and re-take it), and `async with` runs
    no extra `acquire()` coroutine. Its tasks take turns once per FUSE request; with asyncio.Lock that
    was ~8% of the sidecar's Python time on small files."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if not self._locked:
            self._locked = True
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future  # on wake-up the lock is already ours
        except BaseException:
            if future.done() and not future.cancelled():
                self._release()  # handed to us as we were cancelled: pass it on
            elif future in self._waiters:
                self._waiters.remove(future)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # stays locked: it is the waiter's now
                return
        self._locked = False


_fds: dict[int, ReadableFd] = {}


async def wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    state = _fds.get(fd)
    if state is None or state.closed or state.loop is not loop:
        state = _fds[fd] = ReadableFd(loop, fd)
    await state.wait()


def notify_closing(fd: int) -> None:
    """`pyfuse3.terminate()` calls this: the waiting task (if any) ends pyfuse3's loop."""
    state = _fds.pop(fd, None)
    if state is not None:
        state.close()


def _trio_like() -> types.ModuleType:
    """The namespace pyfuse3 calls as `trio`: pyfuse3.asyncio's, with this module's descriptor waits."""
    shim = types.ModuleType("sidecar.fuseloop.trio")
    for name in ("current_trio_token", "current_task", "open_nursery"):
        setattr(shim, name, getattr(pyfuse3_asyncio, name))
    shim.Lock = HandoffLock  # type: ignore[attr-defined]
    shim.ClosedResourceError = ClosedResourceError  # type: ignore[attr-defined]
    shim.wait_readable = wait_readable  # type: ignore[attr-defined]
    shim.notify_closing = notify_closing  # type: ignore[attr-defined]
    shim.lowlevel = shim  # type: ignore[attr-defined]
    shim.from_thread = shim  # type: ignore[attr-defined]
    return shim


_TRIO_LIKE = _trio_like()


def enable() -> None:
    """Run pyfuse3 on asyncio with these descriptor waits (instead of `pyfuse3.asyncio.enable()`)."""
    pyfuse3.trio = _TRIO_LIKE  # type: ignore[attr-defined]
