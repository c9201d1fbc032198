"""The steps of `eddy demo`, one method each, sharing the processes and files of one run."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import yaml

from eddy.api import parse_dataset
from eddy.objectstore import ObjectStore
from eddy.quantity import human_size, parse_quantity, percentage
from eddy.secrets import SecretSource
from eddy.workerclient import WorkerClient
from eddy_cli.demo_data import DataSet, upload
from eddy_cli.procs import Processes, eddy_command, free_port, is_mounted, unmount
from eddy_cli.tables import age, table
from sandbox.link import Link
from sandbox.s3server import LocalS3, start_seaweedfs
from webhook.review import pod_create_review, pod_of_template

BUCKET = "eddy-demo"
PREFIX = "serverless/"
# The seed asks for 5Gi of MEM for a 1.16 GiB data set; keep that ratio when scaling the quota.
QUOTA_PER_BYTE = 5 / 1.16


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def shell(line: str) -> None:
    print(f"$ {line}", flush=True)


@dataclass
class DemoRun:
    work: Path
    seed_dir: Path
    total: int
    workers: int
    bandwidth: float
    latency_s: float
    use_fuse: bool
    why_no_fuse: str
    procs: Processes = field(default_factory=Processes)
    s3: LocalS3 | None = None
    link: Link | None = None
    data: DataSet | None = None
    worker_urls: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    dataload_started: float = 0.0
    dataload_duration: float = 0.0
    dataload_phase: str = "Pending"
    warm_s: float = 0.0
    cold_s: float = 0.0

    # ------------------------------------------------------------------ paths
    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def manifests(self) -> Path:
        return self.work / "manifests"

    @property
    def secret_dir(self) -> Path:
        return self.work / "secrets"

    # ------------------------------------------------------------------ flow
    async def execute(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        await self.start_object_store()
        self.write_manifests()
        await self.start_workers()
        await self.admit_pod()
        await self.print_dataset("before the DataLoad")
        await self.preload()
        self.print_dataload()
        await self.print_dataset("after the DataLoad")
        warm = self.warm_s = await self.copy_out("with the cache (workers)", use_workers=True)
        cold = self.cold_s = await self.copy_out("without the cache (object store only)", use_workers=False)
        banner("Result")
        size = human_size(self.data.total if self.data else 0)
        print(f"copy {size} with the cache:    real {warm:.3f}s")
        print(f"copy {size} without the cache: real {cold:.3f}s")
        print(f"speed-up: {cold / warm:.1f}x (seed: 13x)", flush=True)

    async def close(self) -> None:
        await asyncio.to_thread(self.procs.close)
        if self.link is not None:
            await self.link.stop()
        if self.s3 is not None:
            await asyncio.to_thread(self.s3.stop)

    # ------------------------------------------------------------------ steps
    async def start_object_store(self) -> None:
        banner("Object store: embedded S3 server with an OSS-like link in front")
        self.s3 = await asyncio.to_thread(start_seaweedfs, self.work / "s3")
        print(
            f"S3 server on {self.s3.endpoint}; uploading a {human_size(self.total)} data set ...", flush=True
        )
        t0 = time.monotonic()
        self.data = await upload(
            self.s3.endpoint, self.s3.access_key, self.s3.secret_key, BUCKET, PREFIX, self.total
        )
        print(
            f"uploaded {len(self.data.files)} files, {human_size(self.data.total)} in "
            f"{time.monotonic() - t0:.1f}s"
        )
        host, port = self.s3.endpoint.removeprefix("http://").rsplit(":", 1)
        self.link = await Link(host, int(port), bandwidth=self.bandwidth, latency_s=self.latency_s).start()
        cap = f"{self.bandwidth / 1e6:.0f} MB/s" if self.bandwidth > 0 else "no cap"
        print(f"OSS-like link on {self.link.endpoint}: {cap}, {self.latency_s * 1000:.0f} ms per request")

    def write_manifests(self) -> None:
        """The seed's manifests with the placeholders filled in for this machine."""
        assert self.s3 is not None and self.link is not None
        self.manifests.mkdir(parents=True, exist_ok=True)
        docs = list(yaml.safe_load_all((self.seed_dir / "dataset.yaml").read_text()))
        dataset, runtime = docs[0], docs[1]
        mount = dataset["spec"]["mounts"][0]
        mount["mountPoint"] = f"oss://{BUCKET}/{PREFIX.rstrip('/')}"
        mount["options"]["fs.oss.endpoint"] = self.link.endpoint
        quota = max(64 << 20, int(self.total * QUOTA_PER_BYTE) >> 20 << 20)
        level = runtime["spec"]["tieredstore"]["levels"][0]
        level["quota"] = f"{quota >> 20}Mi"
        runtime["spec"]["replicas"] = self.workers
        (self.manifests / "dataset.yaml").write_text(yaml.safe_dump_all([dataset, runtime], sort_keys=False))
        dataload = (self.seed_dir / "dataload.yaml").read_text()
        (self.manifests / "dataload.yaml").write_text(dataload)
        # The Secret of secret.yaml, as the sidecar and workers see it: one file per key.
        secret = self.secret_dir / "access-key"
        secret.mkdir(parents=True, exist_ok=True)
        (secret / "fs.oss.accessKeyId").write_text(self.s3.access_key)
        (secret / "fs.oss.accessKeySecret").write_text(self.s3.secret_key)
        for path in secret.iterdir():
            path.chmod(0o600)
        self.dataset_doc, self.runtime_doc = dataset, runtime
        print(
            f"manifests: {self.manifests} (seed's dataset.yaml: MEM tier, quota {level['quota']}, "
            f"{self.workers} worker(s))"
        )

    async def start_workers(self) -> None:
        banner(f"Workers: {self.workers} cache worker(s) with the seed's MEM tier")
        shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else self.work
        tier_root = shm / f"eddy-demo-{uuid.uuid4().hex[:8]}"
        self.procs.dirs.append(tier_root)
        for i in range(self.workers):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = [
                *eddy_command(),
                "worker",
                "-f",
                str(self.manifests / "dataset.yaml"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--secret-dir",
                str(self.secret_dir),
                "--level-path",
                f"MEM={tier_root}/worker-{i}",
            ]
            self.procs.start(f"worker-{i}", args, self.logs / f"worker-{i}.log")
            self.worker_urls.append(url)
        await self.wait_http([f"{u}/readyz" for u in self.worker_urls], "workers")
        for url in self.worker_urls:
            print(f"worker ready: {url}")

    async def admit_pod(self) -> None:
        banner("Webhook: the seed's deployment-eci.yaml pod, admitted over HTTPS")
        cert_dir = self.work / "certs"
        port = free_port()
        self.procs.start(
            "webhook",
            [
                *eddy_command(),
                "webhook",
                "--local",
                "-f",
                str(self.manifests / "dataset.yaml"),
                "--cert-dir",
                str(cert_dir),
                "--port",
                str(port),
            ],
            self.logs / "webhook.log",
        )
        await self.wait_file(cert_dir / "ca.crt", "the webhook's CA")
        pod = pod_of_template(yaml.safe_load((self.seed_dir / "deployment-eci.yaml").read_text()))
        review = pod_create_review(pod, "default", str(uuid.uuid4()))
        ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
        url = f"https://127.0.0.1:{port}/mutate"
        answer = await self.post_json(url, review, ctx, "the webhook")
        response = answer["response"]
        patch = json.loads(base64.b64decode(response.get("patch", "") or "W10="))
        patched = jsonpatch.apply_patch(pod, patch)
        sidecars = [
            c
            for c in [*patched["spec"].get("initContainers", []), *patched["spec"]["containers"]]
            if c["name"] not in {x["name"] for x in pod["spec"]["containers"]}
        ]
        print(f"allowed: {response.get('allowed')}, {len(patch)} patch operations; injected sidecar:")
        print(yaml.safe_dump(sidecars, sort_keys=False).rstrip())
        for warning in response.get("warnings", []):
            print(f"warning: {warning}")

    async def dataset_row(self) -> list[str]:
        assert self.data is not None
        dataset = parse_dataset(self.dataset_doc)
        secrets = SecretSource.from_dir(self.secret_dir)
        total = 0
        async with ObjectStore.for_mount(dataset.mounts[0], secrets) as store:
            async for info in store.list():
                total += info.size
        cached = 0
        client = WorkerClient()
        try:
            for url in self.worker_urls:
                stats = await client.stats(url)
                cached += int(stats.get("cached_bytes", 0))
        finally:
            await client.close()
        level = self.runtime_doc["spec"]["tieredstore"]["levels"][0]
        capacity = parse_quantity(level["quota"]) * self.workers
        return [
            dataset.meta.name,
            human_size(total),
            human_size(min(cached, total)),
            human_size(capacity),
            percentage(cached, total),
            "Bound",
            age(time.monotonic() - self.started),
        ]

    async def print_dataset(self, when: str) -> None:
        banner(f"Dataset, {when}")
        shell("kubectl get dataset serverless-data")
        headers = ["NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE", "PHASE", "AGE"]
        print(table(headers, [await self.dataset_row()]), flush=True)

    async def preload(self) -> None:
        banner("DataLoad: the seed's dataload.yaml (loadMetadata: true)")
        shell("kubectl create -f dataload.yaml")
        args = [
            *eddy_command(),
            "preload",
            "-f",
            str(self.manifests / "dataload.yaml"),
            "-f",
            str(self.manifests / "dataset.yaml"),
            "--secret-dir",
            str(self.secret_dir),
        ]
        for url in self.worker_urls:
            args += ["--worker", url]
        self.dataload_started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*args)
        code = await proc.wait()
        self.dataload_duration = time.monotonic() - self.dataload_started
        self.dataload_phase = "Complete" if code == 0 else "Failed"
        if code != 0:
            raise RuntimeError(f"eddy preload failed with exit code {code}")

    def print_dataload(self) -> None:
        shell("kubectl get dataload")
        row = [
            "serverless-data-warmup",
            "serverless-data",
            self.dataload_phase,
            age(time.monotonic() - self.dataload_started),
            age(self.dataload_duration),
        ]
        print(table(["NAME", "DATASET", "PHASE", "AGE", "DURATION"], [row]), flush=True)

    async def copy_out(self, label: str, *, use_workers: bool) -> float:
        banner(f"Copy the data set {label}")
        assert self.data is not None
        dest = self.work / ("copy-warm" if use_workers else "copy-cold")
        dest.mkdir()
        if self.use_fuse:
            seconds = await self.copy_through_mount(dest, use_workers)
        else:
            print(f"(no FUSE here: {self.why_no_fuse}; reading through the sidecar's reader without a mount)")
            seconds = await self.copy_through_reader(dest, use_workers)
        self.verify(dest)
        print(
            f"real {seconds:.3f}s — {human_size(self.data.total)} at "
            f"{self.data.total / seconds / 1e6:.0f} MB/s, checksums verified",
            flush=True,
        )
        await asyncio.to_thread(shutil.rmtree, dest, True)
        return seconds

    async def copy_through_mount(self, dest: Path, use_workers: bool) -> float:
        mountpoint = self.work / ("mnt-warm" if use_workers else "mnt-cold")
        mountpoint.mkdir()
        self.procs.mounts.append(mountpoint)
        args = [
            *eddy_command(),
            "sidecar",
            "mount",
            "-f",
            str(self.manifests / "dataset.yaml"),
            "--mountpoint",
            str(mountpoint),
            "--secret-dir",
            str(self.secret_dir),
            "--health-port",
            "0",
        ]
        if use_workers:
            for url in self.worker_urls:
                args += ["--worker", url]
        else:
            args.append("--no-workers")
        name = "sidecar-warm" if use_workers else "sidecar-cold"
        proc = self.procs.start(name, args, self.logs / f"{name}.log")
        check = await asyncio.create_subprocess_exec(
            *eddy_command(), "sidecar", "check-mount", str(mountpoint), "--timeout", "60"
        )
        if await check.wait() != 0:
            raise RuntimeError(f"the sidecar did not mount {mountpoint} (see {self.logs}/{name}.log)")
        shell(f"time cp -r {mountpoint}/. {dest}/")
        t0 = time.monotonic()
        cp = await asyncio.create_subprocess_exec("cp", "-r", f"{mountpoint}/.", f"{dest}/")
        try:
            code = await cp.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                cp.kill()  # a reader left on the mount would keep it busy
            await cp.wait()
            raise
        if code != 0:
            raise RuntimeError("cp from the mount failed")
        seconds = time.monotonic() - t0
        await asyncio.to_thread(self.procs.stop, proc)
        if is_mounted(mountpoint):
            await asyncio.to_thread(unmount, mountpoint)
        return seconds

    async def copy_through_reader(self, dest: Path, use_workers: bool) -> float:
        from sidecar.reader import copy_dataset  # the same data path as the mount, without FUSE

        t0 = time.monotonic()
        await copy_dataset(
            self.manifests / "dataset.yaml", dest, self.secret_dir, self.worker_urls if use_workers else []
        )
        return time.monotonic() - t0

    def verify(self, dest: Path) -> None:
        assert self.data is not None
        for path, digest in self.data.sha256.items():
            h = hashlib.sha256()
            with open(dest / path, "rb") as f:
                while chunk := f.read(4 << 20):
                    h.update(chunk)
            if h.hexdigest() != digest:
                raise RuntimeError(f"checksum mismatch for {path}")

    # ------------------------------------------------------------------ waiting
    async def wait_http(self, urls: list[str], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            for url in urls:
                while True:
                    self.procs.check_alive()
                    try:
                        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                            if r.status == 200:
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"timed out waiting for {what} ({url}); logs in {self.logs}")
                    await asyncio.sleep(0.1)

    async def wait_file(self, path: Path, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(path.exists):
            self.procs.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; logs in {self.logs}")
            await asyncio.sleep(0.1)

    async def post_json(
        self, url: str, body: Any, ctx: ssl.SSLContext, what: str, timeout: float = 30
    ) -> Any:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.post(url, json=body, ssl=ctx) as r:
                        r.raise_for_status()
                        return await r.json()
                except aiohttp.ClientConnectionError:
                    self.procs.check_alive()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"timed out waiting for {what}") from None
                    await asyncio.sleep(0.1)
