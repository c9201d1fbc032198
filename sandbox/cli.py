"""`eddy sandbox up|down|exec|status`: the one-machine cluster for a person to look around in.

`up` runs the cluster in the foreground (Ctrl-C, SIGTERM or `eddy sandbox down` stops it and everything
it started: pods, mounts, network namespaces, the bridge) and writes a kubeconfig for kubectl. `exec`
runs a command in a pod's container, as that container's user, through the running `up` process (a
Unix socket in the sandbox's folder): what `kubectl exec` does, without a terminal. Heavy imports stay
inside the commands, so `eddy --help` and the probes of other parts never load the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path(os.environ.get("EDDY_SANDBOX_DIR", "/tmp/eddy-sandbox"))
SOCKET = "control.sock"
STATE = "state.json"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sandbox", help="a one-machine Kubernetes stand-in (API server, admission, pod runner)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"the sandbox's folder (default {DEFAULT_ROOT}, or $EDDY_SANDBOX_DIR)")
    commands = parser.add_subparsers(dest="sandbox_command", metavar="COMMAND", required=True)
    up = commands.add_parser("up", help="start the cluster and keep it up until Ctrl-C or `down`")
    up.add_argument("--kubernetes-version", default="v1.30.0",
                    help="what /version reports (below v1.29 the webhook injects classic sidecars)")
    up.add_argument("--install", action="store_true", help="then `kubectl apply -k manifests/` (Eddy)")
    up.set_defaults(func=run_up)
    down = commands.add_parser("down", help="stop a running `up` and wait until it has cleaned up")
    down.add_argument("--timeout", type=float, default=120.0)
    down.set_defaults(func=run_down)
    status = commands.add_parser("status", help="is a sandbox up here, and where is its kubeconfig")
    status.set_defaults(func=run_status)
    exec_ = commands.add_parser("exec", help="run a command in a pod's container, as its user")
    exec_.add_argument("-n", "--namespace", default="default")
    exec_.add_argument("-c", "--container", default="", help="default: the pod's last container (the app)")
    exec_.add_argument("--timeout", type=float, default=600.0)
    exec_.add_argument("pod")
    exec_.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command")
    exec_.set_defaults(func=run_exec)


def read_state(root: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # left by a process that is gone
    return state


# ---------------------------------------------------------------------- up
async def run_up(args: argparse.Namespace) -> int:
    from aiohttp import web

    from sandbox.cluster import Sandbox
    from sandbox.scenario import Scenario

    root: Path = args.root
    if read_state(root) is not None:
        print(f"eddy sandbox: one is already up in {root} (eddy sandbox down --root {root})", file=sys.stderr)
        return 1
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = Sandbox(root / "cluster", git_version=args.kubernetes_version)
    site_runner: web.AppRunner | None = None
    try:
        await cluster.start()
        site_runner = await serve_control(cluster, root / SOCKET)
        (root / STATE).write_text(json.dumps({
            "pid": os.getpid(), "name": cluster.name, "url": cluster.url,
            "kubeconfig": str(cluster.kubeconfig), "gateway": cluster.gateway, "started": time.time(),
        }))
        print(f"sandbox up: API {cluster.url}, pods on {cluster.gateway}", flush=True)
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        if args.install:
            await Scenario(cluster, say=lambda text: print(text, flush=True)).install_eddy()
        print("Ctrl-C or `eddy sandbox down` stops it", flush=True)
        await stop.wait()
        print("stopping the sandbox ...", flush=True)
        return 0
    finally:
        if site_runner is not None:
            await site_runner.cleanup()
        await cluster.stop()
        for name in (STATE, SOCKET):
            with contextlib.suppress(FileNotFoundError):
                (root / name).unlink()
        print("sandbox stopped: no pod, mount or network namespace left", flush=True)


async def serve_control(cluster: Any, path: Path) -> Any:
    """POST /exec {namespace, pod, container, argv, stdin?, timeout?} -> {returncode, stdout, stderr}."""
    import base64

    from aiohttp import web

    async def exec_handler(request: web.Request) -> web.Response:
        body = await request.json()
        pod = await cluster.kube.get_or_none(_pods(), body["pod"], body["namespace"])
        if pod is None:
            return web.json_response({"error": f'pods "{body["pod"]}" not found'}, status=404)
        container = body.get("container") or pod["spec"]["containers"][-1]["name"]
        try:
            result = await cluster.runner.exec(
                body["namespace"], body["pod"], container, list(body["argv"]),
                stdin=base64.b64decode(body["stdin"]) if body.get("stdin") else None,
                timeout=float(body.get("timeout") or 600),
            )
        except Exception as exc:  # the message is the answer: no such container, not running, ...
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({
            "returncode": result.returncode,
            "stdout": base64.b64encode(result.stdout).decode(),
            "stderr": base64.b64encode(result.stderr).decode(),
        })

    app = web.Application()
    app.router.add_post("/exec", exec_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await asyncio.to_thread(path.unlink, missing_ok=True)
    await web.UnixSite(runner, str(path)).start()
    await asyncio.to_thread(path.chmod, 0o600)
    return runner


def _pods() -> Any:
    from eddy.kube import PODS

    return PODS


# ---------------------------------------------------------------------- down, status, exec
async def run_down(args: argparse.Namespace) -> int:
    state = read_state(args.root)
    if state is None:
        print(f"eddy sandbox: none is up in {args.root}", file=sys.stderr)
        return 1
    os.kill(int(state["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if read_state(args.root) is None:
            print("sandbox stopped")
            return 0
        await asyncio.sleep(0.2)
    print(f"eddy sandbox: pid {state['pid']} still running after {args.timeout:.0f}s", file=sys.stderr)
    return 1


async def run_status(args: argparse.Namespace) -> int:
    state = read_state(args.root)
    if state is None:
        print(f"no sandbox up in {args.root}")
        return 1
    print(f"sandbox up (pid {state['pid']}): API {state['url']}, pods on {state['gateway']}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


async def run_exec(args: argparse.Namespace) -> int:
    import base64

    import aiohttp

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("eddy sandbox exec: give the command after --", file=sys.stderr)
        return 2
    if read_state(args.root) is None:
        print(f"eddy sandbox: none is up in {args.root} (eddy sandbox up)", file=sys.stderr)
        return 1
    stdin = b"" if sys.stdin.isatty() else await asyncio.to_thread(sys.stdin.buffer.read)
    body = {"namespace": args.namespace, "pod": args.pod, "container": args.container, "argv": argv,
            "stdin": base64.b64encode(stdin).decode() if stdin else "", "timeout": args.timeout}
    connector = aiohttp.UnixConnector(path=str(args.root / SOCKET))
    timeout = aiohttp.ClientTimeout(total=args.timeout + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, session.post(
        "http://sandbox/exec", json=body
    ) as response:
        answer = await response.json()
    if "error" in answer:
        print(f"eddy sandbox exec: {answer['error']}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(base64.b64decode(answer["stdout"]))
    sys.stderr.buffer.write(base64.b64decode(answer["stderr"]))
    return int(answer["returncode"])
