"""The worker StatefulSet's hardening (issue 14 §3): securityContext per tier kind, liveness on /healthz,
preferred anti-affinity across nodes, and one PodDisruptionBudget per Dataset."""

from __future__ import annotations

from typing import Any

from controller.objects import NONROOT_UID, Settings, desired_objects
from tests.test_controller_objects import by_kind, docs


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(objects)["StatefulSet"]["spec"]["template"]["spec"]
    return spec


def test_emptydir_tiers_run_as_nonroot_with_fsgroup() -> None:
    ds, rt = docs()
    rt["spec"]["tieredstore"] = {"levels": [
        {"mediumtype": "MEM", "volumeType": "emptyDir", "path": "/dev/shm", "quota": "1Gi"},
        {"mediumtype": "SSD", "volumeType": "emptyDir", "path": "/cache", "quota": "2Gi"},
    ]}
    spec = pod_spec(desired_objects(ds, rt, Settings()))
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True,
                                       "runAsUser": NONROOT_UID, "runAsGroup": NONROOT_UID,
                                       "fsGroup": NONROOT_UID}
    container = spec["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_a_hostpath_tier_runs_as_root_without_capabilities() -> None:
    ds, rt = docs()
    rt["spec"]["tieredstore"] = {"levels": [
        {"mediumtype": "MEM", "volumeType": "emptyDir", "path": "/dev/shm", "quota": "1Gi"},
        {"mediumtype": "SSD", "volumeType": "hostPath", "path": "/mnt/nvme", "quota": "10Gi"},
    ]}
    spec = pod_spec(desired_objects(ds, rt, Settings()))
    assert spec["securityContext"]["runAsUser"] == 0 and "runAsNonRoot" not in spec["securityContext"]
    assert spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_anti_affinity_and_one_pdb_per_dataset() -> None:
    ds, rt = docs()
    objects = desired_objects(ds, rt, Settings())
    sts = by_kind(objects)["StatefulSet"]
    assert objects[-1] is sts, "created last: its pods start with their config and token in place"
    anti = pod_spec(objects)["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    pdb = by_kind(objects)["PodDisruptionBudget"]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": sts["spec"]["selector"]}
    assert pdb["metadata"]["ownerReferences"][0]["kind"] == "Dataset"
