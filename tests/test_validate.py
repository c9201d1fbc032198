"""`eddy validate -f FILE...`: exit 0 for good manifests, else one line per error (file, object, field)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eddy_cli.main import main
from tests.support.seed import SEED

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
EDDY = Path(sys.executable).parent / "eddy"
FILL = {
    "<oss_bucket>": "my-bucket",
    "<bucket_dir>": "serverless",
    "<oss_endpoint>": "oss-cn-hangzhou.aliyuncs.com",
}


def filled_seed(tmp_path: Path) -> Path:
    text = (SEED / "dataset.yaml").read_text()
    for placeholder, value in FILL.items():
        text = text.replace(placeholder, value)
    out = tmp_path / "dataset.yaml"
    out.write_text(text)
    return out


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDDY), "validate", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_filled_seed_passes_the_real_cli(tmp_path: Path) -> None:
    result = run_cli("-f", filled_seed(tmp_path), "-f", SEED / "dataload.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3 object(s) valid"
    assert result.stderr == ""


def test_plain_text_credentials_pass_with_a_warning_that_never_shows_them(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(filled_seed(tmp_path).read_text()))
    dataset = next(d for d in docs if d["kind"] == "Dataset")
    mount = dataset["spec"]["mounts"][0]
    mount.pop("encryptOptions", None)
    mount.setdefault("options", {}).update(
        {"fs.oss.accessKeyId": "AKIDplain123", "fs.oss.accessKeySecret": "s3cr3t-plain-value"}
    )
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = run_cli("-f", path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "spec.mounts[0].options[fs.oss.accessKeySecret]" in warnings[1] and "encryptOptions" in warnings[1]
    assert "s3cr3t-plain-value" not in result.stdout + result.stderr
    assert "AKIDplain123" not in result.stdout + result.stderr


def test_the_unfilled_seed_fails_the_real_cli_naming_file_object_and_field() -> None:
    result = run_cli("-f", SEED / "dataset.yaml")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    prefix = f"{SEED / 'dataset.yaml'}: Dataset/serverless-data: "
    assert lines[0].startswith(
        prefix + 'spec.mounts[0].mountPoint: "oss://<oss_bucket>/<bucket_dir>" is a placeholder'
    )
    assert lines[1].startswith(prefix + "spec.mounts[0].options[fs.oss.endpoint]: ")
    assert lines[-1] == "2 error(s)" and len(lines) == 3


def test_one_line_per_error_and_other_kinds_are_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "typos.yaml"
    assert main(["validate", "-f", str(path)]) == 1
    out, err = capsys.readouterr()
    level = f"{path}: JindoRuntime/typo-runtime: spec.tieredstore.levels[0]"
    assert err.splitlines() == [
        f"{level}.quotaa: unknown field (did you mean quota?)",
        f"{level}.quota: is required (a quantity such as 5Gi), or quotaList",
        f'{path}: DataLoad/typo-load: spec.policy: "Daily" is not one of Once, Cron, OnEvent',
        "3 error(s)",
    ]
    assert f"note: {path}: ConfigMap/not-fluid: not a Fluid kind, skipped" in out


def test_ignored_fluid_fields_are_noted_not_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(DATA / "full.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    note = f"note: {DATA / 'full.yaml'}: JindoRuntime/imagenet: spec.master: accepted, not acted on by Eddy"
    assert note in out
    assert out.strip().splitlines()[-1] == "3 object(s) valid"


def test_unreadable_and_malformed_files_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Dataset\nspec: [unclosed\n")
    missing = tmp_path / "missing.yaml"
    good = filled_seed(tmp_path)
    assert main(["validate", "-f", str(missing), "-f", str(broken), "-f", str(good)]) == 1
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 3 and lines[-1] == "2 error(s)"
    assert lines[0].startswith(f"{missing}: cannot read")
    assert lines[1].startswith(f"{broken}: line ") and "not valid YAML" in lines[1]


def test_json_lists_and_stdin(tmp_path: Path) -> None:
    listing = tmp_path / "list.json"
    listing.write_text(
        '{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "data.fluid.io/v1alpha1", '
        '"kind": "DataLoad", "metadata": {"name": "x"}, "spec": {"dataset": {"name": "D"}}}]}'
    )
    result = run_cli("-f", listing)
    assert result.returncode == 1
    assert (
        result.stderr.splitlines()[0]
        == f'{listing}: DataLoad/x: spec.dataset.name: "D" must be a lowercase DNS name'
    )
    piped = subprocess.run(
        [str(EDDY), "validate", "-f", "-"],
        input=(SEED / "dataload.yaml").read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0 and "1 object(s) valid" in piped.stdout


def test_fluid_kinds_eddy_does_not_serve_and_unknown_kinds_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kinds.yaml"
    docs = [
        {"apiVersion": "data.fluid.io/v1alpha1", "kind": "AlluxioRuntime", "metadata": {"name": "a"}},
        {"apiVersion": "data.fluid.io/v1alpha1", "kind": "DataProcess", "metadata": {"name": "p"}},
        {"apiVersion": "data.fluid.io/v1alpha1", "kind": "Datasett", "metadata": {"name": "t"}},
        {"apiVersion": "v1", "metadata": {"name": "no-kind"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
    ]
    path.write_text(yaml.safe_dump_all(docs))
    assert main(["validate", "-f", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    not_served = "is a Fluid kind Eddy does not serve"
    assert lines[0].startswith(f"{path}: AlluxioRuntime/a: AlluxioRuntime {not_served}")
    assert lines[1].startswith(f"{path}: DataProcess/p: DataProcess is a Fluid kind Eddy does not serve")
    assert lines[2].startswith(f"{path}: Datasett/t: Datasett is not a kind of data.fluid.io")
    assert lines[3] == f"{path}: document #4: no kind"
    assert lines[-1] == "4 error(s)"
    assert f"note: {path}: ConfigMap/c: not a Fluid kind, skipped" in out


def test_read_write_access_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = filled_seed(tmp_path)
    docs = [d for d in yaml.safe_load_all(good.read_text()) if d]
    docs[0]["spec"]["accessModes"] = ["ReadWriteMany"]
    good.write_text(yaml.safe_dump_all(docs))
    assert main(["validate", "-f", str(good)]) == 0
    out, _ = capsys.readouterr()
    assert "spec.accessModes: ReadWriteMany: Eddy's cache is read-only; writes fail with EROFS" in out
