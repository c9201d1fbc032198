"""Pytest fixtures for the Kubernetes API test server (`sandbox/apiserver.py`; docs/kube.md).

`kube_api` starts a fresh, empty in-memory API server (`bare`: no system namespaces, nothing added to
new namespaces) on 127.0.0.1 for one test; `kube_client` is a
kubernetes-asyncio `ApiClient` pointing at it (no auth), closed at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from kubernetes_asyncio import client as k8s

from sandbox.apiserver import KINDS, ApiError, Kind, KubeApiServer, label_match, merge_patch

__all__ = ["KINDS", "ApiError", "Kind", "KubeApiServer", "api_client_for", "label_match", "merge_patch"]


def api_client_for(url: str) -> k8s.ApiClient:
    """A kubernetes-asyncio ApiClient for a test server URL (plain HTTP, no credentials)."""
    configuration = k8s.Configuration(host=url)
    return k8s.ApiClient(configuration)


@pytest_asyncio.fixture
async def kube_api() -> AsyncIterator[KubeApiServer]:
    server = KubeApiServer(bare=True)
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
