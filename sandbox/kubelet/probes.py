"""Probes and lifecycle handlers: exec, httpGet, tcpSocket (and the `sleep` handler), as kubelet runs them.

A probe's one attempt returns (ok, message). `Prober` repeats it with initialDelaySeconds,
periodSeconds, timeoutSeconds, successThreshold and failureThreshold and reports each change of
result to a callback, the way kubelet's prober workers feed the status manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Obj = dict[str, Any]


# Runs argv in the container with a timeout: (exit code, stdout + stderr).
Execer = Callable[[list[str], float], Awaitable[tuple[int, bytes]]]


def _port(value: Any, container: Obj) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"port {value!r} is not a number and not a named port of the container")


async def run_action(action: Obj, *, container: Obj, pod_ip: str, execer: Execer,
                     timeout: float) -> tuple[bool, str]:
    """One attempt of a probe or handler (`exec`, `httpGet`, `tcpSocket`, `sleep`)."""
    try:
        if "exec" in action:
            argv = [str(a) for a in action["exec"].get("command") or []]
            code, output = await execer(argv, timeout)
            text = output.decode("utf-8", "replace").strip()[-500:]
            return code == 0, text if code == 0 else f"command {argv!r} exited with {code}: {text}"
        if "httpGet" in action:
            return await _http(action["httpGet"], container, pod_ip, timeout)
        if "tcpSocket" in action:
            spec = action["tcpSocket"]
            host, port = spec.get("host") or pod_ip, _port(spec.get("port"), container)
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True, ""
        if "sleep" in action:
            await asyncio.sleep(float(action["sleep"].get("seconds", 0)))
            return True, ""
        if "grpc" in action:
            return False, "grpc probes are not supported by the sandbox"
    except TimeoutError:
        return False, f"timeout after {timeout:g}s"
    except Exception as exc:  # connection refused, bad port, container gone...: the probe failed
        return False, f"{type(exc).__name__}: {exc}"
    return False, "the probe has no handler"


async def _http(spec: Obj, container: Obj, pod_ip: str, timeout: float) -> tuple[bool, str]:
    scheme = str(spec.get("scheme") or "HTTP").lower()
    host = spec.get("host") or pod_ip
    port = _port(spec.get("port"), container)
    path = str(spec.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    headers = {h["name"]: str(h.get("value", "")) for h in spec.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/1.32")
    ctx: ssl.SSLContext | bool = False
    if scheme == "https":  # kubelet does not verify the certificate of a probe
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    url = f"{scheme}://{host}:{port}{path}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.get(url, headers=headers, ssl=ctx, allow_redirects=True) as response:
        ok = 200 <= response.status < 400
        return ok, "" if ok else f"HTTP probe failed with statuscode: {response.status}"


class Prober:
    """Runs one probe of one container until stopped; `on_result(ok, message)` on each change."""

    def __init__(self, kind: str, probe: Obj, *, container: Obj, pod_ip: str, execer: Execer,
                 on_result: Callable[[bool, str], Awaitable[None]]) -> None:
        self.kind = kind  # startup | readiness | liveness
        self.probe = probe
        self.container = container
        self.pod_ip = pod_ip
        self.execer = execer
        self.on_result = on_result
        self.result: bool | None = None
        self._stop = asyncio.Event()
        self.busy = False  # an attempt is in flight

    def stop(self) -> None:
        """End the loop after the attempt in flight (cancelling an exec mid-way would strand it)."""
        self._stop.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run(self) -> None:
        p = self.probe
        period = max(1, int(p.get("periodSeconds", 10)))
        timeout = max(1, int(p.get("timeoutSeconds", 1)))
        need_ok = max(1, int(p.get("successThreshold", 1)))
        need_fail = max(1, int(p.get("failureThreshold", 3)))
        await self._pause(max(0, int(p.get("initialDelaySeconds", 0))))
        oks = fails = 0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            self.busy = True
            try:
                ok, message = await run_action(p, container=self.container, pod_ip=self.pod_ip,
                                               execer=self.execer, timeout=timeout)
            finally:
                self.busy = False
            if self._stop.is_set():
                return
            if ok:
                oks, fails = oks + 1, 0
                if oks >= need_ok and self.result is not True:
                    self.result = True
                    await self.on_result(True, "")
                    if self.kind == "startup":  # kubelet stops a startup probe once it succeeded
                        return
            else:
                oks, fails = 0, fails + 1
                if fails >= need_fail and self.result is not False:
                    self.result = False
                    await self.on_result(False, message)
                elif fails >= need_fail and self.kind == "liveness":
                    await self.on_result(False, message)
            await self._pause(max(0.0, period - (loop.time() - started)))
