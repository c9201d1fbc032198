"""The seed's steps on the one-machine cluster, as a user takes them: kubectl and the API only.

Shared by `eddy demo` (which prints every step) and the end-to-end tests (which assert on them): install
Eddy from `manifests/`, fill the seed's placeholders, apply, wait for what the controllers write, and
read the dataset from inside an app container through exec. Nothing here starts an Eddy part by hand.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shlex
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from eddy import kube
from sandbox.cluster import Sandbox, kubectl_path

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
Obj = dict[str, Any]
T = TypeVar("T")


def quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class ObjectStoreAccess:
    """Where pods reach the bucket (an address on the pod network) and the keys of the seed's Secret."""

    endpoint: str
    bucket: str
    prefix: str
    access_key: str
    secret_key: str


class KubectlFailed(RuntimeError):
    pass


class Scenario:
    def __init__(self, cluster: Sandbox, *, say: Callable[[str], None] = quiet) -> None:
        self.cluster = cluster
        self.say = say

    @property
    def kube(self) -> kube.Kube:
        assert self.cluster.kube is not None, "the sandbox is not started"
        return self.cluster.kube

    # ------------------------------------------------------------------ kubectl
    async def kubectl(self, *args: str, show: bool = True, stdin: bytes | None = None) -> str:
        """Run the real kubectl against the sandbox; prints the command as run (and its output)."""
        self.say(f"$ kubectl {shlex.join(args)}")
        proc = await asyncio.create_subprocess_exec(
            kubectl_path(), *args, env=self.cluster.kubectl_env(),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = await proc.communicate(stdin)
        text = out.decode(errors="replace")
        if show:
            self.say(text.rstrip())
        if proc.returncode != 0:
            raise KubectlFailed(f"kubectl {shlex.join(args)} failed (exit {proc.returncode}): {text[-800:]}")
        return text

    async def apply_docs(self, docs: Sequence[Obj], *, verb: str = "apply") -> str:
        """`kubectl apply -f -` (or `create`, for Secrets: apply would copy them into an annotation)."""
        body = yaml.safe_dump_all(list(docs), sort_keys=False).encode()
        return await self.kubectl(verb, "-f", "-", stdin=body)

    async def install_eddy(self, manifests: Path = MANIFESTS) -> None:
        await self.kubectl("apply", "-k", str(manifests))
        await self.kubectl("-n", "eddy-system", "wait", "--for=condition=Available", "deployment", "--all",
                           "--timeout=180s")
        await self.wait_until("the webhook to write its caBundle", self._ca_bundle_written)

    async def seed_dataset(self, seed_dir: Path, access: ObjectStoreAccess) -> Obj:
        """The seed's steps 2-4 after the install: its Secret (created: `apply` would copy it into an
        annotation), Dataset and JindoRuntime, then its DataLoad; returns the DataLoad once Complete and
        the Dataset shows it all cached."""
        await self.apply_docs([filled_secret(seed_dir, access)], verb="create")
        await self.apply_docs(filled_dataset(seed_dir, access))
        await self.wait_dataset("serverless-data")
        await self.kubectl("apply", "-f", str(seed_dir / "dataload.yaml"))
        load = await self.wait_dataload("serverless-data-warmup")
        await self.wait_cached("serverless-data")
        return load

    async def _ca_bundle_written(self) -> bool:
        config = await self.kube.get_or_none(kube.MUTATING_WEBHOOK_CONFIGURATIONS, "eddy-webhook")
        hooks = (config or {}).get("webhooks") or []
        return bool(hooks) and all((h.get("clientConfig") or {}).get("caBundle") for h in hooks)

    # ------------------------------------------------------------------ waiting on what the parts write
    async def wait_until(self, what: str, check: Callable[[], Awaitable[T | None]],
                         timeout: float = 180) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(0.3)

    async def wait_dataset(self, name: str, namespace: str = "default", timeout: float = 180) -> Obj:
        async def check() -> Obj | None:
            ds = await self.kube.get_or_none(kube.DATASETS, name, namespace) or {}
            rt = await self.kube.get_or_none(kube.JINDORUNTIMES, name, namespace) or {}
            bound = (ds.get("status") or {}).get("phase") == "Bound"
            wanted = int((rt.get("spec") or {}).get("replicas", 1) or 0)
            workers = wanted == 0 or (rt.get("status") or {}).get("workerPhase") in ("Ready", "PartialReady")
            return ds if bound and workers else None
        return await self.wait_until(f"Dataset {namespace}/{name} Bound with its workers", check, timeout)

    async def wait_dataload(self, name: str, namespace: str = "default", timeout: float = 600) -> Obj:
        phases: list[str] = []

        async def check() -> Obj | None:
            load = await self.kube.get_or_none(kube.DATALOADS, name, namespace) or {}
            status = load.get("status") or {}
            phase = str(status.get("phase") or "Pending")
            if not phases or phases[-1] != phase:
                phases.append(phase)
                self.say(f"DataLoad {name}: {phase}")
            if phase == "Failed":
                raise RuntimeError(f"DataLoad {name} failed: {status.get('conditions')}")
            return {**load, "phases": phases} if phase == "Complete" else None
        return await self.wait_until(f"DataLoad {namespace}/{name} Complete", check, timeout)

    async def wait_cached(self, name: str, namespace: str = "default", percentage: str = "100.0%",
                          timeout: float = 120) -> Obj:
        """The Dataset once its status shows `percentage` cached (what `kubectl get dataset` prints)."""
        async def check() -> Obj | None:
            ds = await self.kube.get_or_none(kube.DATASETS, name, namespace) or {}
            states = (ds.get("status") or {}).get("cacheStates") or {}
            return ds if states.get("cachedPercentage") == percentage else None
        return await self.wait_until(f"Dataset {namespace}/{name} {percentage} cached", check, timeout)

    async def wait_pod(self, selector: str, namespace: str = "default", *, phase: str = "Running",
                       timeout: float = 180) -> Obj:
        """The first pod matching `selector` in `phase` (Running means Running and Ready)."""
        async def check() -> Obj | None:
            pods, _ = await self.kube.list(kube.PODS, namespace, label_selector=selector)
            for pod in pods:
                status = pod.get("status") or {}
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in status.get("conditions") or [])
                if status.get("phase") == phase and (ready or phase != "Running"):
                    return dict(pod)
                if status.get("phase") == "Failed" and phase != "Failed":
                    raise RuntimeError(f"pod {pod['metadata']['name']} failed: {status}")
            return None
        return await self.wait_until(f"a {phase} pod with {selector}", check, timeout)

    # ------------------------------------------------------------------ inside the app container
    async def exec(self, pod: Obj, container: str, argv: Sequence[str], timeout: float = 900) -> str:
        assert self.cluster.runner is not None
        meta = pod["metadata"]
        result = await self.cluster.runner.exec(meta["namespace"], meta["name"], container, list(argv),
                                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} in {meta['name']}/{container} exited "
                               f"{result.returncode}: {result.stderr.decode(errors='replace')[-800:]}")
        return str(result.stdout.decode(errors="replace"))

    async def checksums(self, pod: Obj, container: str, directory: str) -> dict[str, str]:
        """sha256 of every file under `directory`, read inside the container: relative path -> digest."""
        script = f"cd {shlex.quote(directory)} && find . -type f -exec sha256sum {{}} +"
        out = await self.exec(pod, container, ["sh", "-c", script])
        return {line[66:].removeprefix("./"): line[:64] for line in out.splitlines() if len(line) > 66}


def app_container(pod: Mapping[str, Any]) -> str:
    """The app's container: the last of `containers` (a classic sidecar goes first)."""
    return str(pod["spec"]["containers"][-1]["name"])


def injected_sidecars(pod: Mapping[str, Any]) -> list[Obj]:
    spec = pod["spec"]
    return [c for c in [*spec.get("initContainers", []), *spec["containers"]]
            if str(c["name"]).startswith(("eddy-", "fluid-fuse"))]


def filled_secret(seed_dir: Path, access: ObjectStoreAccess) -> Obj:
    """The seed's secret.yaml with its `****` placeholders (not YAML as they stand) filled."""
    values = {"fs.oss.accessKeyId": access.access_key, "fs.oss.accessKeySecret": access.secret_key}
    lines = []
    for line in (seed_dir / "secret.yaml").read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip() == "****" and key.strip() in values:
            line = f"{key}: {json.dumps(values[key.strip()])}"
        lines.append(line)
    secret: Obj = yaml.safe_load("\n".join(lines))
    return secret


def filled_dataset(seed_dir: Path, access: ObjectStoreAccess, *, name: str = "",
                   workers: int = 1) -> list[Obj]:
    """The seed's Dataset + JindoRuntime with the placeholders filled (and, given, another name)."""
    dataset, runtime = list(yaml.safe_load_all((seed_dir / "dataset.yaml").read_text()))[:2]
    mount = dataset["spec"]["mounts"][0]
    mount["mountPoint"] = f"oss://{access.bucket}/{access.prefix.strip('/')}"
    mount["options"]["fs.oss.endpoint"] = access.endpoint
    runtime["spec"]["replicas"] = workers
    if name:
        dataset["metadata"]["name"] = runtime["metadata"]["name"] = name
    return [dataset, runtime]


def renamed_app(app: Obj, name: str, claim: str | None = None, old_claim: str = "serverless-data") -> Obj:
    """A copy of the seed's Deployment (or Job/pod template holder) under another name and app label."""
    out = copy.deepcopy(app)
    out["metadata"]["name"] = name
    spec = out["spec"]
    if "selector" in spec:
        spec["selector"]["matchLabels"]["app"] = name
    spec["template"]["metadata"]["labels"]["app"] = name
    if claim:
        for volume in spec["template"]["spec"].get("volumes") or []:
            if (volume.get("persistentVolumeClaim") or {}).get("claimName") == old_claim:
                volume["persistentVolumeClaim"]["claimName"] = claim
    return out
