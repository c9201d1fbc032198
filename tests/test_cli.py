"""The `eddy` command as a user meets it: one line on stderr and a documented exit code for every user
error (never a traceback unless --debug), global options before or after the subcommand, --version,
JSON logs, and a probe that loads only what it needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def eddy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eddy_cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    binary = root / "binary.yaml"
    binary.write_bytes(b"\x00\x01\xffnot text\xfe")
    unknown = root / "unknown.yaml"
    unknown.write_text("apiVersion: example.io/v1\nkind: Widget\nmetadata: {name: w}\n")
    bad_quantity = root / "bad-quantity.yaml"
    bad_quantity.write_text(
        "apiVersion: data.fluid.io/v1alpha1\nkind: JindoRuntime\nmetadata: {name: r}\nspec:\n"
        "  replicas: 1\n  tieredstore:\n    levels:\n      - {mediumtype: MEM, path: /dev/shm, quota: 5Gx,"
        " high: '0.95', low: '0.7'}\n")
    kubeconfig = root / "kubeconfig"  # one context, "a", whose server is never reached
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
        "clusters: [{name: a, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: a, user: {token: t}}]\ncontexts: [{name: a, context: {cluster: a, user: a}}]\n")
    return {"missing": str(root / "missing.yaml"), "binary": str(binary), "unknown": str(unknown),
            "bad_quantity": str(bad_quantity), "kubeconfig": str(root / "no-kubeconfig"),
            "one_context": str(kubeconfig)}


# (argv, exit code): every part's error paths; file arguments are keys of `files`.
CASES = [
    (["validate", "-f", "{missing}"], 1),
    (["validate", "--filename", "{binary}"], 1),
    (["validate", "-f", "{unknown}"], 1),
    (["validate", "--file", "{bad_quantity}"], 1),
    (["controller", "--kubeconfig", "{kubeconfig}", "--metrics-port", "0"], 1),
    (["controller", "--kubeconfig", "{one_context}", "--context", "nope", "--metrics-port", "0"], 1),
    (["preloader", "--kubeconfig", "{kubeconfig}"], 1),
    (["preloader", "--kubeconfig", "{one_context}", "--context", "nope"], 1),
    (["webhook", "--kubeconfig", "{kubeconfig}"], 1),
    (["webhook", "--kubeconfig", "{one_context}", "--context", "nope"], 1),
    (["webhook", "--local", "-f", "{missing}", "--cert-dir", "{kubeconfig}"], 2),
    (["webhook", "--local", "--filename", "{binary}", "--cert-dir", "{kubeconfig}"], 2),
    (["worker", "-f", "{missing}"], 2),
    (["worker", "--filename", "{binary}"], 2),
    (["worker", "--file", "{missing}"], 2),
    (["sidecar", "mount", "-f", "{missing}", "--mountpoint", "{kubeconfig}"], 2),
    (["sidecar", "mount", "--file", "{missing}", "--mountpoint", "{kubeconfig}"], 2),
    (["sidecar", "mount", "--filename", "{binary}", "--mountpoint", "{kubeconfig}"], 2),
    (["preload", "-f", "{missing}"], 2),
    (["preload", "--filename", "{binary}"], 2),
    (["demo", "--size", "5GB"], 1),
]


@pytest.mark.parametrize(("argv", "code"), CASES, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in
                                                         enumerate(CASES)])
def test_user_errors_are_one_line_without_traceback(
    files: dict[str, str], argv: list[str], code: int
) -> None:
    result = eddy(*[a.format(**files) for a in argv])
    out = result.stderr + result.stdout
    assert result.returncode == code, out
    assert "Traceback" not in out and not result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.endswith("error(s)")]
    assert len(lines) == 1, out  # `eddy validate` adds its count line, nothing else does


@pytest.mark.parametrize("command", [["validate"], ["webhook"], ["worker"], ["sidecar", "mount"],
                                     ["preload"]])
def test_manifest_files_are_given_with_kubectls_flag(command: list[str]) -> None:
    """`-f/--filename FILE`, as kubectl names it, in every subcommand that reads manifests; the former
    `--file` is still accepted (the error cases above use it) but no longer shown."""
    result = eddy(*command, "--help")
    assert result.returncode == 0 and "-f FILE, --filename FILE" in result.stdout
    assert "--file " not in result.stdout and "--file," not in result.stdout


def test_kube_flags_are_the_same_everywhere() -> None:
    for command in ("controller", "preloader", "webhook"):
        text = eddy(command, "--help").stdout
        assert all(flag in text for flag in ("--kubeconfig FILE", "--context NAME", "--kube-url URL")), text


def test_debug_shows_the_traceback(files: dict[str, str]) -> None:
    result = eddy("demo", "--size", "5GB", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_version_and_global_options_anywhere() -> None:
    assert eddy("--version").stdout.startswith("eddy ")
    assert eddy("validate", "--log-level", "WARNING", "--help").returncode == 0
    assert eddy("--log-level", "WARNING", "validate", "--help").returncode == 0


def test_json_logs(files: dict[str, str]) -> None:
    result = eddy("--log-format", "json", "controller", "--kubeconfig", files["kubeconfig"],
                  "--metrics-port", "0", "--log-level", "DEBUG")
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert logs and all({"time", "level", "logger", "message"} <= set(doc) for doc in logs)


def test_a_probe_imports_no_client_library() -> None:
    """The kubelet runs `eddy sidecar check-mount` every second: it must not load aiohttp's peers."""
    code = ("import sys; from eddy_cli.main import main; rc = main(['sidecar', 'check-mount', '/proc', "
            "'--timeout', '0']); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiobotocore', 'botocore', 'kubernetes_asyncio')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
