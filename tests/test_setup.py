"""Set-up: the packaged seed is the seed, the lock files are a resolution of pyproject.toml that this
environment was installed from, and the Makefile checks Python and rebuilds a half-made `.venv`.

`make lock-check` (run by `make test`) re-resolves pyproject.toml and diffs; the checks here need no
network and catch the same drift early: a pin changed in pyproject.toml but not in the lock.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.seed import BESIDE_CHECKOUT, PACKAGED_SEED, ROOT

# The seed scenario's files (../shared/seed) as recorded when they were packaged: the copy must be
# these bytes, on every machine, with or without ../shared beside the checkout.
SEED_SHA256 = {
    "README.md": "e0c1dd615f488d13b1326505cf7c1ddf1a27756e685813fa50828a9c1c5d4bd1",
    "dataload.yaml": "51ffcd5e754aea7127d049c1dc90b7b197ca7ce69c483f8b6861cb67ed11d4aa",
    "dataset.yaml": "2efd36c21941cd16d5b4ecd9d98d5cd952defb2f326324c1160286ebfc77cd91",
    "deployment-acs.yaml": "af83fdbc05f2667f30864f730b7be28b2c70b43f5a00ac53f8e3668f843750d2",
    "deployment-eci.yaml": "8d526b878168280c1a6f6f832f0dff111cd6a4038e14e891616d79c7be95c9d5",
    "secret.yaml": "3bf9a1ee9bb98cd4b8ea64f6d8d9ccf6c10134b70a557373d81deb20a2068b3e",
}
PROJECT = "eddy (pyproject.toml)"


# ------------------------------------------------------------------------------------------- the seed
def test_packaged_seed_is_the_seed_byte_for_byte() -> None:
    packaged = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in PACKAGED_SEED.iterdir()}
    assert packaged == SEED_SHA256
    if BESIDE_CHECKOUT.is_dir():  # the live seed, where the project's machines and CI keep it
        live = {p.name: p.read_bytes() for p in BESIDE_CHECKOUT.iterdir()}
        assert live == {p.name: p.read_bytes() for p in PACKAGED_SEED.iterdir()}


def test_the_package_ships_every_seed_file() -> None:
    """A wheel (the image, `pip install .`) carries the seed whole, tables included."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["eddy_cli"]
    shipped = {p.name for g in globs for p in (ROOT / "eddy_cli").glob(g)}
    assert shipped == set(SEED_SHA256)


def test_the_seeds_tables_are_packaged() -> None:
    text = (PACKAGED_SEED / "README.md").read_text()
    for header in ("UFS TOTAL SIZE", "MASTER PHASE", "DURATION"):
        assert header in text


def test_no_test_reads_a_path_of_one_machine() -> None:
    """Tests read the checkout, or a path given by a variable (EDDY_SEED_DIR), not the folders of the
    project's own machines (paths inside a sandbox container, such as /work/ready, are fine)."""
    pattern = re.compile(r"""/work/(shared|main)\b|["']\.\./shared""")
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "test_setup.py" or path == ROOT / "tests" / "support" / "seed.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------------------------------ the locks
@dataclass
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(name: str) -> tuple[str, list[Pin]]:
    """The uv header's command line and the pins of a lock file."""
    header, pins = "", []
    for line in (ROOT / name).read_text().splitlines():
        text = line.strip()
        if line.startswith("#    uv pip compile"):
            header = text.lstrip("# ")
        elif line and not line[0].isspace() and not line.startswith("#"):
            req = Requirement(text.rstrip(" \\"))
            (version,) = [s.version for s in req.specifier if s.operator == "=="]
            pins.append(Pin(canonicalize_name(req.name), version, req.marker))
        elif text.startswith("--hash=sha256:"):
            pins[-1].hashes.append(text.removeprefix("--hash=sha256:").rstrip(" \\"))
        elif text.startswith("# via") or text.startswith("#   "):
            via = text.removeprefix("# via").removeprefix("#").strip()
            if via:
                pins[-1].via.append(via)
    return header, pins


def declared(*extras: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        (version,) = [s.version for s in req.specifier if s.operator == "=="]
        out[canonicalize_name(req.name)] = version
    return out


def test_the_locks_pin_exactly_what_pyproject_pins() -> None:
    for lock, extras in (("requirements.lock", ()), ("requirements-dev.lock", ("dev", "sandbox"))):
        header, pins = read_lock(lock)
        direct = {p.name: p.version for p in pins if PROJECT in p.via}
        assert direct == declared(*extras), f"{lock} is stale: run make lock"
        assert f"-o {lock}" in header and "--generate-hashes" in header and "--exclude-newer" in header
        assert all(p.hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in p.hashes) for p in pins)


def test_runtime_and_dev_locks_agree() -> None:
    runtime_header, runtime = read_lock("requirements.lock")
    dev_header, dev = read_lock("requirements-dev.lock")
    dev_versions = {(p.name, p.version) for p in dev}
    assert {(p.name, p.version) for p in runtime} <= dev_versions
    assert "--extra dev" in dev_header and "-c requirements.lock" in dev_header
    date = re.compile(r"--exclude-newer (\S+)")
    assert date.findall(runtime_header) == date.findall(dev_header)  # one resolution date


def test_this_environment_is_the_dev_lock() -> None:
    """`make` installed the dev lock here: every pin that applies to this interpreter, at its version."""
    _, pins = read_lock("requirements-dev.lock")
    wrong = []
    for pin in pins:
        if not pin.applies():
            continue
        try:
            have = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            have = "missing"
        if have != pin.version:
            wrong.append(f"{pin.name}: locked {pin.version}, installed {have}")
    assert not wrong, "run make venv:\n" + "\n".join(wrong)


def test_the_tools_lock_pins_the_kubectl_wheel_by_hash() -> None:
    found = re.search(r"^KUBECTL_PIN := (\S+)==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "Makefile names no KUBECTL_PIN"
    header, pins = read_lock("requirements-tools.lock")
    assert [(p.name, p.version) for p in pins] == [(canonicalize_name(found[1]), found[2])]
    assert pins[0].hashes and "--no-deps" in header and "-o requirements-tools.lock" in header


def test_make_test_checks_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*lock-check", makefile, re.MULTILINE)
    assert "--require-hashes -r $(DEV_LOCK)" in makefile


# ------------------------------------------------------------------------------------ the Makefile
def make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True,
                          text=True, timeout=240, check=False, env=env)


def test_an_old_python_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\ncase "$*" in *platform*) echo 3.9.2 ;; *) exit 1 ;; esac\n')
    old.chmod(0o755)
    result = make("python", f"PYTHON={old}")
    assert result.returncode != 0
    assert f"Eddy needs Python >= 3.11, but {old} is 3.9.2." in result.stdout, result.stdout + result.stderr


def test_a_half_made_venv_is_made_anew(tmp_path: Path) -> None:
    """What a failed `python3 -m venv` leaves (no pip) is rebuilt, not reported missing forever."""
    venv = tmp_path / "venv"
    base = f"{sys.base_prefix}/bin/python3"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], timeout=60, check=True)
    result = make("venv-base", f"VENV={venv}", f"PYTHON={base}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "half made" in result.stdout
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert pip.returncode == 0 and str(venv) in pip.stdout, pip.stdout + pip.stderr
    again = make("venv-base", f"VENV={venv}", f"PYTHON={base}")
    assert again.returncode == 0 and "half made" not in again.stdout  # a good one is kept
