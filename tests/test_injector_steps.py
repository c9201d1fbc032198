"""The injector's steps one by one (webhook/injector.py, webhook/sidecar_container.py); test_injector.py
checks what they make together."""

from __future__ import annotations

import copy
from typing import Any

from tests.test_injector import seed_dataset, seed_pod, sidecars, validate
from webhook.injector import (
    DatasetClaim,
    classic_init_warning,
    finish_metadata,
    group_claims,
    inject,
    place_native,
    reserve_volumes,
    retarget_mounts,
    rewrite_volumes,
    sidecar_names,
)
from webhook.profiles import PROFILES, InjectorSettings, PodSwitches
from webhook.sidecar_container import FUSE_DEVICE, fuse_access, mount_check

DS_A, DS_B = seed_dataset("ds-a", "team-a", secret="keys"), seed_dataset("ds-b", "team-a", secret="keys")
OTHER_NS = seed_dataset("ds-c", "elsewhere")


def volumes() -> list[dict[str, Any]]:
    return [
        {"name": "b1", "persistentVolumeClaim": {"claimName": "ds-b"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "a1", "persistentVolumeClaim": {"claimName": "ds-a"}},
        {"name": "b2", "persistentVolumeClaim": {"claimName": "ds-b"}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
        {"name": "c1", "persistentVolumeClaim": {"claimName": "ds-c"}},
    ]


DATASETS = {"ds-a": DS_A, "ds-b": DS_B, "ds-c": OTHER_NS}


def test_claims_are_grouped_by_dataset_in_the_order_the_volumes_first_claim_them() -> None:
    claims, warnings = group_claims(volumes(), "team-a", DATASETS)
    assert list(claims) == ["team-a/ds-b", "team-a/ds-a"]
    b = claims["team-a/ds-b"]
    assert (b.indexes, b.primary, b.aliases) == ((0, 3), "b1", frozenset({"b2"}))
    assert b.volume_names == {"b1", "b2"}
    assert claims["team-a/ds-a"].indexes == (2,) and claims["team-a/ds-a"].aliases == frozenset()
    assert warnings == ["volume c1: Dataset elsewhere/ds-c is not in team-a"]
    assert group_claims(volumes(), "nowhere", {"models": DS_A}) == ({}, [
        "volume models: Dataset team-a/ds-a is not in nowhere"])


def test_each_dataset_keeps_one_empty_dir_under_its_first_name_and_loses_its_aliases() -> None:
    original = volumes()
    claims, _ = group_claims(original, "team-a", DATASETS)
    rewritten = rewrite_volumes(original, claims)
    assert original == volumes(), "the input is not changed"
    assert rewritten == [
        {"name": "b1", "emptyDir": {}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "a1", "emptyDir": {}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
        {"name": "c1", "persistentVolumeClaim": {"claimName": "ds-c"}},  # not injected: left alone
    ]


def test_mounts_of_every_alias_move_to_the_fuse_volume_with_host_to_container() -> None:
    claims, _ = group_claims(volumes(), "team-a", DATASETS)
    containers = [
        {"name": "app", "volumeMounts": [{"name": "b2", "mountPath": "/b", "subPath": "x", "readOnly": True},
                                         {"name": "scratch", "mountPath": "/tmp"}]},
        {"name": "other", "volumeMounts": [{"name": "a1", "mountPath": "/a"}]},
        {"name": "bare"},
    ]
    before = copy.deepcopy(containers)
    out = retarget_mounts(containers, claims["team-a/ds-b"])
    assert containers == before, "the input is not changed"
    assert out[0]["volumeMounts"] == [
        {"name": "b1", "mountPath": "/b", "subPath": "x", "readOnly": True,
         "mountPropagation": "HostToContainer"},
        {"name": "scratch", "mountPath": "/tmp"}]
    assert out[1] is containers[1] and out[2] is containers[2]  # untouched containers are not copied


def test_sidecar_names_count_on_from_the_pods_sidecars_and_skip_names_in_use() -> None:
    assert sidecar_names({"app"}, 2) == ["fluid-fuse-0", "fluid-fuse-1"]
    assert sidecar_names({"app", "fluid-fuse-0"}, 1) == ["fluid-fuse-1"]
    # Two existing sidecars, one of them numbered 2: counting starts at 2, which is taken.
    assert sidecar_names({"fluid-fuse-0", "fluid-fuse-2"}, 2) == ["fluid-fuse-3", "fluid-fuse-4"]


def test_volume_names_are_reserved_so_that_nothing_collides() -> None:
    claims, _ = group_claims(volumes(), "team-a", DATASETS)
    taken = {"b1", "scratch", "eddy-ds-b-config", "fluid-fuse-0-fuse"}
    own = reserve_volumes(claims["team-a/ds-b"], taken, "eddy-podinfo", "fluid-fuse-0-fuse")
    assert own.fuse == "b1"
    assert own.config == "eddy-ds-b-config-2"
    assert own.secrets == (("eddy-ds-b-secret-keys", "keys"),)
    assert (own.token, own.podinfo, own.device) == ("eddy-ds-b-token", "eddy-podinfo", "fluid-fuse-0-fuse-2")
    assert {own.config, own.token, own.device, "eddy-ds-b-secret-keys"} <= taken
    assert [v["name"] for v in own.pod_volumes(DS_B)] == [
        "eddy-ds-b-config-2", "eddy-ds-b-secret-keys", "eddy-ds-b-token", "fluid-fuse-0-fuse-2"]


def test_a_volume_named_like_the_fuse_device_does_not_take_its_place() -> None:
    """The hostPath /dev/fuse volume gets a free name and the sidecar mounts that one (before, the
    sidecar kept mounting the pod's own volume of the colliding name at /dev/fuse)."""
    pod = seed_pod("deployment-eci.yaml")
    pod["spec"]["volumes"].append({"name": "fluid-fuse-0-fuse", "emptyDir": {}})
    settings = InjectorSettings(fuse_mode="sys-admin")
    patched = inject(pod, "default", {"serverless-data": seed_dataset()}, settings).pod
    validate(patched)
    (sidecar,) = sidecars(patched)
    [device] = [m["name"] for m in sidecar["volumeMounts"] if m["mountPath"] == FUSE_DEVICE]
    by_name = {v["name"]: v for v in patched["spec"]["volumes"]}
    assert by_name[device] == {"name": device, "hostPath": {"path": FUSE_DEVICE, "type": "CharDevice"}}
    assert by_name["fluid-fuse-0-fuse"] == {"name": "fluid-fuse-0-fuse", "emptyDir": {}}


def test_a_native_sidecar_goes_before_the_first_init_container_using_its_dataset() -> None:
    sidecar = {"name": "fluid-fuse-0"}
    inits = [{"name": "setup"}, {"name": "fetch", "volumeMounts": [{"name": "data"}]}, {"name": "later"}]
    def order(primary: str) -> list[str]:
        return [c["name"] for c in place_native(inits, sidecar, primary)]

    assert order("data") == ["setup", "fluid-fuse-0", "fetch", "later"]
    assert order("other") == ["setup", "fetch", "later", "fluid-fuse-0"]
    assert len(inits) == 3


def test_classic_mode_warns_about_init_containers_that_mount_the_dataset() -> None:
    claims, _ = group_claims(volumes(), "team-a", DATASETS)
    inits = [{"name": "fetch", "volumeMounts": [{"name": "b2"}]}, {"name": "setup"}]
    [warning] = classic_init_warning(inits, claims["team-a/ds-b"])
    assert warning.startswith("init container(s) fetch mount Dataset team-a/ds-b")
    assert "empty directory" in warning
    assert classic_init_warning(inits, claims["team-a/ds-a"]) == []


def test_metadata_gets_fluids_marks_and_merges_datasets_in_use() -> None:
    claims = {"team-a/ds-b": DatasetClaim(DS_B, (0,), "b1")}
    meta = {"name": "p", "labels": {"app": "x"}, "annotations": {"fluid.io/datasets-in-use": "zeta, ds-b"}}
    before = copy.deepcopy(meta)
    labels = {"dataset-name.sidecar.fluid.io/fluid-fuse-0": "ds-b"}
    out = finish_metadata(meta, claims, labels, PROFILES["acs"])
    assert meta == before
    assert out == {"name": "p",
                   "labels": {"app": "x", "dataset-name.sidecar.fluid.io/fluid-fuse-0": "ds-b",
                              "done.sidecar.fluid.io/inject": "true"},
                   "annotations": {"fluid.io/datasets-in-use": "ds-b,zeta", "eddy.io/platform": "acs"}}
    bare = finish_metadata({"name": "p"}, claims, {}, PROFILES["eci"])
    assert list(bare) == ["name", "labels", "annotations"]


def test_fuse_access_per_mode() -> None:
    privileged = fuse_access(InjectorSettings(), PodSwitches())
    assert privileged.security["privileged"] is True and privileged.bidirectional
    assert (privileged.device_resource, privileged.host_device) == ("", False)
    sys_admin = fuse_access(InjectorSettings(fuse_mode="sys-admin"), PodSwitches())
    assert sys_admin.security["capabilities"] == {"add": ["SYS_ADMIN"]} and not sys_admin.bidirectional
    assert sys_admin.host_device
    plugin = fuse_access(InjectorSettings(fuse_mode="sys-admin", fuse_device_resource="smarter-devices/fuse"),
                         PodSwitches())
    assert (plugin.device_resource, plugin.host_device) == ("smarter-devices/fuse", False)
    unprivileged = fuse_access(InjectorSettings(fuse_device_resource="dev/fuse"),
                               PodSwitches(unprivileged=True))
    assert unprivileged.security == {"privileged": False, "runAsUser": 0, "runAsGroup": 0,
                                     "runAsNonRoot": False}
    assert (unprivileged.bidirectional, unprivileged.device_resource, unprivileged.host_device) == (
        False, "dev/fuse", False)


def test_mount_check_per_mode_and_switch() -> None:
    native = InjectorSettings(native_sidecar=True)
    classic = InjectorSettings(native_sidecar=False, mount_timeout_s=9)
    assert list(mount_check(native, PodSwitches())) == ["restartPolicy", "startupProbe"]
    assert mount_check(native, PodSwitches(mount_check=False)) == {"restartPolicy": "Always"}
    post_start = mount_check(classic, PodSwitches())["lifecycle"]["postStart"]["exec"]["command"]
    assert post_start[-2:] == ["--timeout", "9"]
    assert mount_check(classic, PodSwitches(mount_check=False)) == {}
