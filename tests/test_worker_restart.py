"""The real `eddy worker` process: tiers from the JindoRuntime, SIGTERM, restart keeps disk-tier blocks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from eddy.blocks import BlockRef
from eddy.workerclient import WorkerClient
from eddy_cli.procs import eddy_command
from tests.support.faultproxy import FaultProxy
from tests.support.s3 import S3Server

BS = 64 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest(s3: S3Server, bucket: str, endpoint: str, tmp: Path) -> Path:
    dataset = s3.dataset_doc(bucket, "data")
    dataset["spec"]["mounts"][0]["options"]["fs.oss.endpoint"] = endpoint
    runtime = {
        "apiVersion": "data.fluid.io/v1alpha1",
        "kind": "JindoRuntime",
        "metadata": {"name": "serverless-data"},
        "spec": {"replicas": 1, "tieredstore": {"levels": [
            {"mediumtype": "MEM", "path": str(tmp / "shm"), "quota": str(2 * BS + 8192), "high": "0.95",
             "low": "0.5"},
            {"mediumtype": "SSD", "path": str(tmp / "ssd"), "quota": "10Mi", "high": "0.95", "low": "0.7"},
        ]}},
    }
    path = tmp / "dataset.yaml"
    path.write_text(yaml.safe_dump_all([dataset, runtime]))
    return path


class Worker:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*eddy_command(), *self.args], stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.kill()


async def _wait_ready(client: WorkerClient, url: str, worker: Worker) -> None:
    for _ in range(200):
        if await client.ready(url, timeout=1):
            return
        assert worker.proc is not None and worker.proc.poll() is None, worker.log.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError("worker never became ready:\n" + worker.log.read_text())


async def test_restart_keeps_disk_blocks(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path, worker_factory: list[Worker]
) -> None:
    data = os.urandom(6 * BS)
    etag = s3_server.put_object(s3_bucket, "data/big.bin", data)
    manifest = _manifest(s3_server, s3_bucket, fault_proxy.endpoint, tmp_path)
    secret_dir = s3_server.write_secret_dir(tmp_path / "secrets")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["worker", "-f", str(manifest), "--port", str(port), "--secret-dir", str(secret_dir),
            "--block-size", str(BS)]
    refs = [BlockRef("demo", "big.bin", etag, i, len(data), BS) for i in range(6)]
    client = WorkerClient(timeout=10)
    try:
        first = Worker(args, tmp_path / "worker.log")
        worker_factory.append(first)
        first.start()
        await _wait_ready(client, url, first)
        results = await client.warm(url, refs)
        assert [r.status for r in results] == ["fetched"] * 6
        stats = await client.stats(url)
        levels = {lvl["mediumtype"]: lvl for lvl in stats["levels"]}
        assert levels["SSD"]["blocks"] >= 4 and levels["MEM"]["blocks"] >= 1
        assert levels["MEM"]["used"] <= levels["MEM"]["quota"]
        await client.put_meta(url, "listing", b"the listing snapshot")
        assert first.stop() == 0  # graceful SIGTERM

        second = Worker(args, tmp_path / "worker.log")
        worker_factory.append(second)
        second.start()
        await _wait_ready(client, url, second)
        again = await client.stats(url)
        assert again["blocks"] == 6 and again["cached_bytes"] == len(data)
        assert await client.get_meta(url, "listing") == b"the listing snapshot"  # kept on the SSD level
        before = fault_proxy.requests
        for r in refs:
            reply = await client.get_block_reply(url, r)
            assert reply.cache == "hit"
            assert reply.data == data[r.start:r.end]
        assert fault_proxy.requests == before  # all served from the tiers found again
        assert second.stop() == 0
        log = (tmp_path / "worker.log").read_text()
        assert s3_server.secret_key not in log and s3_server.access_key not in log
    finally:
        await client.close()
