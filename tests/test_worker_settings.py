"""`eddy worker` flags, manifest files and the controller's config file → worker settings."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from eddy.config import build_config
from worker import cli
from worker.settings import SettingsError, build_settings

DATASET: dict[str, Any] = {
    "apiVersion": "data.fluid.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "serverless-data", "namespace": "team"},
    "spec": {"mounts": [{"mountPoint": "oss://bucket/dir", "name": "demo", "path": "/",
                         "options": {"fs.oss.endpoint": "http://127.0.0.1:1"}}]},
}
RUNTIME: dict[str, Any] = {
    "apiVersion": "data.fluid.io/v1alpha1",
    "kind": "JindoRuntime",
    "metadata": {"name": "serverless-data", "namespace": "team"},
    "spec": {"replicas": 2, "tieredstore": {"levels": [
        {"mediumtype": "SSD", "path": "/mnt/ssd", "quota": "10Gi", "high": "0.9", "low": "0.6"},
        {"mediumtype": "MEM", "path": "/dev/shm", "quota": "5Gi", "high": "0.95", "low": "0.7"},
    ]}},
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["worker", *argv])


def test_local_mode_from_manifests(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump_all([DATASET, RUNTIME]))
    settings, address = build_settings(parse(["-f", str(path), "--level-path", "MEM=/dev/shm/w0",
                                              "--level-quota", "SSD=1Gi", "--secret-dir", str(tmp_path)]))
    assert address == ("127.0.0.1", 8080)
    assert settings.dataset.meta.key == "team/serverless-data"
    assert [lvl.mediumtype for lvl in settings.levels] == ["MEM", "SSD"]  # ordered MEM -> SSD
    mem, ssd = settings.levels
    assert mem.path == Path("/dev/shm/w0") and mem.quota == 5 << 30
    assert ssd.path == Path("/mnt/ssd/eddy/team/serverless-data") and ssd.quota == 1 << 30
    assert (ssd.high, ssd.low) == (0.9, 0.6)
    assert settings.meta_dir == ssd.path / "meta"
    assert settings.secrets is not None


def test_cluster_mode_from_config_file(tmp_path: Path) -> None:
    config = build_config(DATASET, RUNTIME, worker_port=9100)
    path = tmp_path / "eddy.yaml"
    config.write(path)
    settings, address = build_settings(parse(["--config", str(path)]))
    assert address == ("0.0.0.0", 9100)
    assert settings.levels[0].path == Path("/dev/shm/eddy/team/serverless-data")
    settings, address = build_settings(parse(["--config", str(path), "--host", "127.0.0.1", "--port", "1"]))
    assert address == ("127.0.0.1", 1)


def test_several_disks_in_one_level_are_one_store_each(tmp_path: Path) -> None:
    runtime = copy.deepcopy(RUNTIME)
    runtime["spec"]["tieredstore"]["levels"] = [
        {"mediumtype": "MEM", "path": "/dev/shm", "quota": "1Gi", "high": "0.95", "low": "0.7"},
        {"mediumtype": "SSD", "path": "/mnt/a,/mnt/b", "quotaList": "10Gi,20Gi", "high": "0.9", "low": "0.6"},
    ]
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump_all([DATASET, runtime]))
    settings, _ = build_settings(parse(["-f", str(path), "--secret-dir", str(tmp_path)]))
    assert [(lvl.mediumtype, str(lvl.path), lvl.quota) for lvl in settings.levels] == [
        ("MEM", "/dev/shm/eddy/team/serverless-data", 1 << 30),
        ("SSD", "/mnt/a/eddy/team/serverless-data", 10 << 30),
        ("SSD.1", "/mnt/b/eddy/team/serverless-data", 20 << 30),
    ]
    assert all((lvl.high, lvl.low) == (0.9, 0.6) for lvl in settings.levels[1:])


def test_no_runtime_gives_one_mem_level(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(DATASET))
    settings, _ = build_settings(parse(["-f", str(path), "--level-quota", "MEM=64Mi"]))
    assert len(settings.levels) == 1 and settings.levels[0].quota == 64 << 20
    assert settings.meta_dir is None  # MEM only: meta blobs live in memory


def test_bad_flags_and_files(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    other = copy.deepcopy(DATASET)
    other["metadata"]["name"] = "other"
    path.write_text(yaml.safe_dump_all([DATASET, other]))
    with pytest.raises(SettingsError, match="pick one with --dataset"):
        build_settings(parse(["-f", str(path)]))
    settings, _ = build_settings(parse(["-f", str(path), "--dataset", "other"]))
    assert settings.dataset.meta.name == "other"
    with pytest.raises(SettingsError, match="no Dataset"):
        build_settings(parse(["-f", str(path), "--dataset", "nope"]))
    with pytest.raises(SettingsError, match="MEDIUM=VALUE"):
        build_settings(parse(["-f", str(path), "--dataset", "other", "--level-path", "RAM=/x"]))
    with pytest.raises(SettingsError, match="does not have"):
        build_settings(parse(["-f", str(path), "--dataset", "other", "--level-path", "HDD=/x"]))
    with pytest.raises(SettingsError, match="no config file"):
        build_settings(parse(["--config", str(tmp_path / "missing.yaml")]))


async def test_cli_exits_2_with_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = await cli.run(parse(["--config", str(tmp_path / "missing.yaml")]))
    assert code == 2
    assert "no config file" in caplog.text
