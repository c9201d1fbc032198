"""`eddy controller` as a process: reconciles the seed, serves /metrics, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import Any

import aiohttp

from tests.test_controller import secret_doc, seed_docs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_controller_process_reconciles_and_exits_on_sigterm(
    kube_api: Any, s3_server: Any, s3_bucket: str
) -> None:
    s3_server.put_object(s3_bucket, "data/one.bin", b"1" * 1000)
    for doc in [secret_doc(s3_server), *seed_docs(s3_bucket, s3_server.endpoint)]:
        kube_api.put(doc)
    metrics = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eddy_cli.main", "controller", f"--kube-url={kube_api.url}",
        "--image=registry.test/eddy:1", f"--metrics-port={metrics}", "--resync=30",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            ds = kube_api.get_object("datasets.data.fluid.io", "default", "serverless-data")
            if (ds.get("status") or {}).get("phase") == "Bound":
                break
            assert proc.returncode is None
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("not Bound within 20 s")
        assert ds["status"]["ufsTotal"] == "1000.00B"
        sts = kube_api.get_object("statefulsets.apps", "default", "serverless-data-eddy-worker")
        assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/eddy:1"
        # The status write lands before the reconcile is counted: poll the metric briefly.
        wanted = 'eddy_controller_reconciles_total{kind="dataset",result="ok"}'
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                async with session.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                    text = await response.text()
                if wanted in text:
                    break
                await asyncio.sleep(0.1)
        assert wanted in text
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert "controller stopped" in log
        assert s3_server.secret_key not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
