"""The webhook over real HTTPS: `eddy webhook --local` subprocesses,
clients verifying with the CA it writes, AdmissionReviews built from the seed's pods and generated pods."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import re
import select
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from tests.support.seed import SEED
from tests.test_injector import DATASETS, pods, seed_pod

EDDY_WEBHOOK = [sys.executable, "-m", "eddy_cli.main", "webhook"]

REPO = Path(__file__).parents[1]
SECRET_VALUES = ("AKIDexampleSecretId42", "wJalrXUtnFEMIexampleSecretKey42")


@dataclass
class Webhook:
    port: int
    ca: Path
    proc: subprocess.Popen[str]

    def connection(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)

    def post(self, body: bytes, path: str = "/mutate") -> tuple[int, bytes]:
        conn = self.connection()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, str]:
        conn = self.connection()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()


def dataset_doc(name: str, namespace: str | None, secret: str) -> dict[str, Any]:
    text = (
        (SEED / "dataset.yaml").read_text().replace("<oss_bucket>", "bucket").replace("<bucket_dir>", "dir")
    )
    doc = next(d for d in yaml.safe_load_all(text.replace("<oss_endpoint>", "http://127.0.0.1:9")))
    doc["metadata"] = {"name": name, **({"namespace": namespace} if namespace else {})}
    for option in doc["spec"]["mounts"][0]["encryptOptions"]:
        option["valueFrom"]["secretKeyRef"]["name"] = secret
    return doc


def write_manifests(directory: Path) -> Path:
    docs = [dataset_doc("serverless-data", None, "access-key")]
    docs += [dataset_doc(name, "team-a", f"{name}-keys") for name in DATASETS]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "access-key"},
        "stringData": {"fs.oss.accessKeyId": SECRET_VALUES[0], "fs.oss.accessKeySecret": SECRET_VALUES[1]},
    }
    path = directory / "manifests.yaml"
    path.write_text(yaml.safe_dump_all([*docs, secret]))
    return path


def start_webhook(tmp: Path, *extra: str) -> Webhook:
    manifests = write_manifests(tmp)
    cert_dir = tmp / "certs"
    cmd = [*EDDY_WEBHOOK, "--local", "-f", str(manifests), "--cert-dir", str(cert_dir)]
    cmd += ["--port", "0", "--max-body", str(256 * 1024), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            seen += line
            match = re.search(r"https://127\.0\.0\.1:(\d+)/mutate", line)
            if match:
                assert (cert_dir / "ca.crt").exists()
                return Webhook(int(match.group(1)), cert_dir / "ca.crt", proc)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"webhook did not start: {seen}")


def stop_webhook(hook: Webhook) -> None:
    hook.proc.send_signal(signal.SIGTERM)
    try:
        assert hook.proc.wait(10) == 0
    finally:
        if hook.proc.poll() is None:
            hook.proc.kill()
            hook.proc.wait()
        if hook.proc.stdout:
            hook.proc.stdout.close()


@pytest.fixture(scope="module", params=["native", "classic"])
def webhook(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    mode = request.param
    hook = start_webhook(
        tmp_path_factory.mktemp(f"webhook-{mode}"), "--native-sidecar", "on" if mode == "native" else "off"
    )
    hook.mode = mode  # type: ignore[attr-defined]
    try:
        yield hook
    finally:
        stop_webhook(hook)


def review(obj: dict[str, Any], namespace: str = "default", **extra: Any) -> dict[str, Any]:
    kind = obj.get("kind", "Pod")
    group = "apps" if kind == "Deployment" else ""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": obj,
            **extra,
        },
    }


def admit(hook: Webhook, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = hook.post(json.dumps(doc).encode())
    assert status == 200, body
    for secret in SECRET_VALUES:
        assert secret.encode() not in body and base64.b64encode(secret.encode()) not in body
    answer = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response: dict[str, Any] = answer["response"]
    assert response["uid"] == doc["request"]["uid"]
    if "patch" in response:
        decoded = base64.b64decode(response["patch"])
        assert not any(s.encode() in decoded for s in SECRET_VALUES)
    return response


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    result: dict[str, Any] = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    return result


@pytest.mark.parametrize("file", ["deployment-eci.yaml", "deployment-acs.yaml"])
def test_seed_pods_over_https(webhook: Webhook, file: str) -> None:
    pod = seed_pod(file)
    response = admit(webhook, review(pod))
    out = patched(pod, response)
    kubernetes_validate.validate(out, "1.30", strict=True)
    names = [c["name"] for c in [*out["spec"].get("initContainers", []), *out["spec"]["containers"]]]
    assert "fluid-fuse-0" in names
    native = webhook.mode == "native"  # type: ignore[attr-defined]
    sidecar_list = out["spec"].get("initContainers", []) if native else out["spec"]["containers"][:1]
    assert sidecar_list[0]["name"] == "fluid-fuse-0"
    assert ("restartPolicy" in sidecar_list[0]) == native
    assert out["spec"]["volumes"][0] == {"name": "data", "emptyDir": {}}
    assert out["metadata"]["labels"]["done.sidecar.fluid.io/inject"] == "true"
    # A second admission of the output changes nothing; dryRun gives the same answer.
    again = admit(webhook, review(out))
    assert again["allowed"] is True and "patch" not in again
    dry = admit(webhook, review(pod, dryRun=True))
    assert patched(pod, dry) == out


def test_fluid_switches_over_https(webhook: Webhook) -> None:
    pod = seed_pod("deployment-eci.yaml")
    pod["metadata"]["labels"].update({"unprivileged.sidecar.fluid.io/inject": "true",
                                      "fuse.sidecar.poststart.fluid.io/inject": "false"})
    out = patched(pod, admit(webhook, review(pod)))
    kubernetes_validate.validate(out, "1.30", strict=True)
    (sidecar,) = [c for c in [*out["spec"].get("initContainers", []), *out["spec"]["containers"]]
                  if c["name"] == "fluid-fuse-0"]
    security = sidecar["securityContext"]
    assert security["privileged"] is False and "capabilities" not in security
    assert "lifecycle" not in sidecar and "startupProbe" not in sidecar
    assert out["metadata"]["annotations"]["fluid.io/datasets-in-use"] == "serverless-data"
    assert out["metadata"]["labels"]["dataset-name.sidecar.fluid.io/fluid-fuse-0"] == "serverless-data"


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pod=pods())
def test_generated_pods_over_https(webhook: Webhook, pod: dict[str, Any]) -> None:
    original = copy.deepcopy(pod)
    response = admit(webhook, review(pod, namespace="team-a"))
    out = patched(original, response)
    kubernetes_validate.validate(out, "1.30", strict=True)
    uses_dataset = any(
        v.get("persistentVolumeClaim", {}).get("claimName") in DATASETS
        for v in original["spec"].get("volumes", [])
    )
    assert ("patch" in response) == uses_dataset
    if not uses_dataset:
        assert response["warnings"]
    second = admit(webhook, review(out, namespace="team-a"))
    assert "patch" not in second


def test_bad_inputs(webhook: Webhook) -> None:
    status, body = webhook.post(b"{not json")
    assert status == 400 and b"not JSON" in body
    wrong = review(seed_pod("deployment-eci.yaml"))
    wrong["apiVersion"] = "admission.k8s.io/v1beta1"
    status, body = webhook.post(json.dumps(wrong).encode())
    assert status == 400 and b"admission.k8s.io/v1" in body
    status, body = webhook.post(
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode()
    )
    assert status == 400 and b"uid" in body
    # Kind other than Pod: allowed unchanged.
    deployment = yaml.safe_load((SEED / "deployment-eci.yaml").read_text())
    response = admit(webhook, review(deployment))
    assert response["allowed"] is True and "patch" not in response
    # A labelled pod whose PVC is no Dataset's: allowed unchanged, with a warning.
    pod = seed_pod("deployment-eci.yaml")
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "home-dirs"
    response = admit(webhook, review(pod))
    assert response["allowed"] is True and "patch" not in response
    assert any("home-dirs" in w for w in response["warnings"])
    # An unknown target: denied, the message lists the valid values.
    pod = seed_pod("deployment-eci.yaml")
    pod["metadata"]["labels"]["alibabacloud.com/fluid-sidecar-target"] = "fargate"
    response = admit(webhook, review(pod))
    assert response["allowed"] is False
    assert "fargate" in response["status"]["message"] and "eci, acs" in response["status"]["message"]
    # An unknown Fluid platform: denied, the message lists Fluid's platforms.
    pod = seed_pod("deployment-eci.yaml")
    pod["metadata"]["annotations"] = {"serverless.fluid.io/platform": "fargate"}
    response = admit(webhook, review(pod))
    assert response["allowed"] is False and response["status"]["code"] == 403
    assert "default, unprivileged" in response["status"]["message"]
    # Over the size limit (the fixture sets --max-body 256 KiB): 413.
    big = review(seed_pod("deployment-eci.yaml"))
    big["request"]["object"]["metadata"]["annotations"] = {"padding": "x" * (300 * 1024)}
    status, _ = webhook.post(json.dumps(big).encode())
    assert status == 413


def test_health_and_metrics(webhook: Webhook) -> None:
    assert webhook.get("/healthz") == (200, "ok")
    assert webhook.get("/readyz") == (200, "ready")
    admit(webhook, review(seed_pod("deployment-eci.yaml")))
    status, text = webhook.get("/metrics")
    assert status == 200
    injected = re.search(r'eddy_webhook_admissions_total\{outcome="injected"\} (\d+)', text)
    assert injected and float(injected.group(1)) >= 1
    assert "eddy_webhook_admission_seconds_bucket" in text


def test_local_mode_rejects_bad_manifests(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((SEED / "dataset.yaml").read_text())  # placeholders still in
    result = subprocess.run(
        [*EDDY_WEBHOOK, "--local", "-f", str(bad), "--cert-dir", str(tmp_path / "c")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 2 and "placeholder" in result.stderr and not result.stdout
