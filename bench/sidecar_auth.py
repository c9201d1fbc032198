"""The sidecar's warm read with and without worker tokens: what the cluster's authentication costs.

    python -m bench.sidecar_auth [--size-mib 256]

In a cluster the controller gives workers bearer tokens (worker/guard.py); `make bench`'s sidecar
benchmark runs workers without them. This measurement runs the same warm sequential read through
`eddy sidecar mount` against one `eddy worker`, first without tokens, then with `--token-dir` (the
sidecar gets the read token through $EDDY_WORKER_TOKEN_FILE, as in a pod), and prints throughput and
CPU-seconds per GiB of sidecar and worker for both. A measurement, not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.memfs import bench_content
from bench.sidecar_bench import (
    KEY,
    MiB,
    Procs,
    _eddy,
    _through_sidecar,
    _wait_ready,
    manifest_docs,
    upload,
    warm_workers,
)
from eddy_cli.procs import free_port


async def measure(size_mib: int) -> dict[str, Any]:
    from sandbox.s3server import start_seaweedfs

    work = Path(tempfile.mkdtemp(prefix="eddy-bench-auth-"))
    shm = Path(tempfile.mkdtemp(prefix="eddy-bench-auth-", dir="/dev/shm"))
    procs = Procs()
    s3 = await asyncio.to_thread(start_seaweedfs, work / "s3")
    out: dict[str, Any] = {"bytes": size_mib * MiB}
    try:
        data = bench_content(size_mib * MiB)
        expect = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(upload, s3, data, {})
        del data
        secret_dir = s3.write_secret_dir(work / "secrets")
        manifest = work / "dataset.yaml"
        manifest.write_text(yaml.safe_dump_all(manifest_docs(s3.endpoint, 2 * size_mib, 1)))
        tokens = work / "tokens"
        tokens.mkdir()
        for role in ("read", "admin"):
            (tokens / role).write_text(secrets.token_urlsafe(32))
        for auth in (False, True):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            extra = ["--token-dir", str(tokens)] if auth else []
            worker = procs.start([*_eddy(), "worker", "-f", str(manifest), "--host", "127.0.0.1", "--port",
                                  str(port), "--secret-dir", str(secret_dir), "--level-path",
                                  f"MEM={shm}/w-{auth}", "--serve-mode", "sendfile", *extra],
                                 work / f"worker-{auth}.log")
            await asyncio.to_thread(_wait_ready, [url])
            os.environ.pop("EDDY_WORKER_TOKEN_FILE", None)
            if auth:
                os.environ["EDDY_WORKER_TOKEN_FILE"] = str(tokens / "admin")
            await warm_workers(manifest, secret_dir, [url], [KEY])
            if auth:  # the sidecar process inherits this: the read token, as a pod's sidecar has it
                os.environ["EDDY_WORKER_TOKEN_FILE"] = str(tokens / "read")
            run = await asyncio.to_thread(_through_sidecar, procs, work, manifest, secret_dir,
                                          ["--worker", url], f"auth-{auth}", expect, None, None, None,
                                          (worker.pid,))
            os.environ.pop("EDDY_WORKER_TOKEN_FILE", None)
            out["with_tokens" if auth else "without_tokens"] = {
                "MB_s": round(run.mbps, 1), "cpu_s_per_gib": run.cpu_per_gib()}
            await asyncio.to_thread(procs.stop, worker)
    finally:
        await asyncio.to_thread(procs.close)
        await asyncio.to_thread(s3.stop)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar_auth", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.size_mib)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
