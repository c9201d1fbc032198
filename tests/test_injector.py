"""The pure injector: seed pods and generated pods, patched and checked against the Kubernetes 1.30 schema."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eddy.api import Dataset, JindoRuntime, parse_dataset, parse_runtime
from eddy.names import LABEL_ENABLE_INJECTION, LABEL_INJECT_DONE, LABEL_SIDECAR_TARGET
from tests.support.seed import SEED
from webhook.injector import FUSE_MOUNTPOINT, SIDECAR_PREFIX, claim_names, inject, make_patch
from webhook.profiles import (
    ANNOTATION_CPU_LIMIT,
    ANNOTATION_MEMORY_REQUEST,
    ANNOTATION_SERVERLESS_PLATFORM,
    LABEL_SIDECAR_POSTSTART,
    LABEL_UNPRIVILEGED,
    PROFILES,
    InjectionDenied,
    InjectorSettings,
    sidecar_resources,
)

NATIVE = InjectorSettings(native_sidecar=True)
CLASSIC = InjectorSettings(native_sidecar=False)


def seed_dataset(
    name: str = "serverless-data", namespace: str = "default", secret: str = "access-key"
) -> Dataset:
    text = (SEED / "dataset.yaml").read_text()
    text = text.replace("<oss_bucket>", "bucket").replace("<bucket_dir>", "dir")
    text = text.replace("<oss_endpoint>", "http://127.0.0.1:9")
    doc = next(d for d in yaml.safe_load_all(text) if d["kind"] == "Dataset")
    doc["metadata"] = {"name": name, "namespace": namespace}
    for option in doc["spec"]["mounts"][0]["encryptOptions"]:
        option["valueFrom"]["secretKeyRef"]["name"] = secret
    return parse_dataset(doc)


def seed_pod(file: str) -> dict[str, Any]:
    deployment = yaml.safe_load((SEED / file).read_text())
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]}


def validate(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, "1.30", strict=True)


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [
        c
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        if c["name"].startswith(SIDECAR_PREFIX)
    ]


@pytest.mark.parametrize("file", ["deployment-eci.yaml", "deployment-acs.yaml"])
@pytest.mark.parametrize("native", [True, False])
def test_seed_pod_is_injected_and_valid(file: str, native: bool) -> None:
    pod = seed_pod(file)
    original = copy.deepcopy(pod)
    dataset = seed_dataset()
    result = inject(pod, "default", {"serverless-data": dataset}, InjectorSettings(native_sidecar=native))
    assert pod == original, "the injector must not mutate its input"
    assert result.injected == ("default/serverless-data",)
    patched = result.pod
    validate(original)
    validate(patched)
    assert jsonpatch.apply_patch(original, make_patch(original, patched)) == patched
    assert patched["metadata"]["labels"][LABEL_INJECT_DONE] == "true"
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert volumes["eddy-serverless-data-config"]["configMap"] == {"name": "serverless-data-eddy-config"}
    assert volumes["eddy-serverless-data-secret-access-key"]["secret"] == {"secretName": "access-key"}
    (sidecar,) = sidecars(patched)
    assert sidecar["name"] == "fluid-fuse-0"  # Fluid's name: Fluid tooling finds sidecars by it
    assert patched["metadata"]["annotations"]["fluid.io/datasets-in-use"] == "serverless-data"
    # root in the sidecar (the image's USER is 65532): FUSE needs it, and a root mount gets allow_other
    assert sidecar["securityContext"] == {"privileged": True, "runAsUser": 0, "runAsGroup": 0,
                                          "runAsNonRoot": False}
    assert sidecar["command"][:3] == ["eddy", "sidecar", "mount"]
    at = sidecar["command"].index("--mountpoint")
    assert sidecar["command"][at:at + 4] == ["--mountpoint", FUSE_MOUNTPOINT, "--health-port", "8701"]
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    assert mounts[FUSE_MOUNTPOINT] == {
        "name": "data",
        "mountPath": FUSE_MOUNTPOINT,
        "mountPropagation": "Bidirectional",
    }
    assert mounts["/etc/eddy/config"]["readOnly"] is True
    assert mounts["/etc/eddy/secrets/access-key"]["readOnly"] is True
    app = next(c for c in patched["spec"]["containers"] if c["name"] == "serving")
    assert app["volumeMounts"] == [
        {"mountPath": "/data", "name": "data", "mountPropagation": "HostToContainer"}
    ]
    assert not any("secret" in str(m).lower() for m in app["volumeMounts"])
    if native:
        assert patched["spec"]["initContainers"] == [sidecar]
        assert sidecar["restartPolicy"] == "Always"
        probe = sidecar["startupProbe"]["exec"]["command"]
        assert probe == ["eddy", "sidecar", "check-mount", FUSE_MOUNTPOINT, "--timeout", "2"]
    else:
        assert "initContainers" not in patched["spec"]
        assert patched["spec"]["containers"][0] == sidecar
        post_start = sidecar["lifecycle"]["postStart"]["exec"]["command"]
        assert post_start == ["eddy", "sidecar", "check-mount", FUSE_MOUNTPOINT, "--timeout", "300"]
        # The classic sidecar sees the pod's annotations, where the controller asks it to leave.
        assert sidecar["command"][-2:] == ["--stop-file", "/etc/eddy/podinfo/annotations"]
        podinfo = next(v for v in patched["spec"]["volumes"] if "downwardAPI" in v)
        assert podinfo["downwardAPI"]["items"] == [
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
        ]
        assert {"name": podinfo["name"], "mountPath": "/etc/eddy/podinfo", "readOnly": True} in sidecar[
            "volumeMounts"
        ]
    profile = file.split("-")[1].split(".")[0]
    assert patched["metadata"]["annotations"]["eddy.io/platform"] == profile
    # ECI/ACS size pods from declared resources: requests equal limits there.
    assert sidecar["resources"]["requests"] == sidecar["resources"]["limits"]
    again = inject(patched, "default", {"serverless-data": dataset}, InjectorSettings(native_sidecar=native))
    assert again.pod == patched and not again.changed


def test_sys_admin_mode_uses_capability_and_fuse_device() -> None:
    pod = seed_pod("deployment-eci.yaml")
    dataset = seed_dataset()
    hostpath = inject(
        pod, "default", {"serverless-data": dataset}, InjectorSettings(fuse_mode="sys-admin")
    ).pod
    validate(hostpath)
    (sidecar,) = sidecars(hostpath)
    assert sidecar["securityContext"] == {"privileged": False, "capabilities": {"add": ["SYS_ADMIN"]},
                                          "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}
    device = next(v for v in hostpath["spec"]["volumes"] if "hostPath" in v)
    assert device["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    # Bidirectional is reserved to privileged containers by the API server.
    assert all("mountPropagation" not in m for m in sidecar["volumeMounts"])
    plugin_settings = InjectorSettings(fuse_mode="sys-admin", fuse_device_resource="smarter-devices/fuse")
    plugin = inject(pod, "default", {"serverless-data": dataset}, plugin_settings).pod
    validate(plugin)
    (sidecar,) = sidecars(plugin)
    assert sidecar["resources"]["limits"]["smarter-devices/fuse"] == "1"
    assert not any("hostPath" in v for v in plugin["spec"]["volumes"])


def test_opt_out_unknown_target_and_unlabelled() -> None:
    dataset = {"serverless-data": seed_dataset()}
    pod = seed_pod("deployment-eci.yaml")
    opted_out = copy.deepcopy(pod)
    opted_out["metadata"]["labels"][LABEL_ENABLE_INJECTION] = "false"
    assert inject(opted_out, "default", dataset, NATIVE).pod == opted_out
    unlabelled = copy.deepcopy(pod)
    del unlabelled["metadata"]["labels"][LABEL_SIDECAR_TARGET]
    assert inject(unlabelled, "default", dataset, NATIVE).pod == unlabelled
    bad = copy.deepcopy(pod)
    bad["metadata"]["labels"][LABEL_SIDECAR_TARGET] = "gke"
    with pytest.raises(InjectionDenied, match="valid values: eci, acs"):
        inject(bad, "default", dataset, NATIVE)
    oss = copy.deepcopy(unlabelled)
    oss["metadata"]["labels"]["serverless.fluid.io/inject"] = "true"
    result = inject(oss, "default", dataset, NATIVE)
    assert result.changed and result.pod["metadata"]["annotations"]["eddy.io/platform"] == "serverless"


def test_labelled_pod_without_dataset_claim_is_unchanged_with_warning() -> None:
    pod = seed_pod("deployment-eci.yaml")
    result = inject(pod, "default", {}, NATIVE)
    assert result.pod == pod and not result.changed
    assert "serverless-data" in result.warnings[0] and "no Dataset" in result.warnings[0]


def test_resource_annotations_override_defaults() -> None:
    resources, warnings = sidecar_resources(
        PROFILES["serverless"], {ANNOTATION_CPU_LIMIT: "3", ANNOTATION_MEMORY_REQUEST: "lots"}
    )
    assert resources["limits"]["cpu"] == "3"
    assert resources["requests"]["memory"] == PROFILES["serverless"].memory[0]
    assert warnings and "eddy.io/sidecar-memory-request" in warnings[0]
    eci, _ = sidecar_resources(PROFILES["eci"], {ANNOTATION_CPU_LIMIT: "2"})
    assert eci["requests"]["cpu"] == eci["limits"]["cpu"] == "2"
    _, clash = sidecar_resources(
        PROFILES["serverless"], {"eddy.io/sidecar-cpu-request": "4", ANNOTATION_CPU_LIMIT: "1"}
    )
    assert "exceeds its limit" in clash[0]


def test_name_collisions_and_long_names() -> None:
    long_name = "d" * 70
    dataset = seed_dataset(long_name)
    pod = seed_pod("deployment-eci.yaml")
    pod["spec"]["containers"].append({"name": "fluid-fuse-0", "image": "x"})
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = long_name
    patched = inject(pod, "default", {long_name: dataset}, NATIVE).pod
    validate(patched)
    names = [c["name"] for c in [*patched["spec"]["initContainers"], *patched["spec"]["containers"]]]
    assert len(names) == len(set(names)) and all(len(n) <= 63 for n in names)
    # Fluid counts the sidecars a pod already has: the new one is fluid-fuse-1.
    assert patched["spec"]["initContainers"][0]["name"] == "fluid-fuse-1"
    # A Dataset name too long for a label value gets the namespace label only (the pod stays valid).
    assert patched["metadata"]["labels"]["dataset-namespace.sidecar.fluid.io/fluid-fuse-1"] == "default"
    assert "dataset-name.sidecar.fluid.io/fluid-fuse-1" not in patched["metadata"]["labels"]
    volumes = [v["name"] for v in patched["spec"]["volumes"]]
    assert len(volumes) == len(set(volumes)) and all(len(v) <= 63 for v in volumes)


# ------------------------------------------------------------------- Fluid's per-pod switches and marks
def _switched(labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    pod = seed_pod("deployment-eci.yaml")
    pod["metadata"]["labels"].update(labels)
    if annotations:
        pod["metadata"].setdefault("annotations", {}).update(annotations)
    return pod


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("fuse_mode", ["privileged", "sys-admin"])
def test_unprivileged_sidecar_has_no_privilege_nor_fuse_device(native: bool, fuse_mode: str) -> None:
    dataset = {"serverless-data": seed_dataset()}
    config = InjectorSettings(native_sidecar=native, fuse_mode=fuse_mode)  # type: ignore[arg-type]
    pod = _switched({LABEL_UNPRIVILEGED: "true"})
    result = inject(pod, "default", dataset, config)
    patched = result.pod
    assert any("platform provides FUSE" in w for w in result.warnings)
    validate(patched)
    (sidecar,) = sidecars(patched)
    # Fluid's unprivileged mutator: privileged false, SYS_ADMIN trimmed, host FUSE device volume removed.
    assert sidecar["securityContext"] == {"privileged": False, "runAsUser": 0, "runAsGroup": 0,
                                          "runAsNonRoot": False}
    assert not any("hostPath" in v for v in patched["spec"]["volumes"])
    assert all(m["mountPath"] != "/dev/fuse" and "mountPropagation" not in m for m in sidecar["volumeMounts"])
    # The rest is the usual sidecar: config, secrets, read token, mount check, app's HostToContainer.
    assert {m["mountPath"] for m in sidecar["volumeMounts"]} >= {FUSE_MOUNTPOINT, "/etc/eddy/config"}
    assert ("startupProbe" in sidecar) is native and ("lifecycle" in sidecar) is not native
    app = next(c for c in patched["spec"]["containers"] if c["name"] == "serving")
    assert app["volumeMounts"][0]["mountPropagation"] == "HostToContainer"
    assert inject(patched, "default", dataset, config).pod == patched
    # The platform's own FUSE device, when the operator names its resource, is still requested.
    plugin = InjectorSettings(native_sidecar=native, fuse_mode=fuse_mode,  # type: ignore[arg-type]
                              fuse_device_resource="smarter-devices/fuse")
    (sidecar,) = sidecars(inject(pod, "default", dataset, plugin).pod)
    assert sidecar["resources"]["limits"]["smarter-devices/fuse"] == "1"
    assert "capabilities" not in sidecar["securityContext"]
    # Only "true" switches it (Fluid compares the exact value); "false" or "True" keep the default.
    for value in ("false", "True"):
        (sidecar,) = sidecars(inject(_switched({LABEL_UNPRIVILEGED: value}), "default", dataset, config).pod)
        assert sidecar["securityContext"].get("privileged") is (fuse_mode == "privileged")


def test_platform_annotation_picks_default_or_unprivileged_and_refuses_others() -> None:
    dataset = {"serverless-data": seed_dataset()}
    oss = {"serverless.fluid.io/inject": "true"}

    def security(labels: dict[str, str], platform: str) -> dict[str, Any]:
        pod = _switched(labels, {ANNOTATION_SERVERLESS_PLATFORM: platform})
        del pod["metadata"]["labels"][LABEL_SIDECAR_TARGET]
        patched = inject(pod, "default", dataset, NATIVE).pod
        validate(patched)
        assert patched["metadata"]["annotations"][ANNOTATION_SERVERLESS_PLATFORM] == platform  # kept
        return dict(sidecars(patched)[0]["securityContext"])

    assert security(oss, "unprivileged")["privileged"] is False
    assert security(oss, "default")["privileged"] is True
    # As in Fluid, the unprivileged label wins over the annotation.
    assert security({**oss, LABEL_UNPRIVILEGED: "true"}, "default")["privileged"] is False
    with pytest.raises(InjectionDenied, match=r'serverless\.fluid\.io/platform="gke".*default, unprivileged'):
        security(oss, "gke")


@pytest.mark.parametrize("native", [True, False])
def test_poststart_false_drops_the_mount_check_only(native: bool) -> None:
    dataset = {"serverless-data": seed_dataset()}
    config = InjectorSettings(native_sidecar=native)
    checked = inject(seed_pod("deployment-eci.yaml"), "default", dataset, config).pod
    pod = _switched({LABEL_SIDECAR_POSTSTART: "false"})
    patched = inject(pod, "default", dataset, config).pod
    validate(patched)
    (sidecar,) = sidecars(patched)
    (with_check,) = sidecars(checked)
    assert "lifecycle" not in sidecar and "startupProbe" not in sidecar
    # Everything else is the same sidecar: in classic mode it still learns when to leave (--stop-file).
    assert {k: v for k, v in with_check.items() if k not in ("lifecycle", "startupProbe")} == sidecar
    if native:
        assert sidecar["restartPolicy"] == "Always"
    else:
        assert sidecar["command"][-2:] == ["--stop-file", "/etc/eddy/podinfo/annotations"]
    assert inject(patched, "default", dataset, config).pod == patched
    # "true" (or anything but "false") keeps the check.
    kept = inject(_switched({LABEL_SIDECAR_POSTSTART: "true"}), "default", dataset, config).pod
    assert sidecars(kept) == [with_check]


def test_fluid_names_and_marks_for_several_datasets() -> None:
    pod = seed_pod("deployment-eci.yaml")
    pod["metadata"]["annotations"] = {"fluid.io/datasets-in-use": "zeta, ds-b"}  # an earlier round's
    pod["spec"]["volumes"] = [{"name": "b", "persistentVolumeClaim": {"claimName": "ds-b"}},
                              {"name": "a", "persistentVolumeClaim": {"claimName": "ds-a"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "b", "mountPath": "/b"},
                                                    {"name": "a", "mountPath": "/a"}]
    datasets = {n: seed_dataset(n, "team-a", secret=f"{n}-keys") for n in ("ds-a", "ds-b")}
    patched = inject(pod, "team-a", datasets, CLASSIC).pod
    validate(patched)
    cars = sidecars(patched)
    assert [c["name"] for c in cars] == ["fluid-fuse-0", "fluid-fuse-1"]  # the volumes' order
    assert [c["env"][-1]["value"] for c in cars] == ["team-a/ds-b", "team-a/ds-a"]
    labels = patched["metadata"]["labels"]
    assert labels["dataset-name.sidecar.fluid.io/fluid-fuse-0"] == "ds-b"
    assert labels["dataset-name.sidecar.fluid.io/fluid-fuse-1"] == "ds-a"
    assert labels["dataset-namespace.sidecar.fluid.io/fluid-fuse-1"] == "team-a"
    assert patched["metadata"]["annotations"]["fluid.io/datasets-in-use"] == "ds-a,ds-b,zeta"


# ------------------------------------------------------------------------------------- property tests
DATASETS = {name: seed_dataset(name, "team-a", secret=f"{name}-keys") for name in ("ds-a", "ds-b", "ds-c")}
OTHER_CLAIMS = ("scratch", "models")


@st.composite
def volume_sources(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["dataset", "dataset", "pvc", "emptyDir", "configMap", "secret"]))
    if kind == "dataset":
        return {"persistentVolumeClaim": {"claimName": draw(st.sampled_from(sorted(DATASETS)))}}
    if kind == "pvc":
        return {"persistentVolumeClaim": {"claimName": draw(st.sampled_from(OTHER_CLAIMS)), "readOnly": True}}
    if kind == "emptyDir":
        return {"emptyDir": draw(st.sampled_from([{}, {"medium": "Memory"}]))}
    if kind == "configMap":
        return {"configMap": {"name": "app-config"}}
    return {"secret": {"secretName": "app-secret"}}


@st.composite
def containers(draw: st.DrawFn, prefix: str, volumes: list[str], count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        chosen = (
            draw(st.lists(st.sampled_from(volumes), unique=True, max_size=len(volumes))) if volumes else []
        )
        mounts = []
        for j, name in enumerate(chosen):
            mount: dict[str, Any] = {"name": name, "mountPath": f"/mnt/{j}"}
            if draw(st.booleans()):
                mount["subPath"] = draw(st.sampled_from(["train", "a/b", "models/v1"]))
            if draw(st.booleans()):
                mount["readOnly"] = draw(st.booleans())
            mounts.append(mount)
        container: dict[str, Any] = {"name": f"{prefix}{i}", "image": "busybox:1.36"}
        if mounts:
            container["volumeMounts"] = mounts
        if draw(st.booleans()):
            container["env"] = [{"name": "MODE", "value": "x"}]
        out.append(container)
    return out


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    n_volumes = draw(st.integers(0, 5))
    volumes = [{"name": f"vol-{i}", **draw(volume_sources())} for i in range(n_volumes)]
    names = [v["name"] for v in volumes]
    labels = {"app": "trainer"}
    trigger = draw(st.sampled_from(["eci", "acs", "oss"]))
    if trigger == "oss":
        labels["serverless.fluid.io/inject"] = "true"
    else:
        labels[LABEL_SIDECAR_TARGET] = trigger
    if draw(st.booleans()):
        labels[LABEL_UNPRIVILEGED] = draw(st.sampled_from(["true", "false"]))
    if draw(st.booleans()):
        labels[LABEL_SIDECAR_POSTSTART] = draw(st.sampled_from(["true", "false"]))
    metadata: dict[str, Any] = {"labels": labels}
    metadata.update(draw(st.sampled_from([{"name": "p"}, {"generateName": "job-"}])))
    if draw(st.booleans()):
        metadata["annotations"] = {"team": "vision", "eddy.io/sidecar-cpu-limit": "1"}
    if draw(st.booleans()):
        metadata["namespace"] = "team-a"
    spec: dict[str, Any] = {"containers": draw(containers("app-", names, draw(st.integers(1, 3))))}
    n_init = draw(st.integers(0, 2))
    if n_init:
        spec["initContainers"] = draw(containers("init-", names, n_init))
    if volumes:
        spec["volumes"] = volumes
    if draw(st.booleans()):
        spec["restartPolicy"] = "Never"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _dataset_volume_names(pod: dict[str, Any]) -> set[str]:
    return {
        v["name"]
        for v in pod["spec"].get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") in DATASETS
    }


def _primary_names(pod: dict[str, Any]) -> dict[str, str]:
    """dataset volume -> the volume name kept for its dataset (the first volume claiming it)."""
    first: dict[str, str] = {}
    out = {}
    for v in pod["spec"].get("volumes", []):
        claim = v.get("persistentVolumeClaim", {}).get("claimName")
        if claim in DATASETS:
            out[v["name"]] = first.setdefault(claim, v["name"])
    return out


def _expected_container(c: dict[str, Any], primary: dict[str, str]) -> dict[str, Any]:
    c = copy.deepcopy(c)
    for m in c.get("volumeMounts", []):
        if m["name"] in primary:
            m["name"] = primary[m["name"]]
            m["mountPropagation"] = "HostToContainer"
    return c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=pods(), native=st.booleans())
def test_generated_pods(pod: dict[str, Any], native: bool) -> None:
    original = copy.deepcopy(pod)
    config = InjectorSettings(native_sidecar=native)
    result = inject(pod, "team-a", DATASETS, config)
    patched = result.pod
    assert pod == original
    validate(patched)
    assert jsonpatch.apply_patch(original, make_patch(original, patched)) == patched
    used = {
        original["spec"]["volumes"][i]["persistentVolumeClaim"]["claimName"]
        for i, v in enumerate(original["spec"].get("volumes", []))
        if v.get("persistentVolumeClaim", {}).get("claimName") in DATASETS
    }
    assert set(claim_names(original)) & set(DATASETS) == used
    if not used:
        assert patched == original and result.warnings
        return
    assert sorted(result.injected) == sorted(f"team-a/{d}" for d in used)
    # A second admission of the output changes nothing.
    assert inject(patched, "team-a", DATASETS, config).pod == patched
    # Metadata: only the done label, Fluid's container -> Dataset labels, the platform and Fluid's
    # datasets-in-use annotations are added; namespace untouched.
    meta, old_meta = patched["metadata"], original["metadata"]
    assert meta.get("namespace") == old_meta.get("namespace")
    cars = sidecars(patched)
    fluid_labels = {f"dataset-{kind}.sidecar.fluid.io/{c['name']}": value
                    for c in cars for kind, value in zip(("namespace", "name"),
                                                         c["env"][-1]["value"].split("/"), strict=True)}
    assert meta["labels"] == {**old_meta["labels"], **fluid_labels, LABEL_INJECT_DONE: "true"}
    assert meta["annotations"].pop("fluid.io/datasets-in-use") == ",".join(sorted(used))
    assert {k: v for k, v in meta["annotations"].items() if k != "eddy.io/platform"} == old_meta.get(
        "annotations", {}
    )
    meta["annotations"]["fluid.io/datasets-in-use"] = ",".join(sorted(used))
    # Fluid's names: fluid-fuse-0, -1, ... in the order the volumes claim the Datasets.
    assert sorted(c["name"] for c in cars) == [f"fluid-fuse-{i}" for i in range(len(used))]
    assert {
        k: v for k, v in patched["spec"].items() if k not in ("volumes", "containers", "initContainers")
    } == {k: v for k, v in original["spec"].items() if k not in ("volumes", "containers", "initContainers")}
    # Volumes: unrelated ones unchanged and in order; dataset ones become emptyDirs under the same name.
    primary = _primary_names(original)
    new_volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    for v in original["spec"]["volumes"]:
        if v["name"] not in primary:
            assert new_volumes[v["name"]] == v
        elif primary[v["name"]] == v["name"]:
            assert new_volumes[v["name"]] == {"name": v["name"], "emptyDir": {}}
        else:
            assert v["name"] not in new_volumes
    # Containers: one sidecar per dataset; the user's containers keep everything but the propagation.
    assert len(cars) == len(used)
    assert sorted(c["env"][0]["value"] for c in cars) == sorted(f"team-a/{d}" for d in used)
    users = [c for c in patched["spec"]["containers"] if not c["name"].startswith(SIDECAR_PREFIX)]
    assert users == [_expected_container(c, primary) for c in original["spec"]["containers"]]
    inits = [c for c in patched["spec"].get("initContainers", []) if not c["name"].startswith(SIDECAR_PREFIX)]
    assert inits == [_expected_container(c, primary) for c in original["spec"].get("initContainers", [])]
    ports = [car["command"][car["command"].index("--health-port") + 1] for car in cars]
    assert len(set(ports)) == len(ports), "sidecars share the pod network: distinct health ports"
    for car in cars:
        fuse_volume = car["volumeMounts"][0]["name"]
        assert new_volumes[fuse_volume] == {"name": fuse_volume, "emptyDir": {}}
        unprivileged = original["metadata"]["labels"].get(LABEL_UNPRIVILEGED) == "true"
        check = original["metadata"]["labels"].get(LABEL_SIDECAR_POSTSTART) != "false"
        assert car["volumeMounts"][0].get("mountPropagation") == (None if unprivileged else "Bidirectional")
        assert car["securityContext"]["privileged"] is not unprivileged
        assert ("startupProbe" in car) is (check and native)
        assert ("lifecycle" in car) is (check and not native)
        assert car["resources"]["limits"]["cpu"] == meta["annotations"].get(
            "eddy.io/sidecar-cpu-limit", car["resources"]["limits"]["cpu"]
        )
    if native:
        assert patched["spec"]["containers"] == users
        all_inits = patched["spec"]["initContainers"]
        for car in cars:
            position = all_inits.index(car)
            fuse_volume = car["volumeMounts"][0]["name"]
            assert all(
                fuse_volume not in {m["name"] for m in c.get("volumeMounts", [])}
                for c in all_inits[:position]
            ), "the native sidecar must come before every init container using its dataset"
    else:
        assert patched["spec"]["containers"][: len(cars)] == cars
        uses_in_init = any(
            m["name"] in primary
            for c in original["spec"].get("initContainers", [])
            for m in c.get("volumeMounts", [])
        )
        assert uses_in_init == any("init container" in w for w in result.warnings)


def _runtime(fuse: dict[str, Any], name: str = "serverless-data") -> JindoRuntime:
    text = (SEED / "dataset.yaml").read_text()
    doc = next(d for d in yaml.safe_load_all(text) if d["kind"] == "JindoRuntime")
    doc["metadata"] = {"name": name, "namespace": "default"}
    doc["spec"]["fuse"] = fuse
    return parse_runtime(doc)


@pytest.mark.parametrize("native", [True, False])
def test_runtime_spec_fuse_shapes_the_sidecar_and_annotations_win(native: bool) -> None:
    runtime = _runtime({
        "image": "registry.example.com/eddy", "imageTag": "0.2.0", "imagePullPolicy": "Always",
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                      "limits": {"cpu": "1", "memory": "3Gi", "ephemeral-storage": "1Gi"}},
        "env": {"EDDY_LOG": "debug"},
        "args": ["--cache-mib=256", "-okernel_cache"],
    })
    pod = seed_pod("deployment-eci.yaml")
    pod["metadata"].setdefault("annotations", {})[ANNOTATION_MEMORY_REQUEST] = "2Gi"
    ds = seed_dataset()
    result = inject(pod, "default", {"serverless-data": ds}, InjectorSettings(native_sidecar=native),
                    {ds.meta.key: runtime})
    [sidecar] = sidecars(result.pod)
    assert sidecar["image"] == "registry.example.com/eddy:0.2.0" and sidecar["imagePullPolicy"] == "Always"
    # Order: the profile's defaults < spec.fuse.resources < the pod's annotations.
    assert sidecar["resources"]["requests"] == {"cpu": "250m", "memory": "2Gi", "ephemeral-storage": "1Gi"}
    assert sidecar["resources"]["limits"] == {"cpu": "1", "memory": "3Gi", "ephemeral-storage": "1Gi"}
    assert {"name": "EDDY_LOG", "value": "debug"} in sidecar["env"]
    assert sidecar["env"][-1] == {"name": "EDDY_DATASET", "value": "default/serverless-data"}
    assert sidecar["command"][-1] == "--cache-mib=256" and "-okernel_cache" not in sidecar["command"]
    assert any("-okernel_cache" in w and "ignored" in w for w in result.warnings)
    validate(result.pod)


def test_without_spec_fuse_the_sidecar_keeps_the_operators_settings() -> None:
    ds = seed_dataset()
    plain = inject(seed_pod("deployment-eci.yaml"), "default", {"serverless-data": ds}, NATIVE)
    with_runtime = inject(seed_pod("deployment-eci.yaml"), "default", {"serverless-data": ds}, NATIVE,
                          {ds.meta.key: _runtime({})})
    assert plain.pod == with_runtime.pod
    [sidecar] = sidecars(plain.pod)
    assert sidecar["image"] == NATIVE.image
    assert sidecar["resources"] == sidecar_resources(PROFILES["eci"], {})[0]


def test_a_read_write_dataset_is_injected_with_a_warning() -> None:
    ds = seed_dataset()
    ds = dataclasses.replace(ds, access_modes=("ReadWriteMany",))
    result = inject(seed_pod("deployment-eci.yaml"), "default", {"serverless-data": ds}, NATIVE)
    assert result.changed and any("read-only" in w and "EROFS" in w for w in result.warnings)


@pytest.mark.parametrize("address", ["", "0.0.0.0"])
def test_sidecar_metrics_address_is_an_operator_choice(address: str) -> None:
    """`eddy webhook --sidecar-metrics-address 0.0.0.0` makes every sidecar scrapeable at its pod's IP
    (the PodMonitor in manifests/monitoring); by default they serve /metrics inside the pod only."""
    settings = InjectorSettings(sidecar_metrics_address=address)
    result = inject(seed_pod("deployment-eci.yaml"), "default", {"serverless-data": seed_dataset()}, settings)
    (sidecar,) = sidecars(result.pod)
    command = sidecar["command"]
    if address:
        assert command[command.index("--metrics-address") + 1] == address
    else:
        assert "--metrics-address" not in command
    validate(result.pod)
