"""The CRDs: generated from eddy/crds.py, in step with eddy/api.py, printer columns as the seed shows."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from eddy import crds
from eddy.api import PLURALS, ValidationError, parse_object
from eddy.api_cel import cel_errors
from eddy.api_schema import to_jsonschema
from tests.support.seed import SEED

ROOT = Path(__file__).resolve().parents[1]
Doc = dict[str, Any]


def seed(name: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((SEED / name).read_text()) if d]


def filled(name: str) -> list[Doc]:
    text = (SEED / name).read_text().replace("<oss_bucket>", "bucket").replace("<bucket_dir>", "dir")
    return [d for d in yaml.safe_load_all(text.replace("<oss_endpoint>", "oss.example.com")) if d]


def crd_accepts(doc: Doc) -> bool:
    """The CRD's schema with strict unknown fields, then its CEL rules (as eddy.api_schema applies them)."""
    validator = jsonschema.Draft202012Validator(to_jsonschema(crds.object_schema(doc["kind"])))
    body = {k: v for k, v in doc.items() if k != "metadata"}
    if list(validator.iter_errors(body)):
        return False
    return not cel_errors(crds.object_schema(doc["kind"]), body)


def api_accepts(doc: Doc) -> bool:
    try:
        parse_object(doc)
    except ValidationError:
        return False
    return True


def test_checked_in_crds_equal_the_generated_ones() -> None:
    for kind, plural in PLURALS.items():
        path = ROOT / "manifests" / "crds" / f"{plural}.yaml"
        hint = f"regenerate: python -m eddy.crds manifests/crds ({path})"
        assert path.read_text() == crds.render(kind), hint


def _structural(node: Any, path: str) -> None:
    """Kubernetes' structural-schema rule: every node states a type (or int-or-string / preserve)."""
    assert "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"), path
    for key, child in (node.get("properties") or {}).items():
        _structural(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        _structural(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _structural(node["additionalProperties"], f"{path}{{}}")


def test_crds_are_structural_with_fluids_subresources_short_names_and_eddys_mark() -> None:
    for kind in PLURALS:
        doc = crds.crd(kind)
        version = doc["spec"]["versions"][0]
        assert version["subresources"]["status"] == {}
        _structural(version["schema"]["openAPIV3Schema"], kind)
        assert doc["metadata"]["labels"] == {"app.kubernetes.io/part-of": "eddy"}
        assert doc["metadata"]["annotations"] == {"eddy.fluid.io/served-by": "eddy"}
    names = {kind: crds.crd(kind)["spec"]["names"]["shortNames"] for kind in PLURALS}
    assert names == {"Dataset": ["dataset"], "JindoRuntime": ["jindo"], "DataLoad": ["load"]}
    scale = crds.crd("JindoRuntime")["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.currentWorkerNumberScheduled"}


def test_kubectl_explain_has_fluids_descriptions() -> None:
    spec = crds.object_schema("JindoRuntime")["properties"]["spec"]["properties"]
    assert "fuse" in spec["fuse"]["description"].lower()
    assert spec["worker"]["properties"]["resources"]["description"]


def _seed_headers() -> dict[str, list[str]]:
    """Column headers of the `kubectl get` outputs printed in the seed's README."""
    text = (SEED / "README.md").read_text()
    out: dict[str, list[str]] = {}
    for command, header in re.findall(r"\$ kubectl get (\w+).*\n\s*(NAME .*)", text):
        kind = {"dataset": "Dataset", "jindo": "JindoRuntime", "dataload": "DataLoad"}[command]
        out[kind] = re.split(r"\s{2,}", header.strip())[1:]
    return out


def test_printer_columns_are_the_seeds() -> None:
    headers = _seed_headers()
    assert set(headers) == {"Dataset", "JindoRuntime", "DataLoad"}
    for kind, expected in headers.items():
        columns = crds.crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
        assert [c["name"].upper() for c in columns if not c.get("priority")] == expected
    wide = [c["name"] for c in crds.PRINTER_COLUMNS["Dataset"] if c.get("priority")]
    assert wide == ["HCFS URL", "TOTAL FILES", "CACHE HIT RATIO"]
    columns = {c["name"]: c["jsonPath"] for c in crds.PRINTER_COLUMNS["Dataset"]}
    assert columns["Ufs Total Size"] == ".status.ufsTotal"
    assert columns["Cached"] == ".status.cacheStates.cached"


def test_the_seeds_manifests_validate_as_they_are() -> None:
    docs = seed("dataset.yaml") + seed("dataload.yaml")
    assert [d["kind"] for d in docs] == ["Dataset", "JindoRuntime", "DataLoad"]
    for doc in docs:
        assert crd_accepts(doc), doc["kind"]


# ----------------------------------------------------------------------------- the shared corpus
def _ds() -> Doc:
    return filled("dataset.yaml")[0]


def _rt() -> Doc:
    return filled("dataset.yaml")[1]


def _dl() -> Doc:
    return seed("dataload.yaml")[0]


def _edit(make: Callable[[], Doc], change: Callable[[Doc], None]) -> Doc:
    doc = copy.deepcopy(make())
    change(doc)
    return doc


def _level(doc: Doc) -> Doc:
    level: Doc = doc["spec"]["tieredstore"]["levels"][0]
    return level


GOOD: dict[str, Doc] = {
    "seed dataset": _ds(),
    "seed runtime": _rt(),
    "seed dataload": _dl(),
    "s3 mount, read-write": _edit(_ds, lambda d: (
        d["spec"]["mounts"][0].update(mountPoint="s3://bucket"),
        d["spec"].update(accessModes=["ReadWriteMany"]))),
    "hostPath SSD, integer quota": _edit(_rt, lambda d: _level(d).update(
        mediumtype="SSD", volumeType="hostPath", path="/mnt/ssd", quota=10 * 2**30, high="1", low="0.5")),
    "two levels": _edit(_rt, lambda d: d["spec"]["tieredstore"]["levels"].append(
        {"mediumtype": "HDD", "path": "/mnt/hdd", "quota": "100Gi"})),
    "cron dataload with targets": _edit(_dl, lambda d: d["spec"].update(
        policy="Cron", schedule="*/5 * * * *", target=[{"path": "/models", "replicas": 2}])),
    "two disks in one level": _edit(_rt, lambda d: _level(d).update(
        path="/mnt/a,/mnt/b", quotaList="1Gi,2Gi", volumeType="hostPath") or _level(d).pop("quota")),
    "fluid's worker and fuse": _edit(_rt, lambda d: d["spec"].update(
        worker={"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}, "nodeSelector": {"a": "b"}},
        fuse={"image": "img", "imageTag": "t", "args": ["-o", "x"], "env": {"A": "1"}},
        master={"replicas": 1}, jindoVersion={"imageTag": "6.2.0"})),
    "fluid's dataload extras": _edit(_dl, lambda d: d["spec"].update(
        policy="OnEvent", ttlSecondsAfterFinished=60, runAfter={"kind": "DataLoad", "name": "first"},
        schedulerName="s", tolerations=[{"key": "k", "operator": "Exists"}])),
    "fluid's dataset placement": _edit(_ds, lambda d: d["spec"].update(
        placement="Shared", tolerations=[{"key": "k", "operator": "Exists"}],
        nodeAffinity={"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]}]}})),
}

BAD: dict[str, Doc] = {
    "quota not a quantity": _edit(_rt, lambda d: _level(d).update(quota="5Gx")),
    "negative quota": _edit(_rt, lambda d: _level(d).update(quota="-5Gi")),
    "unknown medium": _edit(_rt, lambda d: _level(d).update(mediumtype="NVME")),
    "unknown volume type": _edit(_rt, lambda d: _level(d).update(volumeType="tmpfs")),
    "watermark above 1": _edit(_rt, lambda d: _level(d).update(high="1.5")),
    "watermark not a number": _edit(_rt, lambda d: _level(d).update(low="abc")),
    "watermark zero": _edit(_rt, lambda d: _level(d).update(low="0")),
    "level without quota": _edit(_rt, lambda d: _level(d).pop("quota")),
    "level without path": _edit(_rt, lambda d: _level(d).pop("path")),
    "level path relative": _edit(_rt, lambda d: _level(d).update(path="dev/shm")),
    "negative replicas": _edit(_rt, lambda d: d["spec"].update(replicas=-1)),
    "hdfs mount point": _edit(_ds, lambda d: d["spec"]["mounts"][0].update(mountPoint="hdfs://bucket/dir")),
    "mount point without bucket": _edit(_ds, lambda d: d["spec"]["mounts"][0].update(mountPoint="oss:///dir")),
    "mount without mountPoint": _edit(_ds, lambda d: d["spec"]["mounts"][0].pop("mountPoint")),
    "no mounts": _edit(_ds, lambda d: d["spec"].pop("mounts")),
    "empty mounts": _edit(_ds, lambda d: d["spec"].update(mounts=[])),
    "unknown access mode": _edit(_ds, lambda d: d["spec"].update(accessModes=["ReadSometimes"])),
    "encrypt option without valueFrom": _edit(
        _ds, lambda d: d["spec"]["mounts"][0]["encryptOptions"][0].pop("valueFrom")),
    "dataload without dataset": _edit(_dl, lambda d: d["spec"].pop("dataset")),
    "dataload unknown policy": _edit(_dl, lambda d: d["spec"].update(policy="Sometimes")),
    "dataload relative target": _edit(_dl, lambda d: d["spec"].update(target=[{"path": "models"}])),
    "dataset without spec": _edit(_ds, lambda d: d.pop("spec")),
    "low above high (CEL)": _edit(_rt, lambda d: _level(d).update(high="0.5", low="0.7")),
    "low equal to the default high (CEL)": _edit(_rt, lambda d: _level(d).update(low="0.95")),
    "cron without schedule (CEL)": _edit(_dl, lambda d: d["spec"].update(policy="Cron")),
    "root path with two mounts (CEL)": _edit(_ds, lambda d: d["spec"]["mounts"].append(
        {"mountPoint": "oss://bucket/other", "path": "/"})),
    "unknown field under worker": _edit(_rt, lambda d: d["spec"].update(worker={"resurces": {}})),
    "bad toleration type": _edit(_ds, lambda d: d["spec"].update(tolerations=[{"tolerationSeconds": "x"}])),
    "runAfter without name": _edit(_dl, lambda d: d["spec"].update(runAfter={"kind": "DataLoad"})),
    "negative ttl": _edit(_dl, lambda d: d["spec"].update(ttlSecondsAfterFinished=-1)),
    "watermark as a number": _edit(_rt, lambda d: _level(d).update(high=0.9)),
}

# What a schema cannot express; parse_object (and so the controller's condition) reports these.
SCHEMA_GAPS: dict[str, Doc] = {
    "placeholders left": seed("dataset.yaml")[0],
    "zero quota": _edit(_rt, lambda d: _level(d).update(quota="0")),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_manifests_pass_both(name: str) -> None:
    assert crd_accepts(GOOD[name]) and api_accepts(GOOD[name])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_manifests_fail_both(name: str) -> None:
    doc = BAD[name]
    assert not crd_accepts(doc), "the CRD schema accepted it"
    assert not api_accepts(doc), "eddy.api accepted it"


def test_enough_malformed_variants() -> None:
    assert len(BAD) >= 10


@pytest.mark.parametrize("name", sorted(SCHEMA_GAPS))
def test_known_schema_gaps_are_caught_by_the_api(name: str) -> None:
    assert crd_accepts(SCHEMA_GAPS[name]) and not api_accepts(SCHEMA_GAPS[name])
