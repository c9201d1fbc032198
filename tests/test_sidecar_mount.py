"""The sidecar end to end: `eddy sidecar mount` subprocesses over the real S3 server, real readers.

One module-scoped bucket holds a tree of 200 files (nested directories, empty files, a directory
marker, a 256 MiB file and a fio verify file); the source tree on local disk is the reference.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.sidecar_bench import upload_multipart
from sidecar.mounts import wait_for_mount
from tests.support.fuse import require_fuse

MiB = 1024 * 1024
BIG = 256 * MiB
EDDY = [str(Path(sys.executable).with_name("eddy"))]
FIO_SIZE = 24 * MiB
MANY = 1000


# ------------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def force_unmount(path: Path) -> None:
    for cmd in (["fusermount3", "-u"], ["fusermount3", "-uz"]):
        if not is_mounted(path):
            return
        subprocess.run([*cmd, str(path)], capture_output=True, check=False)


def big_content(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    chunk = rng.randbytes(MiB)
    return b"".join((i.to_bytes(8, "big") * 2 + chunk[16:]) for i in range(size // MiB))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


class Sidecar:
    """One `eddy sidecar mount` subprocess; always unmounted in `stop()`."""

    def __init__(self, work: Path, manifest: Path, secret_dir: Path, *extra: str, name: str = "sc") -> None:
        self.mountpoint = work / f"mnt-{name}"
        self.mountpoint.mkdir(exist_ok=True)
        self.log = work / f"{name}.log"
        self.health_port = free_port()
        self.args = [*EDDY, "--log-level", "INFO", "sidecar", "mount", "-f", str(manifest),
                     "--mountpoint", str(self.mountpoint), "--secret-dir", str(secret_dir),
                     "--health-port", str(self.health_port), "--listing-ttl", "0", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 40) -> Sidecar:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        # the check-mount logic in-process (the CLI itself is tested once, below): saves a start-up
        why = wait_for_mount(self.mountpoint, timeout)
        if why is not None:
            self.stop()
            pytest.fail(f"mount did not come up: {why}\n{self.log.read_text()[-3000:]}")
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        elif self.proc is not None:
            code = self.proc.returncode
        force_unmount(self.mountpoint)
        return code


class Worker:
    def __init__(self, work: Path, manifest: Path, secret_dir: Path, name: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"{name}.log"
        tier = Path("/dev/shm") / f"eddy-test-sc-{os.getpid()}-{name}"
        self.tier = tier
        args = [*EDDY, "worker", "-f", str(manifest), "--host", "127.0.0.1", "--port", str(self.port),
                "--secret-dir", str(secret_dir), "--level-path", f"MEM={tier}", *extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.tier, ignore_errors=True)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fuse_ok() -> None:
    require_fuse()


def tree_plan() -> dict[str, bytes]:
    rng = random.Random(42)
    files: dict[str, bytes] = {}
    for i in range(190):
        depth = i % 4
        folder = "/".join(f"d{(i + j) % 3}" for j in range(depth))
        name = f"{folder}/f{i:03d}.bin" if folder else f"f{i:03d}.bin"
        size = 0 if i % 17 == 0 else rng.choice([1, 100, 4095, 4096, 65537, 300_000, 1_500_000])
        files[name] = rng.randbytes(size)
    for i in range(8):
        files[f"empties/e{i}"] = b""
    files["big/huge.bin"] = big_content(BIG, seed=1)
    return files


@pytest.fixture(scope="module")
def dataset(s3_server: Any, tmp_path_factory: pytest.TempPathFactory, fuse_ok: None) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("sidecar")
    bucket = f"sc{os.getpid()}"
    s3_server.create_bucket(bucket)
    src = work / "src"
    files = tree_plan()
    # fio writes its own verify format; the file is then uploaded like any other.
    fio_dir = work / "fio"
    fio_dir.mkdir()
    subprocess.run(["fio", "--name=mk", f"--filename={fio_dir / 'verify.dat'}", "--rw=write", "--bs=1M",
                    f"--size={FIO_SIZE}", "--verify=crc32c", "--do_verify=0", "--ioengine=psync"],
                   capture_output=True, check=True, cwd=fio_dir)
    files["fio/verify.dat"] = (fio_dir / "verify.dat").read_bytes()
    assert len(files) == 200
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    small = [(f"tree/{k}", v) for k, v in files.items() if len(v) < 64 * MiB]
    s3_server.put_objects(bucket, small, concurrency=8)
    upload_multipart(s3_server.client, bucket, "tree/big/huge.bin", files["big/huge.bin"], part=16 * MiB)
    s3_server.put_object(bucket, "tree/marker-only/", b"")
    (src / "marker-only").mkdir()
    # a large directory (readdir offsets across many getdents calls); kept out of the copied tree
    s3_server.put_objects(bucket, [(f"many/n{i:05d}", b"") for i in range(MANY)], concurrency=16)
    manifest = work / "dataset.yaml"
    manifest.write_text(yaml.safe_dump(s3_server.dataset_doc(bucket, "tree", name="scdata")))
    secret_dir = work / "secrets"
    s3_server.write_secret_dir(secret_dir)
    return {"work": work, "src": src, "files": files, "manifest": manifest, "secrets": secret_dir,
            "bucket": bucket}


@pytest.fixture(scope="module")
def cold_mount(dataset: dict[str, Any]) -> Iterator[Sidecar]:
    sc = Sidecar(dataset["work"], dataset["manifest"], dataset["secrets"], "--no-workers", name="cold")
    sc.start()
    try:
        yield sc
    finally:
        sc.stop()


# ------------------------------------------------------------------------------------------ tests
def test_cp_r_tree_then_sha256sum_matches(cold_mount: Sidecar, dataset: dict[str, Any]) -> None:
    dest = dataset["work"] / "copy"
    subprocess.run(["cp", "-r", f"{cold_mount.mountpoint}/.", str(dest)], check=True, timeout=120)
    src: Path = dataset["src"]
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert len(names) == 200
    out_src = subprocess.run(["sha256sum", *names], cwd=src, capture_output=True, text=True, check=True)
    out_dst = subprocess.run(["sha256sum", *names], cwd=dest, capture_output=True, text=True, check=True)
    assert out_dst.stdout == out_src.stdout
    assert (dest / "marker-only").is_dir() and not any((dest / "marker-only").iterdir())
    assert cold_mount.metric("eddy_sidecar_fetched_bytes_total", source="store") >= BIG
    assert cold_mount.metric("eddy_sidecar_fetched_bytes_total", source="worker") == 0
    # cp -r opens a directory's files in order: the next small files were fetched ahead of it
    assert cold_mount.metric("eddy_sidecar_walkahead_blocks_total") > 0
    shutil.rmtree(dest)


def test_listdir_and_stat(cold_mount: Sidecar, dataset: dict[str, Any]) -> None:
    mnt, src = cold_mount.mountpoint, dataset["src"]
    for folder in [src, *[p for p in src.rglob("*") if p.is_dir()]]:
        rel = folder.relative_to(src)
        assert sorted(os.listdir(mnt / rel)) == sorted(os.listdir(folder)), rel
    for key, data in list(dataset["files"].items())[::7]:
        st = os.stat(mnt / key)
        assert st.st_size == len(data) and st.st_mode & 0o777 == 0o444 and not st.st_mode & 0o040000
    st = os.stat(mnt / "big")
    assert st.st_mode & 0o040000 and st.st_mode & 0o777 == 0o555
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "no-such-file")


def test_large_directory_lists_every_entry_once(dataset: dict[str, Any]) -> None:
    manifest = dataset["work"] / "many.yaml"
    doc = yaml.safe_load(dataset["manifest"].read_text())
    doc["spec"]["mounts"][0]["mountPoint"] = f"oss://{dataset['bucket']}/many"
    manifest.write_text(yaml.safe_dump(doc))
    sc = Sidecar(dataset["work"], manifest, dataset["secrets"], "--no-workers", name="many")
    try:
        sc.start()
        names = os.listdir(sc.mountpoint)  # several getdents64 calls, each resuming at an offset
        assert len(names) == MANY and sorted(names) == [f"n{i:05d}" for i in range(MANY)]
        with os.scandir(sc.mountpoint) as it:
            assert sum(1 for e in it if e.is_file()) == MANY
    finally:
        sc.stop()


def test_random_preads_match_source(cold_mount: Sidecar, dataset: dict[str, Any]) -> None:
    data: bytes = dataset["files"]["big/huge.bin"]
    rng = random.Random(3)
    fd = os.open(cold_mount.mountpoint / "big/huge.bin", os.O_RDONLY)
    try:
        for _ in range(150):
            size = rng.choice([1, 4096, 65536, 1_000_000, 3 * MiB])
            off = rng.randrange(0, BIG - 1)
            assert os.pread(fd, size, off) == data[off : off + size]
        assert os.pread(fd, 100, BIG - 10) == data[-10:]
        assert os.pread(fd, 100, BIG + 10) == b""
    finally:
        os.close(fd)


def test_eight_concurrent_readers(cold_mount: Sidecar, dataset: dict[str, Any]) -> None:
    files: dict[str, bytes] = dataset["files"]
    keys = ["big/huge.bin", "fio/verify.dat", *[k for k, v in files.items() if len(v) > 1_000_000][:6]]

    def whole(key: str) -> bool:
        return sha256(cold_mount.mountpoint / key) == hashlib.sha256(files[key]).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(whole, keys[:8]))
        # and 8 readers of one file at once share fetches
        assert all(pool.map(whole, ["fio/verify.dat"] * 8))


def test_fio_sequential_read_verifies(cold_mount: Sidecar, dataset: dict[str, Any]) -> None:
    proc = subprocess.run(
        ["fio", "--name=chk", f"--filename={cold_mount.mountpoint / 'fio/verify.dat'}", "--rw=read",
         "--bs=1M", f"--size={FIO_SIZE}", "--verify=crc32c", "--verify_only", "--readonly",
         "--ioengine=psync", "--numjobs=2"],
        capture_output=True, text=True, timeout=60, check=False, cwd=dataset["work"],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "err= 0" in proc.stdout and "verify failed" not in proc.stdout + proc.stderr


def test_writes_fail_with_erofs(cold_mount: Sidecar) -> None:
    mnt = cold_mount.mountpoint
    attempts = [
        lambda: os.open(mnt / "f000.bin", os.O_WRONLY),
        lambda: os.open(mnt / "f000.bin", os.O_RDWR),
        lambda: os.open(mnt / "new-file", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.unlink(mnt / "f000.bin"),
        lambda: os.rename(mnt / "f000.bin", mnt / "moved.bin"),
        lambda: os.mkdir(mnt / "newdir"),
        lambda: os.rmdir(mnt / "empties"),
        lambda: os.truncate(mnt / "f000.bin", 0),
        lambda: os.chmod(mnt / "f000.bin", 0o777),
        lambda: os.symlink("f000.bin", mnt / "link"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, info.value


def test_health_endpoints_and_check_mount(cold_mount: Sidecar, dataset: dict[str, Any]) -> None:
    assert cold_mount.get("/readyz") == (200, "ready\n")
    assert cold_mount.get("/healthz")[0] == 200
    text = cold_mount.get("/metrics")[1]
    for name in ("eddy_sidecar_fetched_bytes_total", "eddy_sidecar_read_seconds_bucket",
                 "eddy_sidecar_fallbacks_total", "eddy_sidecar_files"):
        assert name in text
    assert cold_mount.metric("eddy_sidecar_files") == 200
    ok = subprocess.run([*EDDY, "sidecar", "check-mount", str(cold_mount.mountpoint), "--timeout", "5"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    plain = dataset["work"] / "not-a-mount"
    plain.mkdir(exist_ok=True)
    bad = subprocess.run([*EDDY, "sidecar", "check-mount", str(plain), "--timeout", "0.5"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "not a FUSE mount" in bad.stderr


def test_worker_killed_mid_read_completes_from_store(dataset: dict[str, Any]) -> None:
    work = dataset["work"]
    worker = Worker(work, dataset["manifest"], dataset["secrets"], "w-kill")
    sc = Sidecar(work, dataset["manifest"], dataset["secrets"], "--worker", worker.url,
                 "--worker-timeout", "5", name="kill")
    try:
        sc.start()
        data: bytes = dataset["files"]["big/huge.bin"]
        h = hashlib.sha256()
        with open(sc.mountpoint / "big/huge.bin", "rb") as f:
            for i in range(BIG // MiB):
                if i == 24:
                    assert sc.metric("eddy_sidecar_fetched_bytes_total", source="worker") > 0
                    worker.kill()
                h.update(f.read(MiB))
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        assert sc.metric("eddy_sidecar_fetched_bytes_total", source="store") > 0
        assert sum(sc.metric("eddy_sidecar_fallbacks_total", reason=r)
                   for r in ("unavailable", "connection", "timeout", "worker_down")) > 0
    finally:
        sc.stop()
        worker.kill()


def test_object_replaced_during_read_never_mixes(s3_server: Any, dataset: dict[str, Any]) -> None:
    work, bucket = dataset["work"], dataset["bucket"]
    old, new = big_content(16 * MiB, seed=5), big_content(16 * MiB, seed=6)
    s3_server.put_object(bucket, "swap/obj.bin", old)
    manifest = work / "swap.yaml"
    manifest.write_text(yaml.safe_dump(s3_server.dataset_doc(bucket, "swap", name="swap")))
    sc = Sidecar(work, manifest, dataset["secrets"], "--no-workers", "--block-size", str(MiB),
                 "--cache-mib", "2", "--readahead-mib", "0", "--direct-io", name="swap")
    try:
        sc.start()
        path = sc.mountpoint / "obj.bin"
        got = b""
        error: OSError | None = None
        with open(path, "rb", buffering=0) as f:
            got += f.read(MiB)
            s3_server.put_object(bucket, "swap/obj.bin", new)
            try:
                while chunk := f.read(MiB):
                    got += chunk
            except OSError as exc:
                error = exc
        assert got == old[: len(got)], "bytes of the new version were mixed into the old one"
        assert error is not None and error.errno == errno.EIO
        assert sc.metric("eddy_sidecar_changed_objects_total") >= 1
        # the namespace entry was refreshed: a new open reads the new version, whole
        time.sleep(1.1)  # attributes cached by the kernel expire (attr_timeout 1 s)
        assert path.read_bytes() == new
    finally:
        sc.stop()


def test_sigterm_unmounts_and_stale_mount_is_cleaned(dataset: dict[str, Any]) -> None:
    work = dataset["work"]
    sc = Sidecar(work, dataset["manifest"], dataset["secrets"], "--no-workers", name="term")
    sc.start()
    try:
        # a reader streaming when SIGTERM arrives: bytes it got are right; the sidecar exits 0, unmounted
        data: bytes = dataset["files"]["big/huge.bin"]
        got = bytearray()
        fd = os.open(sc.mountpoint / "big/huge.bin", os.O_RDONLY)
        error: OSError | None = None
        try:
            got += os.read(fd, MiB)
            assert sc.proc is not None
            sc.proc.send_signal(signal.SIGTERM)
            while len(got) < BIG and (chunk := os.read(fd, MiB)):
                got += chunk
        except OSError as exc:
            error = exc
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        assert bytes(got) == data[: len(got)]
        assert error is None or error.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO), error
        assert sc.proc.wait(20) == 0, sc.log.read_text()[-3000:]
        assert not is_mounted(sc.mountpoint), sc.log.read_text()[-3000:]
        # a crash (SIGKILL) leaves a dead mount behind; the next sidecar removes it and mounts
        sc.start()
        assert sc.proc is not None
        sc.proc.kill()
        sc.proc.wait(10)
        assert is_mounted(sc.mountpoint)
        with pytest.raises(OSError) as info:
            os.listdir(sc.mountpoint)
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED), info.value
        sc.start()
        assert "f000.bin" in os.listdir(sc.mountpoint)
    finally:
        code = sc.stop()
        assert code in (0, None), sc.log.read_text()[-3000:]
    assert not is_mounted(sc.mountpoint)


def test_stop_annotation_in_podinfo_unmounts_and_exits_zero(dataset: dict[str, Any]) -> None:
    """Classic sidecars: the controller's pod annotation, as the kubelet writes it, ends the sidecar."""
    work = dataset["work"]
    podinfo = work / "podinfo-annotations"
    podinfo.write_text('kubernetes.io/config.source="api"\neddy.io/platform="eci"\n')
    sc = Sidecar(work, dataset["manifest"], dataset["secrets"], "--no-workers", "--stop-file", str(podinfo),
                 name="stopfile")
    sc.start()
    try:
        assert sc.proc is not None
        assert "f000.bin" in os.listdir(sc.mountpoint)
        time.sleep(1.5)  # a few polls of the file without the annotation: still serving
        assert sc.proc.poll() is None and is_mounted(sc.mountpoint)
        # the kubelet replaces the file atomically (a symlink swap); a rename does the same here
        fresh = work / "podinfo-annotations.new"
        fresh.write_text('eddy.fluid.io/sidecar-stop="true"\neddy.io/platform="eci"\n')
        fresh.replace(podinfo)
        assert sc.proc.wait(20) == 0, sc.log.read_text()[-3000:]
        assert not is_mounted(sc.mountpoint)
        assert "sidecar-stop annotation asks the sidecar to stop" in sc.log.read_text()
    finally:
        sc.stop()
