"""bench/results/REPORT.md and its charts, from latest.json (filled in by the demo/bench work)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(latest: Path, out_dir: Path) -> Path:
    data = json.loads(latest.read_text()) if latest.exists() else {}
    lines = [
        "# Eddy benchmark report",
        "",
        "| benchmark | metric | value | ceiling | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, entry in sorted(data.items()):
        lines.append(
            f"| {name} | {entry.get('metric')} | {entry.get('value')} {entry.get('unit', '')} "
            f"| {entry.get('ceiling')} | {entry.get('ratio')} |"
        )
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    return report
