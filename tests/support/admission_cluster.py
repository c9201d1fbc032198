"""Test bed for sandbox admission (tests/test_sandbox_admission.py): the seed's objects in the API server,
Eddy's real webhook in cluster mode (it writes its own caBundle into its MutatingWebhookConfiguration, as
in a cluster), and a small HTTPS webhook whose behaviour each path chooses (slow, label, deny)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from eddy_cli.procs import stop_child
from sandbox.apiserver import KubeApiServer
from tests.support.seed import SEED
from webhook.certs import CertBundle, TlsReloader, new_bundle, service_names

REPO = Path(__file__).resolve().parents[2]
MWC = REPO / "manifests" / "webhook" / "mutatingwebhook.yaml"
VAP = REPO / "manifests" / "webhook" / "validatingpolicy.yaml"
Obj = dict[str, Any]


def seed_pod(name: str, file: str = "deployment-eci.yaml") -> Obj:
    """The pod the seed's Deployment makes (webhook/review.py's pod_of_template), named like a replica."""
    from webhook.review import pod_of_template

    pod = copy.deepcopy(pod_of_template(yaml.safe_load((SEED / file).read_text())))
    pod["metadata"]["name"] = name
    return pod


def dataset(name: str, namespace: str) -> Obj:
    text = (SEED / "dataset.yaml").read_text()
    for placeholder, value in (("<oss_bucket>", "bucket"), ("<bucket_dir>", "dir"),
                               ("<oss_endpoint>", "http://127.0.0.1:9")):
        text = text.replace(placeholder, value)
    doc: Obj = next(iter(yaml.safe_load_all(text)))
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["status"] = {"phase": "Bound"}
    return doc


def put_seed_objects(api: KubeApiServer, namespace: str = "default") -> None:
    """What the controller would have made for the seed's Dataset: Dataset, runtime, labelled PVC, Secret."""
    name = "serverless-data"
    api.put(dataset(name, namespace))
    api.put({"apiVersion": "data.fluid.io/v1alpha1", "kind": "JindoRuntime",
             "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": 1}})
    api.put({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": name, "namespace": namespace,
                          "labels": {"fluid.io/dataset-id": f"{namespace}-{name}",
                                     f"fluid.io/s-{namespace}-{name}": "true"}},
             "spec": {"accessModes": ["ReadOnlyMany"]}})
    api.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "access-key", "namespace": namespace},
             "data": {"fs.oss.accessKeyId": base64.b64encode(b"id").decode()}})
    api.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
             "status": {"nodeInfo": {"kubeletVersion": "v1.30.1"}}})


def manifest_mwc() -> Obj:
    doc: Obj = yaml.safe_load(MWC.read_text())
    return doc


def manifest_policy() -> list[Obj]:
    return [d for d in yaml.safe_load_all(VAP.read_text()) if d]


def set_webhooks(api: KubeApiServer, name: str, **fields: Any) -> Obj:
    """Overwrite fields of every webhook of a stored configuration (`caBundle` goes into clientConfig)."""
    config = api.get_object("mutatingwebhookconfigurations", None, name)
    assert config is not None, name
    for hook in config["webhooks"]:
        for key, value in fields.items():
            if key == "caBundle":
                hook["clientConfig"]["caBundle"] = value
            else:
                hook[key] = value
    return api.put(config)


@dataclass
class EddyWebhook:
    proc: asyncio.subprocess.Process
    port: int
    output: list[bytes] = field(default_factory=list)


async def _ca_written(api: KubeApiServer, config: str) -> str:
    async with asyncio.timeout(30):
        while True:
            stored = api.get_object("mutatingwebhookconfigurations", None, config)
            bundles = {h["clientConfig"].get("caBundle") for h in (stored or {}).get("webhooks", [])}
            if len(bundles) == 1 and None not in bundles and "" not in bundles:
                return str(bundles.pop())
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def eddy_webhook(api: KubeApiServer, tmp: Path, *, local: bool = False) -> AsyncIterator[EddyWebhook]:
    """`eddy webhook` in cluster mode against `api`, serving on 127.0.0.1; yields once its caBundle is in
    the MutatingWebhookConfiguration and its informers have synced. `local`: DESIGN.md's local mode
    instead (Datasets from a file, CA in `<tmp>/eddy-webhook-tls/ca.crt`, certificate for localhost and
    127.0.0.1 only), which leaves the API server alone."""
    cmd = [sys.executable, "-m", "eddy_cli.main", "webhook", "--port", "0", "--cert-dir",
           str(tmp / "eddy-webhook-tls")]
    if local:
        datasets = tmp / "datasets.yaml"
        datasets.write_text(yaml.safe_dump(dataset("serverless-data", "default")))
        cmd += ["--local", "-f", str(datasets)]
    else:
        cmd += ["--kube-url", api.url, "--namespace", "eddy-system", "--service", "eddy-webhook",
                "--webhook-config", "eddy-webhook", "--host", "127.0.0.1"]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    hook = EddyWebhook(proc, 0)
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            while line := await proc.stdout.readline():
                hook.output.append(line)
                if match := re.search(rb"https://127\.0\.0\.1:(\d+)/mutate", line):
                    hook.port = int(match.group(1))
                    break
        assert hook.port, f"eddy webhook did not start: {b''.join(hook.output).decode()[-2000:]}"

        async def keep_draining() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                hook.output.append(line)

        drain = asyncio.create_task(keep_draining())
        if not local:
            await _ca_written(api, "eddy-webhook")
        yield hook
    finally:
        await stop_child(proc)
        if drain is not None:
            await drain


# ------------------------------------------------------------------------------------- a small webhook
Behaviour = Callable[[Obj], Obj]


def patch_response(request: Obj, patch: list[Obj] | None = None, **extra: Any) -> Obj:
    response: Obj = {"uid": request["uid"], "allowed": True, **extra}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def add_label_once(key: str) -> Behaviour:
    """Adds `key: done` unless the object has it (so it changes the object only the first time)."""

    def behave(request: Obj) -> Obj:
        labels = request["object"]["metadata"].get("labels")
        if labels is not None and key in labels:
            return patch_response(request)
        if labels is None:
            return patch_response(request, [{"op": "add", "path": "/metadata/labels",
                                             "value": {key: "done"}}])
        path = "/metadata/labels/" + key.replace("~", "~0").replace("/", "~1")
        return patch_response(request, [{"op": "add", "path": path, "value": "done"}])

    return behave


@dataclass
class SmallWebhook:
    """An HTTPS AdmissionReview server for the host names of Service `name` in `namespace`; `paths`
    maps a path to its behaviour; `/slow` sleeps `delay` seconds first. `bundle.ca_bundle` is its CA."""

    name: str
    namespace: str
    bundle: CertBundle
    port: int = 0
    delay: float = 0.0
    paths: dict[str, Behaviour] = field(default_factory=dict)
    reviews: list[Obj] = field(default_factory=list)

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.bundle.ca_bundle).decode()

    async def handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        if request.path == "/slow":
            await asyncio.sleep(self.delay)
        behaviour = self.paths.get(request.path, patch_response)
        return web.json_response(behaviour(review["request"]))


@contextlib.asynccontextmanager
async def small_webhook(tmp: Path, name: str, namespace: str) -> AsyncIterator[SmallWebhook]:
    hook = SmallWebhook(name, namespace, new_bundle([*service_names(name, namespace), "127.0.0.1"]))
    reloader = TlsReloader(tmp / f"{name}-tls")
    await asyncio.to_thread(reloader.load, hook.bundle)
    app = web.Application()
    app.router.add_post("/{tail:.*}", hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=reloader.context)
    await site.start()
    hook.port = runner.addresses[0][1]
    try:
        yield hook
    finally:
        await runner.cleanup()
