"""`eddy sandbox up|status|exec|down` as a person uses it: the real kubectl against the kubeconfig it
writes, exec as the container's user, and nothing left behind after `down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EDDY = [sys.executable, "-m", "eddy_cli.main"]


def eddy(*args: str, timeout: float = 60, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*EDDY, *args], cwd=REPO, capture_output=True, timeout=timeout, input=stdin)


def wait_for(what: str, check: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def test_up_exec_down_leaves_nothing(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the sandbox needs root (namespaces, mounts, other users)"
    root = tmp_path / "sbx"
    up = subprocess.Popen([*EDDY, "sandbox", "--root", str(root), "up"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for("the sandbox's state file", lambda: (root / "state.json").exists() or up.poll() is not None)
        assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
        state = json.loads((root / "state.json").read_text())
        status = eddy("sandbox", "--root", str(root), "status")
        assert status.returncode == 0 and state["kubeconfig"].encode() in status.stdout
        env = {**os.environ, "KUBECONFIG": state["kubeconfig"]}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "look-around"},
               "spec": {"containers": [{"name": "shell", "image": "busybox", "command": ["sleep", "600"],
                                        "securityContext": {"runAsUser": 1000}}]}}
        subprocess.run(["kubectl", "apply", "-f", "-"], input=yaml.safe_dump(pod).encode(), env=env,
                       check=True, capture_output=True, timeout=60)

        def running() -> bool:
            out = subprocess.run(["kubectl", "get", "pod", "look-around", "-o", "json"], env=env,
                                 capture_output=True, timeout=30)
            return out.returncode == 0 and json.loads(out.stdout).get("status", {}).get("phase") == "Running"

        wait_for("the pod to run", running)
        table = subprocess.run(["kubectl", "get", "pods"], env=env, capture_output=True, timeout=30,
                               check=True)
        assert b"look-around" in table.stdout and b"Running" in table.stdout
        result = eddy("sandbox", "--root", str(root), "exec", "look-around", "--", "sh", "-c", "id -u; cat")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [b"1000"]
        piped = eddy("sandbox", "--root", str(root), "exec", "look-around", "--", "cat", stdin=b"hello\n")
        assert piped.stdout == b"hello\n"
        failing = eddy("sandbox", "--root", str(root), "exec", "look-around", "--", "sh", "-c", "exit 3")
        assert failing.returncode == 3
        missing = eddy("sandbox", "--root", str(root), "exec", "no-such-pod", "--", "true")
        assert missing.returncode == 1 and b"not found" in missing.stderr
        down = eddy("sandbox", "--root", str(root), "down", timeout=150)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=120)
    assert not mounts_under(root), "mounts left behind"
    assert not [n for n in netns_names() if n.startswith(state["name"])], "network namespaces left behind"
    assert not (root / "state.json").exists()
    assert eddy("sandbox", "--root", str(root), "status").returncode == 1
