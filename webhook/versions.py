"""Does the cluster run native sidecars? (Kubernetes >= 1.29 on the API server AND on every node.)

Virtual nodes (ECI's virtual-kubelet, ACS) report kubelet versions like `v1.26.3-aliyun.1` or
`v1.22.0-vk-v2.11.0`; only `major.minor` matters. An unparseable version counts as too old: a pod with a
native sidecar on a kubelet that ignores `restartPolicy: Always` would block forever in init.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NATIVE_SIDECAR_MINIMUM = (1, 29)
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


def minor_version(text: str) -> tuple[int, int] | None:
    match = _VERSION.match(text.strip()) if isinstance(text, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def server_version(version_doc: Mapping[str, Any]) -> str:
    """`/version`'s gitVersion, else `major.minor` (minor may read `30+` on managed clusters)."""
    git = version_doc.get("gitVersion")
    if isinstance(git, str) and git:
        return git
    minor = re.sub(r"\D", "", str(version_doc.get("minor", "")))
    return f"{version_doc.get('major', '')}.{minor}"


def kubelet_version(node: Mapping[str, Any]) -> str:
    return str(((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""))


def runs_native_sidecars(version: str) -> bool:
    """Is this API server or kubelet version >= 1.29? (Unparseable: no.)"""
    parsed = minor_version(version)
    return parsed is not None and parsed >= NATIVE_SIDECAR_MINIMUM

