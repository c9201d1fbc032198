"""The seed's step 4 columns with a REAL worker: started from the controller's own ConfigMap
(`eddy worker --config eddy.yaml`), warmed, then `cached`/`cachedPercentage` come from its stats."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller import kubeio
from controller.kubeio import Kube
from controller.objects import Settings
from controller.reconciler import Reconciler
from eddy.api import Dataset, parse_dataset
from eddy.blocks import blocks_of
from eddy.objectstore import ObjectStore
from eddy.workerclient import WorkerClient
from eddy_cli.procs import stop_child
from tests.test_controller import OBJECTS, secret_doc, seed_docs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def worker_url(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    yield f"http://127.0.0.1:{_free_port()}", tmp_path


async def test_cached_columns_come_from_a_real_worker(
    kube_api: Any, s3_server: Any, s3_bucket: str, worker_url: tuple[str, Path]
) -> None:
    url, tmp = worker_url
    for key, size in OBJECTS:
        s3_server.put_object(s3_bucket, key, b"z" * size)
    kube = await Kube.connect(kube_api.url)
    reconciler = Reconciler(kube, Settings(), ufs_period=3600,
                            worker_urls=lambda ds, replicas, port: [url])
    proc = None
    try:
        dataset, runtime = seed_docs(s3_bucket, s3_server.endpoint)
        await kube.create(kubeio.SECRETS, secret_doc(s3_server), "default")
        await kube.create(kubeio.DATASETS, dataset, "default")
        await kube.create(kubeio.RUNTIMES, runtime, "default")
        await reconciler.reconcile_dataset("default", "serverless-data")

        # The worker runs from the very file the controller wrote, and the Secret as a volume would be.
        cm = kube_api.get_object("configmaps", "default", "serverless-data-eddy-config")
        config = tmp / "eddy.yaml"
        config.write_text(cm["data"]["eddy.yaml"])
        secret_dir = s3_server.write_secret_dir(tmp / "secrets")
        port = url.rsplit(":", 1)[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eddy_cli.main", "worker", f"--config={config}", "--host=127.0.0.1",
            f"--port={port}", f"--secret-dir={secret_dir}", f"--level-path=MEM={tmp / 'mem'}",
            "--level-quota=MEM=64Mi", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        client = WorkerClient(timeout=10.0)
        try:
            for _ in range(150):
                if await client.ready(url, timeout=1.0):
                    break
                assert proc.returncode is None, "worker exited"
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("worker not ready in 15 s")
            ds: Dataset = parse_dataset(dataset)
            mount = ds.mounts[0]
            refs = []
            async with ObjectStore.for_mount(mount, s3_server.secrets()) as store:
                async for info in store.list():
                    refs.extend(blocks_of(mount.name, info.key, info.etag, info.size))
            results = await client.warm(url, refs, timeout=60)
            assert len(results) == len(refs)
        finally:
            await client.close()

        sts = kube_api.get_object("statefulsets.apps", "default", "serverless-data-eddy-worker")
        sts["status"] = {"replicas": 1, "readyReplicas": 1}
        kube_api.put(sts)
        await reconciler.reconcile_dataset("default", "serverless-data")
        status = kube_api.get_object("datasets.data.fluid.io", "default", "serverless-data")["status"]
        assert status["cacheStates"] == {
            "cached": "1.98MiB", "cacheCapacity": "5.00GiB", "cachedPercentage": "100.0%"}
        assert status["ufsTotal"] == "1.98MiB"
    finally:
        await stop_child(proc)
        await reconciler.close()
        await kube.close()
