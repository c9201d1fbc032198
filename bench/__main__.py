"""`python -m bench [--only NAME]`: run benchmarks and merge each entry into bench/results/latest.json.

Each benchmark is a module `bench/<name>_bench.py` with `async def run(args) -> dict`, returning the
entry DESIGN.md's contracts describe: metric, unit, value, ceiling (measured in the same run), ratio,
cores, plus its own figures. A benchmark reports; it never fails the build on a slow figure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = ("worker", "sidecar", "preload", "webhook", "e2e", "probe")
RESULTS = Path(__file__).parent / "results"
LATEST = RESULTS / "latest.json"


def merge_entry(name: str, entry: dict[str, Any], path: Path = LATEST) -> None:
    """Merge one benchmark's entry into the results file, keeping the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    entry.setdefault("cores", os.cpu_count() or 1)
    entry.setdefault("measured_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if entry.get("ceiling"):
        entry["ratio"] = round(float(entry["value"]) / float(entry["ceiling"]), 3)
    data[name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    names = [args.only] if args.only else list(BENCHMARKS)
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}_bench")
        print(f"== bench {name}", flush=True)
        load_before = os.getloadavg()[0]
        try:
            entry = asyncio.run(module.run(args))
        except Exception as exc:  # a broken benchmark is reported, and the others still run
            print(f"bench {name} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
            continue
        # how busy the machine was (other jobs share it): 1-minute load average before and after
        entry.setdefault("load_avg_1m", [round(load_before, 2), round(os.getloadavg()[0], 2)])
        merge_entry(name, entry)
        print(json.dumps({name: entry}, indent=2), flush=True)
    from bench.report import write_report  # from every entry on record, so one benchmark updates it too

    print(f"report: {write_report(LATEST, RESULTS)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
