"""Native-sidecar detection: Kubernetes >= 1.29 on the API server and on every kubelet."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.versions import (
    kubelet_version,
    minor_version,
    runs_native_sidecars,
    server_version,
)


def supports_native_sidecars(server: str, nodes: list[dict[str, Any]]) -> bool:
    """The decision webhook/cluster.py's NativeSidecarState keeps up to date from node events."""
    return runs_native_sidecars(server) and all(runs_native_sidecars(kubelet_version(n)) for n in nodes)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v1.30.2", (1, 30)),
        ("v1.26.3-aliyun.1", (1, 26)),
        ("v1.22.0-vk-v2.11.0", (1, 22)),
        ("1.29", (1, 29)),
        ("", None),
        ("unknown", None),
    ],
)
def test_minor_version(text: str, expected: tuple[int, int] | None) -> None:
    assert minor_version(text) == expected


def test_server_and_nodes_must_all_be_new_enough() -> None:
    nodes = [{"status": {"nodeInfo": {"kubeletVersion": v}}} for v in ("v1.30.1", "v1.29.0-eks-1")]
    assert supports_native_sidecars("v1.30.0", nodes)
    assert not supports_native_sidecars("v1.28.9", nodes)
    virtual = [*nodes, {"status": {"nodeInfo": {"kubeletVersion": "v1.26.3-vk-2.11"}}}]
    assert not supports_native_sidecars("v1.30.0", virtual)
    assert not supports_native_sidecars("v1.30.0", [{"status": {}}])
    assert supports_native_sidecars("v1.31.0", [])
    assert server_version({"major": "1", "minor": "30+"}) == "1.30"
    assert server_version({"gitVersion": "v1.29.4-gke.1"}) == "v1.29.4-gke.1"


def test_one_version_at_a_time() -> None:
    """What the node informer's handler decides per node (webhook/cluster.py's NativeSidecarState)."""
    assert [runs_native_sidecars(v) for v in ("v1.29.0-eks-1", "v1.30.2", "2.0", "v1.28.9", "", "v1")] == [
        True, True, True, False, False, False]
    virtual = {"status": {"nodeInfo": {"kubeletVersion": "v1.26.3-aliyun.1"}}}
    assert kubelet_version(virtual) == "v1.26.3-aliyun.1"
    assert kubelet_version({"status": None}) == kubelet_version({}) == ""
