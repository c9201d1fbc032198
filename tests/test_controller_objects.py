"""The objects the controller generates from Fluid's fields: worker resources, placement, PV, names."""

from __future__ import annotations

from typing import Any

import yaml

from controller.objects import Settings, desired_objects
from eddy import names
from tests.support.seed import SEED

UID = "0b6f5e4a-1d2c-4b3a-9e8f-7a6b5c4d3e2f"


def docs(name: str = "serverless-data", namespace: str = "default") -> tuple[dict[str, Any], dict[str, Any]]:
    text = (SEED / "dataset.yaml").read_text().replace("<oss_bucket>", "bucket").replace("<bucket_dir>", "d")
    ds, rt = (d for d in yaml.safe_load_all(text.replace("<oss_endpoint>", "oss.example.com"))
              if d and d["kind"] in ("Dataset", "JindoRuntime"))
    for doc in (ds, rt):
        doc["metadata"] = {"name": name, "namespace": namespace, "uid": UID}
    return ds, rt


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def worker(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = by_kind(objects)["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    return container


def test_worker_memory_request_is_raised_to_the_mem_quota_as_fluid_does() -> None:
    ds, rt = docs()  # the seed: MEM 5Gi, no spec.worker
    container = worker(desired_objects(ds, rt, Settings()))
    assert container["resources"] == {"requests": {"memory": "5Gi"}}  # no longer BestEffort
    rt["spec"]["worker"] = {"resources": {"requests": {"cpu": "2", "memory": "1Gi"},
                                          "limits": {"cpu": "4", "memory": "2Gi"}}}
    container = worker(desired_objects(ds, rt, Settings()))
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "5Gi"}
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "5Gi"}  # raised with the request
    rt["spec"]["worker"]["resources"]["requests"]["memory"] = "8Gi"
    rt["spec"]["worker"]["resources"]["limits"]["memory"] = "10Gi"
    container = worker(desired_objects(ds, rt, Settings()))
    assert (container["resources"]["requests"]["memory"], container["resources"]["limits"]["memory"]) == (
        "8Gi", "10Gi")
    rt["spec"]["tieredstore"]["levels"][0].update(mediumtype="SSD", path="/mnt/ssd", volumeType="hostPath")
    rt["spec"]["worker"] = {}
    assert "resources" not in worker(desired_objects(ds, rt, Settings()))  # no MEM tier: nothing to add


def test_worker_env_labels_and_placement_from_the_runtime_and_the_dataset() -> None:
    ds, rt = docs()
    toleration = {"key": "cache", "operator": "Exists", "effect": "NoSchedule"}
    rt["spec"]["worker"] = {
        "env": {"GOMAXPROCS": "2"}, "nodeSelector": {"disk": "nvme"},
        "tolerations": [{"key": "spot", "operator": "Exists"}, toleration],
        "podMetadata": {"labels": {"team": "ml"}, "annotations": {"note": "x"}},
    }
    required = {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["a"]}]}]}
    ds["spec"].update(nodeAffinity={"required": required}, tolerations=[toleration])
    sts = by_kind(desired_objects(ds, rt, Settings()))["StatefulSet"]
    pod = sts["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"disk": "nvme"}
    assert pod["spec"]["tolerations"] == [toleration, {"key": "spot", "operator": "Exists"}]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    assert pod["spec"]["affinity"]["nodeAffinity"] == affinity["nodeAffinity"]  # beside the anti-affinity
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"]["note"] == "x"
    assert pod["metadata"]["labels"].items() >= sts["spec"]["selector"]["matchLabels"].items()
    assert {"name": "GOMAXPROCS", "value": "2"} in pod["spec"]["containers"][0]["env"]


def test_several_disks_in_one_level_get_one_volume_each() -> None:
    ds, rt = docs()
    rt["spec"]["tieredstore"]["levels"] = [
        {"mediumtype": "SSD", "path": "/mnt/a,/mnt/b", "quotaList": "10Gi,20Gi", "volumeType": "emptyDir"}]
    pod = by_kind(desired_objects(ds, rt, Settings()))["StatefulSet"]["spec"]["template"]["spec"]
    tiers = [v for v in pod["volumes"] if v["name"].startswith("tier-")]
    assert [(v["name"], v["emptyDir"]["sizeLimit"]) for v in tiers] == [
        ("tier-0-ssd", "10Gi"), ("tier-0-ssd-1", "20Gi")]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert (mounts["tier-0-ssd"], mounts["tier-0-ssd-1"]) == ("/mnt/a", "/mnt/b")


def test_pv_is_created_by_fluid_and_read_only() -> None:
    ds, rt = docs()
    pv = by_kind(desired_objects(ds, rt, Settings()))["PersistentVolume"]
    assert pv["metadata"]["annotations"] == {"CreatedBy": "fluid"}
    assert pv["spec"]["csi"]["readOnly"] is True


def test_long_names_fall_back_to_the_dataset_uid_in_labels() -> None:
    short = by_kind(desired_objects(*docs(), Settings()))["PersistentVolumeClaim"]["metadata"]["labels"]
    assert short["fluid.io/s-default-serverless-data"] == "true"
    assert short[names.LABEL_DATASET_ID] == "default-serverless-data"
    name, namespace = "a-dataset-whose-name-is-rather-long-for-a-label", "team-namespace-01"
    objects = by_kind(desired_objects(*docs(name, namespace), Settings()))
    labels = objects["PersistentVolumeClaim"]["metadata"]["labels"]
    assert labels == {f"fluid.io/s-{UID}": "true", names.LABEL_DATASET_ID: UID,
                      "app.kubernetes.io/managed-by": "eddy-controller"}
    selector = objects["PersistentVolumeClaim"]["spec"]["selector"]
    assert selector == {"matchLabels": {f"fluid.io/s-{UID}": "true"}}
    for obj in objects.values():
        for key, value in obj["metadata"]["labels"].items():
            assert len(key.split("/")[-1]) <= 63 and len(value) <= 63, (obj["kind"], key, value)
