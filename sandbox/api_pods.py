"""Pod subresources and deletion rules of the sandbox API server, as kube-apiserver's pod registry has
them: `pods/{name}/binding` (what a scheduler posts), `pods/{name}/log` (read from the file the
kubelet registers through `KubeApiServer.log_source`), and the grace period a DELETE gets."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import WSMsgType, web

from sandbox.api_kinds import ApiError, Obj, now

# (namespace, pod, container) -> the container's log file, or None while it has none.
LogSource = Callable[[str, str, str], "str | Path | None"]


def bind(pod: Obj, body: object) -> Obj:
    """The pod after a `Binding` to a node: `spec.nodeName` and a `PodScheduled` condition."""
    if not isinstance(body, dict) or not isinstance(body.get("target"), dict):
        raise ApiError(400, "BadRequest", "the body must be a Binding with a target")
    target = body["target"]
    name = pod["metadata"]["name"]
    if target.get("kind") not in (None, "", "Node") or not target.get("name"):
        raise ApiError(422, "Invalid", f'Binding "{name}" is invalid: target: must be a Node with a name')
    if pod["metadata"].get("deletionTimestamp"):
        raise ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on pods/binding "{name}": pod '
            f"{name} is being deleted, cannot be assigned to a host",
        )
    uid = (body.get("metadata") or {}).get("uid")
    if uid and uid != pod["metadata"].get("uid"):
        raise ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on pods/binding "{name}": Precondition '
            f"failed: UID in precondition: {uid}, UID in object meta: {pod['metadata'].get('uid')}",
        )
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        raise ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on pods/binding "{name}": pod '
            f'{name} is already assigned to node "{node}"',
        )
    new = copy.deepcopy(pod)
    new.setdefault("spec", {})["nodeName"] = target["name"]
    status = new.setdefault("status", {})
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
    conditions.append(
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now()}
    )
    status["conditions"] = conditions
    return new


def grace_period(pod: Obj, requested: int | None) -> int:
    """The grace period of a pod DELETE: the request's, else `terminationGracePeriodSeconds` (30);
    0 for a pod no node runs (unbound) or one that has finished, which go at once."""
    spec, phase = pod.get("spec") or {}, (pod.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    if requested is not None:
        return max(0, requested)
    grace = spec.get("terminationGracePeriodSeconds")
    return 30 if grace is None else max(0, int(grace))


def _container(pod: Obj, requested: str) -> str:
    spec = pod.get("spec") or {}
    names = [str(c.get("name", "")) for c in spec.get("containers") or []]
    init_names = [str(c.get("name", "")) for c in spec.get("initContainers") or []]
    name = pod["metadata"]["name"]
    if requested:
        if requested not in names + init_names:
            raise ApiError(400, "BadRequest", f"container {requested} is not valid for pod {name}")
        return requested
    if len(names) == 1:
        return names[0]
    raise ApiError(
        400,
        "BadRequest",
        f"a container name must be specified for pod {name}, choose one of: "
        f"[{' '.join(names)}]"
        + (f" or one of the init containers: [{' '.join(init_names)}]" if init_names else ""),
    )


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def _running(pod: Obj | None, container: str) -> bool:
    if pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    status = pod.get("status") or {}
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if cs.get("name") == container and (cs.get("state") or {}).get("terminated") is not None:
            return False
    return True


async def serve_log(
    request: web.Request, pod: Obj, source: LogSource | None, current: Callable[[], Obj | None]
) -> web.StreamResponse:
    """`GET pods/{name}/log`: `container`, `tailLines`, `limitBytes`, `follow` (until the container
    ends, the pod goes or the client leaves). `previous`, `timestamps` and `sinceSeconds` are not
    modelled (the kubelet keeps one file per container)."""
    q = request.query
    namespace, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
    container = _container(pod, q.get("container", ""))
    path = source(namespace, name, container) if source is not None else None
    if path is None or not await asyncio.to_thread(Path(path).exists):
        raise ApiError(
            400,
            "BadRequest",
            f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
        )
    data = await asyncio.to_thread(Path(path).read_bytes)
    offset = len(data)
    data = _tail(data, int(q.get("tailLines", "-1")))
    limit = int(q["limitBytes"]) if q.get("limitBytes") else None
    if limit is not None:
        data = data[:limit]
    follow = q.get("follow", "").lower() in ("true", "1")
    if not follow:
        return web.Response(body=data, content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    sent = len(data)
    with contextlib.suppress(ConnectionResetError):
        await response.write(data)
        while limit is None or sent < limit:
            running = _running(current(), container)
            chunk = await asyncio.to_thread(_read_from, Path(path), offset)
            offset += len(chunk)
            if limit is not None:
                chunk = chunk[: limit - sent]
            if chunk:
                await response.write(chunk)
                sent += len(chunk)
            elif not running:
                break
            else:
                await asyncio.sleep(0.2)
        await response.write_eof()
    return response


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except FileNotFoundError:
        return b""


_MUTABLE = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates")


def validate_update(old: Obj, new: Obj) -> None:
    """kube-apiserver's pod update validation: only container images, activeDeadlineSeconds,
    tolerations, terminationGracePeriodSeconds and schedulingGates may change in a pod's spec."""
    before, after = copy.deepcopy(old.get("spec") or {}), copy.deepcopy(new.get("spec") or {})
    for key in _MUTABLE:
        after.pop(key, None)
        before.pop(key, None)
    for group in ("containers", "initContainers"):
        for a, b in zip(after.get(group) or [], before.get(group) or [], strict=False):
            if isinstance(a, dict) and isinstance(b, dict):
                a.pop("image", None)
                b.pop("image", None)
    if after != before:
        name = new.get("metadata", {}).get("name", "")
        raise ApiError(
            422,
            "Invalid",
            f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change '
            "fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
            "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
            "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
            "previously negative)",
            {"name": name, "kind": "Pod"},
        )


# ---------------------------------------------------------------------------------------------- exec
class ExecOutcome(Protocol):
    @property
    def returncode(self) -> int: ...
    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...


# (namespace, pod, container, argv, stdin=bytes | None) -> what the command did (PodRunner.exec fits)
ExecHandler = Callable[..., Awaitable[ExecOutcome]]
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


def _exec_status(argv: list[str], outcome: ExecOutcome | None, error: str) -> Obj:
    if outcome is not None and outcome.returncode == 0 and not error:
        return {"metadata": {}, "status": "Success"}
    if outcome is None:
        return {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError", "code": 500}
    code = outcome.returncode
    return {
        "metadata": {},
        "status": "Failure",
        "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: error executing command "
        f"{argv}, exit code {code}",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


async def serve_exec(request: web.Request, pod: Obj, handler: ExecHandler | None) -> web.StreamResponse:
    """`pods/{name}/exec` over a WebSocket (the `v5.channel.k8s.io` protocol kubectl 1.30+ speaks): stdin
    from channel 0 until the client closes it (channel 255) when `stdin=true`, then the command runs
    through `handler` (buffered, no TTY) and its stdout (1), stderr (2) and final Status (3) are sent.
    SPDY (kubectl before 1.30) is not spoken."""
    q = request.query
    argv = q.getall("command", [])
    container = _container(pod, q.get("container", ""))
    if not argv:
        raise ApiError(400, "BadRequest", "you must specify at least 1 command")
    if handler is None:
        raise ApiError(
            400, "BadRequest", "no container runtime is attached to this API server (exec_handler)"
        )
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError(
            400,
            "BadRequest",
            "pods/exec needs a WebSocket upgrade (v5.channel.k8s.io); SPDY is not supported by the sandbox",
        )
    ws = web.WebSocketResponse(protocols=EXEC_PROTOCOLS, autoping=True)
    await ws.prepare(request)
    stdin = bytearray()
    if q.get("stdin", "").lower() in ("true", "1"):
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
                continue
            channel, data = msg.data[0], msg.data[1:]
            if channel == 0:
                stdin += data
            elif channel == 255 and data[:1] == b"\x00":
                break
    outcome: ExecOutcome | None = None
    error = ""
    try:
        outcome = await handler(
            pod["metadata"].get("namespace", ""),
            pod["metadata"]["name"],
            container,
            argv,
            stdin=bytes(stdin) if stdin else None,
        )
    except Exception as exc:  # the runtime's failure is the command's: reported on the error channel
        error = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(ConnectionResetError):
        if outcome is not None:
            for channel, data in ((1, outcome.stdout), (2, outcome.stderr)):
                for at in range(0, len(data), 1 << 20):
                    await ws.send_bytes(bytes([channel]) + data[at : at + (1 << 20)])
        await ws.send_bytes(b"\x03" + json.dumps(_exec_status(argv, outcome, error)).encode())
        await ws.close()
    return ws
