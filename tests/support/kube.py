"""Pytest fixtures for the sandbox's Kubernetes API server (`sandbox/apiserver.py`; docs/kube.md).

- `kube_api` starts a fresh, empty in-memory API server (`bare`: no system namespaces, nothing added to
  new namespaces) on 127.0.0.1 for one test; `kube_client` is a kubernetes-asyncio `ApiClient`
  pointing at it (no auth), closed at teardown.
- `sandbox_api` is the server as the sandbox cluster runs it: `default`, `kube-system` and
  `kube-public` exist, each namespace gets its `default` ServiceAccount and `kube-root-ca.crt`.
- `write_kubeconfig(path, server, url="")` and `kubectl(kubeconfig, *args)` run the real kubectl against it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes_asyncio import client as k8s

from sandbox.apiserver import KINDS, ApiError, Kind, KubeApiServer, label_match, merge_patch

__all__ = [
    "KINDS",
    "ApiError",
    "Kind",
    "KubeApiServer",
    "api_client_for",
    "kubectl",
    "label_match",
    "merge_patch",
    "write_kubeconfig",
]


def api_client_for(url: str) -> k8s.ApiClient:
    """A kubernetes-asyncio ApiClient for a test server URL (plain HTTP, no credentials)."""
    configuration = k8s.Configuration(host=url)
    return k8s.ApiClient(configuration)


def write_kubeconfig(path: Path, server: KubeApiServer, url: str = "", namespace: str = "default") -> Path:
    """The server's kubeconfig (`KubeApiServer.kubeconfig`) written to `path`."""
    path.write_text(server.kubeconfig(url, namespace))
    return path


def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is missing: install Debian's kubernetes-client (or put kubectl on PATH); "
            "these tests run the real kubectl against the sandbox API server"
        )
    return found


async def kubectl(
    kubeconfig: Path, *args: str, cwd: Path | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run kubectl against the kubeconfig's server (its discovery cache beside the kubeconfig):
    (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        kubectl_binary(),
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(kubeconfig.parent / "kube-cache"),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


@pytest_asyncio.fixture
async def kube_api() -> AsyncIterator[KubeApiServer]:
    server = KubeApiServer(bare=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def sandbox_api() -> AsyncIterator[KubeApiServer]:
    server = KubeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def kube_client(kube_api: KubeApiServer) -> AsyncIterator[k8s.ApiClient]:
    api = api_client_for(kube_api.url)
    try:
        yield api
    finally:
        await api.close()
