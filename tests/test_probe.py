"""The sidecar's startup probe (`eddy sidecar check-mount`) stays cheap: it imports no HTTP, S3 or
Kubernetes client, stays under 30 MB, and its CPU cost does not regress (issue 14 §4 sets 0.1 CPU-s;
the figures over many runs, against that budget, are `python -m bench --only probe`)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench.probe_bench import RSS_BUDGET_MB, measure
from tests.support.fuse import fuse_support

UNLOADED_FLOOR_S = 0.025
REGRESSION_CPU_S = 0.15
HEAVY = ("aiohttp", "aiobotocore", "botocore", "kubernetes_asyncio", "yaml", "croniter",
         "prometheus_client", "pyfuse3", "jsonschema")


def loaded_modules(path: str) -> set[str]:
    """The modules a check-mount run has loaded when it exits (from inside that process)."""
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
            "from eddy_cli.main import main\n"
            f"sys.argv = ['eddy', 'sidecar', 'check-mount', {path!r}, '--timeout', '0']\n"
            "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr  # not a mount: the probe says so and exits 1
    last = done.stderr.strip().splitlines()[-1]
    return set(json.loads(last))


def test_check_mount_imports_no_client_library(tmp_path: object) -> None:
    modules = loaded_modules(str(tmp_path))
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"check-mount loads {heavy}"
    assert "sidecar.mounts" in modules  # it did run the check


def test_check_mount_costs_under_budget_on_a_real_mount() -> None:
    support = fuse_support()
    assert support, f"the probe benchmark needs a FUSE mount: {support.reason}"
    from bench.probe_bench import probe_costs

    entry = probe_costs(5)
    assert entry["failed_runs"] == 0, entry
    # The budget is 0.1 CPU-s (the benchmark reports against it). Measured here, in the dev venv
    # on 2 shared cores: median 0.09-0.11. What is left above Python's own ~0.025 s is eddy_cli/main.py
    # importing asyncio and importlib.metadata (for --version) before any subcommand, and the editable
    # install's import finder (dev only). This guards against regressions with room for load: a client
    # library imported again would cost 0.3+ CPU-s.
    budget = REGRESSION_CPU_S * max(1.0, entry["python_floor_cpu_s"] / UNLOADED_FLOOR_S)
    assert entry["value"] < budget, entry
    assert entry["rss_mb_median"] < RSS_BUDGET_MB, entry


def test_measure_reports_each_run() -> None:
    cpu, rss, failed = measure([sys.executable, "-c", "raise SystemExit(3)"], 3)
    assert len(cpu) == len(rss) == 3 and failed == 3
    assert statistics.median(rss) > 1
