"""`eddy demo`: the seed's steps, literally, on the one-machine cluster (sandbox/, docs/sandbox.md).

Eddy is installed from `manifests/` with `kubectl apply -k`; the seed's Secret, Dataset, JindoRuntime,
DataLoad and Deployment are applied with kubectl. From there the parts do the work as in a cluster: the
controller makes the PV/PVC, ConfigMap and worker StatefulSet; the preloader's watch warms the workers;
the webhook injects the sidecar into the Deployment's pod; the pod runner runs the injected pod. The copy
runs inside the app container (`cp -r /data/. ...`, through exec), with the cache and then through a
second Dataset whose runtime has no workers (cache-less: every read goes to the object store through the
same sidecar). Every table is kubectl's own output.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eddy.quantity import human_size
from eddy_cli.demo_data import DataSet, upload
from sandbox.cluster import Sandbox
from sandbox.link import Link
from sandbox.s3server import LocalS3, start_seaweedfs
from sandbox.scenario import (
    ObjectStoreAccess,
    Scenario,
    app_container,
    filled_dataset,
    filled_secret,
    injected_sidecars,
    renamed_app,
)

BUCKET = "eddy-demo"
PREFIX = "serverless/"
DATASET = "serverless-data"
NOCACHE = "serverless-data-nocache"
APP = "model-serving"
COPY_DIR = "/tmp/eddy-copy"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def say(text: str) -> None:
    if text:
        print(text, flush=True)


@dataclass
class Copy:
    seconds: float
    total: int

    @property
    def rate(self) -> str:
        return f"{self.total / self.seconds / 1e6:.0f} MB/s"


@dataclass
class ClusterDemo:
    work: Path
    seed_dir: Path
    total: int
    workers: int
    bandwidth: float
    latency_s: float
    acs: bool = False
    cluster: Sandbox | None = None
    s3: LocalS3 | None = None
    link: Link | None = None
    data: DataSet | None = None
    copies: int = field(default=0)

    async def execute(self) -> None:
        banner("A one-machine cluster (sandbox): API server, admission, pod network, kubelet stand-in")
        self.cluster = await Sandbox(self.work / "cluster").start()
        print(f"API server {self.cluster.url}; pods on {self.cluster.gateway}; "
              f"KUBECONFIG={self.cluster.kubeconfig}", flush=True)
        run = Scenario(self.cluster, say=say)
        access = await self.start_object_store()
        banner("Install Eddy from manifests/")
        await run.install_eddy()
        banner("The seed's Secret, Dataset and JindoRuntime")
        await run.apply_docs([filled_secret(self.seed_dir, access)], verb="create")  # no last-applied copy
        await run.apply_docs(filled_dataset(self.seed_dir, access, workers=self.workers))
        await run.wait_dataset(DATASET)
        await run.kubectl("get", "dataset", DATASET)
        await run.kubectl("get", "jindo", DATASET)
        banner("The seed's DataLoad (the preloader's watch warms the workers)")
        await run.kubectl("apply", "-f", str(self.seed_dir / "dataload.yaml"))
        await run.wait_dataload("serverless-data-warmup")
        await run.wait_cached(DATASET)
        await run.kubectl("get", "dataload")
        await run.kubectl("get", "dataset", DATASET)
        app_file = "deployment-acs.yaml" if self.acs else "deployment-eci.yaml"
        banner(f"The seed's application ({app_file}), admitted through the webhook")
        await run.kubectl("apply", "-f", str(self.seed_dir / app_file))
        pod = await run.wait_pod(f"app={APP}")
        await run.kubectl("get", "pods", "-l", f"app={APP}")
        self.show_sidecars(pod)
        warm = await self.timed_copy(run, pod, "with the cache")
        banner("Cache-less: a second Dataset whose runtime has no workers, read by the same sidecar")
        await run.apply_docs(filled_dataset(self.seed_dir, access, name=NOCACHE, workers=0))
        await run.wait_dataset(NOCACHE)
        app = yaml.safe_load((self.seed_dir / app_file).read_text())
        await run.apply_docs([renamed_app(app, f"{APP}-nocache", claim=NOCACHE)])
        cold_pod = await run.wait_pod(f"app={APP}-nocache")
        cold = await self.timed_copy(run, cold_pod, "without the cache")
        ceiling = await self.local_copy(run, pod)
        banner("Result")
        await run.kubectl("get", "dataset")
        size = human_size(warm.total)
        print(f"copy {size} with the cache:    real {warm.seconds:.3f}s ({warm.rate})")
        print(f"copy {size} without the cache: real {cold.seconds:.3f}s ({cold.rate})")
        print(f"local cp -r of the same bytes: real {ceiling.seconds:.3f}s ({ceiling.rate}); the cached copy "
              f"ran at {ceiling.seconds / warm.seconds:.2f} of this ceiling")
        print(f"speed-up: {cold.seconds / warm.seconds:.1f}x (seed: 13x)", flush=True)

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        if self.link is not None:
            await self.link.stop()
        if self.s3 is not None:
            await asyncio.to_thread(self.s3.stop)

    async def start_object_store(self) -> ObjectStoreAccess:
        assert self.cluster is not None
        banner("Object store: embedded S3 server with an OSS-like link in front")
        self.s3 = await asyncio.to_thread(start_seaweedfs, self.work / "s3")
        print(f"S3 server on {self.s3.endpoint}; uploading a {human_size(self.total)} data set ...",
              flush=True)
        t0 = time.monotonic()
        self.data = await upload(self.s3.endpoint, self.s3.access_key, self.s3.secret_key, BUCKET, PREFIX,
                                 self.total)
        print(f"uploaded {len(self.data.files)} files, {human_size(self.data.total)} in "
              f"{time.monotonic() - t0:.1f}s")
        host, port = self.s3.endpoint.removeprefix("http://").rsplit(":", 1)
        # Pods reach the bucket as a cloud pod reaches OSS: through a slow link, here on the pod network.
        self.link = await Link(host, int(port), bandwidth=self.bandwidth, latency_s=self.latency_s,
                               host=self.cluster.gateway).start()
        cap = f"{self.bandwidth / 1e6:.0f} MB/s" if self.bandwidth > 0 else "no cap"
        print(f"OSS-like link on {self.link.endpoint}: {cap}, {self.latency_s * 1000:.0f} ms per request")
        return ObjectStoreAccess(self.link.endpoint, BUCKET, PREFIX, self.s3.access_key, self.s3.secret_key)

    @staticmethod
    def show_sidecars(pod: dict[str, Any]) -> None:
        sidecars = injected_sidecars(pod)
        print(f"the webhook injected {len(sidecars)} sidecar(s) into {pod['metadata']['name']}:")
        for sidecar in sidecars:
            shown = {k: sidecar[k] for k in ("name", "image", "command", "restartPolicy", "securityContext")
                     if k in sidecar}
            print(yaml.safe_dump(shown, sort_keys=False).rstrip(), flush=True)

    async def timed_copy(self, run: Scenario, pod: dict[str, Any], label: str) -> Copy:
        assert self.data is not None
        banner(f"Copy the data set {label}, inside the app container")
        dest = f"{COPY_DIR}-{self.copies}"
        self.copies += 1
        container = app_container(pod)
        await run.exec(pod, container, ["mkdir", "-p", dest])
        # kubectl exec needs streams the sandbox does not serve: say what runs, and how (docs/sandbox.md).
        print(f"$ eddy sandbox exec {pod['metadata']['name']} -c {container} -- cp -r /data/. {dest}/  "
              f"(timed; as {self.user_of(pod, container)})", flush=True)
        limits = [f"{s['name']}: cpu {s.get('resources', {}).get('limits', {}).get('cpu', 'unlimited')}, "
                  f"memory {s.get('resources', {}).get('limits', {}).get('memory', 'unlimited')}"
                  for s in injected_sidecars(pod)]
        print(f"(the sidecar runs under its injected limits, applied with cgroups: {'; '.join(limits)})")
        t0 = time.monotonic()
        await run.exec(pod, container, ["cp", "-r", "/data/.", f"{dest}/"])
        copy = Copy(time.monotonic() - t0, self.data.total)
        seen = await run.checksums(pod, container, dest)
        wrong = [p for p, digest in self.data.sha256.items() if seen.get(p) != digest]
        if wrong or len(seen) != len(self.data.sha256):
            raise RuntimeError(f"{len(wrong)} file(s) differ (e.g. {wrong[:3]}); {len(seen)} copied of "
                               f"{len(self.data.sha256)}")
        print(f"real {copy.seconds:.3f}s: {human_size(copy.total)} at {copy.rate}, {len(seen)} files, "
              "every checksum verified", flush=True)
        return copy

    async def local_copy(self, run: Scenario, pod: dict[str, Any]) -> Copy:
        """This machine's ceiling for the same bytes: `cp -r` of the warm copy, in the same container,
        memory to memory; the better of two runs (the first pays for fresh pages the second reuses)."""
        assert self.data is not None
        container, source = app_container(pod), f"{COPY_DIR}-0"
        print(f"$ eddy sandbox exec {pod['metadata']['name']} -c {container} -- cp -r {source}/. "
              f"{COPY_DIR}-ceiling/  (timed twice, the better kept: the same bytes, memory to memory)",
              flush=True)
        best = float("inf")
        for _ in range(2):
            dest = f"{COPY_DIR}-ceiling"
            await run.exec(pod, container, ["sh", "-c", f"rm -rf {dest} && mkdir -p {dest}"])
            t0 = time.monotonic()
            await run.exec(pod, container, ["cp", "-r", f"{source}/.", f"{dest}/"])
            best = min(best, time.monotonic() - t0)
        return Copy(best, self.data.total)

    @staticmethod
    def user_of(pod: dict[str, Any], container: str) -> str:
        spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
        pod_uid = (pod["spec"].get("securityContext") or {}).get("runAsUser")
        uid = (spec.get("securityContext") or {}).get("runAsUser", pod_uid)
        return f"uid {uid}" if uid is not None else "the image's user"
