"""`manifests/` renders as a kustomize base and every built-in object validates (kubernetes-validate 1.30).

`kubectl` is not guaranteed on these machines, so the test renders the base with a small kustomize
subset (resources: files and directories, namespace, images), and when `kubectl kustomize` is on PATH
it checks both renderings agree. The controller's generated objects are validated the same way.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller.objects import Settings, desired_objects
from eddy.crds import crd
from tests.support.seed import SEED

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
CLUSTER_SCOPED = {
    "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "PriorityClass", "StorageClass",
}
Doc = dict[str, Any]


def _set_images(doc: Doc, images: list[Doc]) -> None:
    spec = doc.get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) or (spec if doc.get("kind") == "Pod" else {})
    for container in [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]:
        image = str(container.get("image", ""))
        name, _, tag = image.partition("@")[0].rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (
            image, "", "")
        for rule in images:
            if rule["name"] == name:
                container["image"] = f"{rule.get('newName', name)}:{rule.get('newTag', tag)}"


def render(directory: Path) -> list[Doc]:
    """The kustomize subset this base uses."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for entry in spec.get("resources") or []:
        path = directory / entry
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    namespace = spec.get("namespace")
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        if namespace and doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in doc.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
        _set_images(doc, spec.get("images") or [])
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    return render(MANIFESTS)


def _identity(doc: Doc) -> tuple[str, str, str]:
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def test_base_holds_every_part(rendered: list[Doc]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert ("Namespace", "eddy-system") in kinds
    for plural in ("datasets", "jindoruntimes", "dataloads"):
        assert ("CustomResourceDefinition", f"{plural}.data.fluid.io") in kinds
    for name in ("eddy-controller", "eddy-preloader", "eddy-webhook"):
        assert ("Deployment", name) in kinds
    assert any(d["kind"] == "MutatingWebhookConfiguration" for d in rendered)
    assert len({_identity(d) for d in rendered}) == len(rendered), "duplicate objects"


def test_every_built_in_object_validates(rendered: list[Doc]) -> None:
    for doc in rendered:
        if doc["apiVersion"].startswith("data.fluid.io"):
            continue
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_crd_objects_are_the_generated_ones(rendered: list[Doc]) -> None:
    by_name = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "CustomResourceDefinition"}
    for kind in ("Dataset", "JindoRuntime", "DataLoad"):
        expected = crd(kind)
        assert by_name[expected["metadata"]["name"]] == expected


def test_images_are_kustomize_parameters(tmp_path: Path, rendered: list[Doc]) -> None:
    images = {c["image"] for d in rendered if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"ghcr.io/eddy/eddy:0.1.0"}
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(MANIFESTS)],
        "images": [{"name": "ghcr.io/eddy/eddy", "newName": "registry.example/eddy", "newTag": "1.2.3"}],
    }))
    docs = render(overlay)
    images = {c["image"] for d in docs if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example/eddy:1.2.3"}


def test_rbac_is_least_privilege(rendered: list[Doc]) -> None:
    roles = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ClusterRole"}
    for name in ("eddy-controller", "eddy-preloader"):
        for rule in roles[name]["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            if "secrets" in rule["resources"]:
                # never list/watch every Secret of the cluster; the controller creates worker-token ones
                assert rule["verbs"] == (["get", "create"] if name == "eddy-controller" else ["get"])
    preloader = {r for rule in roles["eddy-preloader"]["rules"] for r in rule["resources"]}
    assert "statefulsets" not in preloader and "persistentvolumes" not in preloader


def test_kubectl_kustomize_agrees(rendered: list[Doc]) -> None:
    out = subprocess.run([kubectl(), "kustomize", str(MANIFESTS)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    theirs_docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in theirs_docs:
        # kustomize 5.5 does not know ValidatingAdmissionPolicy(Binding) is cluster-scoped and stamps
        # the namespace on it; the API server ignores a namespace on a cluster-scoped object.
        if doc["kind"] in CLUSTER_SCOPED:
            doc["metadata"].pop("namespace", None)
    theirs = {_identity(d): d for d in theirs_docs}
    ours = {_identity(d): d for d in rendered}
    assert set(theirs) == set(ours)
    for key, doc in ours.items():
        if doc["kind"] in ("Deployment", "CustomResourceDefinition", "ClusterRoleBinding"):
            assert theirs[key] == doc, key


def test_controller_objects_validate() -> None:
    text = (SEED / "dataset.yaml").read_text().replace("<oss_bucket>", "bucket")
    text = text.replace("<bucket_dir>", "dir").replace("<oss_endpoint>", "oss-cn-hangzhou.aliyuncs.com")
    dataset, runtime = [d for d in yaml.safe_load_all(text) if d]
    dataset["metadata"].update(namespace="default", uid="0b0e6a3c-1d2e-4f5a-8b9c-0d1e2f3a4b5c")
    hostpath = copy.deepcopy(runtime)
    hostpath["spec"]["tieredstore"]["levels"].append(
        {"mediumtype": "SSD", "path": "/mnt/eddy-ssd", "quota": "100Gi"})
    for rt in (runtime, hostpath):
        objects = desired_objects(dataset, rt, Settings())
        assert [o["kind"] for o in objects] == [
            "PersistentVolume", "PersistentVolumeClaim", "ConfigMap", "Secret", "Service", "NetworkPolicy",
            "PodDisruptionBudget", "StatefulSet"]
        for obj in objects:
            kubernetes_validate.validate(obj, "1.30", strict=True)
    volumes = objects[-1]["spec"]["template"]["spec"]["volumes"]
    ssd = {"name": "tier-1-ssd", "hostPath": {"path": "/mnt/eddy-ssd", "type": "DirectoryOrCreate"}}
    assert ssd in volumes
    tokens = objects[3]
    assert tokens["metadata"]["name"] == "serverless-data-eddy-token"
    assert sorted(tokens["data"]) == ["admin", "read"]
    assert tokens["metadata"]["ownerReferences"][0]["kind"] == "Dataset"
    assert {"name": "worker-token", "secret": {"secretName": "serverless-data-eddy-token"}} in volumes
    policy = objects[5]["spec"]
    assert policy["podSelector"] == objects[-1]["spec"]["selector"] and policy["policyTypes"] == ["Ingress"]
    injected = {"podSelector": {"matchLabels": {"done.sidecar.fluid.io/inject": "true"}}}
    assert injected in policy["ingress"][0]["from"]


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is not installed: `make test` installs it (Debian package kubernetes-client)"
    return path


def test_an_overlay_sets_image_and_namespace_in_one_place(tmp_path: Path) -> None:
    """The webhook's image and namespace follow the overlay: no argument left behind to edit."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(MANIFESTS, overlay)],  # kustomize refuses absolute roots
        "namespace": "data-plane",
        "images": [{"name": "ghcr.io/eddy/eddy", "newName": "registry.example/eddy", "newTag": "1.2.3"}],
    }))
    out = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (webhook,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "eddy-webhook"]
    assert webhook["metadata"]["namespace"] == "data-plane"
    (container,) = webhook["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/eddy:1.2.3"
    assert not [a for a in container["args"] if a.startswith(("--image", "--namespace"))]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (config,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    assert {h["clientConfig"]["service"]["namespace"] for h in config["webhooks"]} == {"data-plane"}
