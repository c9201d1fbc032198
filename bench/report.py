"""bench/results/REPORT.md and its PNG charts, drawn from latest.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (the backend must be chosen first)


def _bars(path: Path, title: str, unit: str, bars: dict[str, float]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(bars)
    values = [bars[n] for n in names]
    colors = ["#9e9e9e", "#2e7d32", "#c62828", "#1565c0", "#6a1b9a"][: len(names)]
    ax.barh(names, values, color=colors)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center")
    ax.set_xlabel(unit)
    ax.set_title(title)
    ax.invert_yaxis()
    ax.set_xlim(0, max([*values, 1]) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cdf(path: Path, entry: dict[str, Any]) -> bool:
    points = entry.get("latency_cdf") or []
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([p[0] for p in points], [p[1] for p in points], color="#1565c0")
    ax.set_xscale("log")  # the tail is what matters: p99 and beyond
    ax.set_xlabel("admission latency (ms, log scale), HTTPS keep-alive, at 200/s")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Webhook latency CDF")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _num(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    return float(value) if isinstance(value, int | float) else None


def _flat(value: Any) -> dict[str, Any]:
    """{"large": x, "small": y} or a bare figure (one shape: large) -> {shape: figure}."""
    return value if isinstance(value, dict) else {"large": value}


def cpu_table(data: dict[str, Any]) -> list[str]:
    """CPU-seconds per GiB delivered, per process and shape, beside the ceiling's processes."""
    rows = []
    for name, entry in sorted(data.items()):
        value, ceiling = entry.get("cpu_s_per_gib") or {}, entry.get("ceiling_cpu_s_per_gib") or {}
        for kind, procs in (("value", value), ("ceiling", ceiling)):
            for proc, figures in procs.items():
                flat = _flat(figures)
                large, small = flat.get("large", ""), flat.get("small", "")
                rows.append(f"| {name} | {kind} | {proc} | {large} | {small} |")
    if not rows:
        return []
    return ["", "## CPU-seconds per GiB delivered (user + system, /proc/<pid>/stat)", "",
            "| benchmark | side | process | large file (preload: its mix) | small-file tree |",
            "|---|---|---|---|---|", *rows]


def write_report(latest: Path, out_dir: Path) -> Path:
    data: dict[str, Any] = json.loads(latest.read_text()) if latest.exists() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Eddy benchmark report",
        "",
        "Produced by `make bench` (one benchmark: `make bench BENCH=name`). Every ceiling is measured in the",
        "same run as the value it is compared with; `ratio = value / ceiling`.",
        "",
        "| benchmark | metric | value | ceiling | ratio | cores | measured at |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in sorted(data.items()):
        lines.append(
            f"| {name} | {entry.get('metric')} | {entry.get('value')} {entry.get('unit', '')} "
            f"| {entry.get('ceiling')} | {entry.get('ratio')} | {entry.get('cores')} "
            f"| {entry.get('measured_at', '')} |"
        )
    lines += cpu_table(data)
    charts: list[tuple[str, str]] = []
    sidecar = data.get("sidecar", {})
    if sidecar:
        bars = {
            "FUSE ceiling (memfs)": _num(sidecar, "ceiling"),
            "warm (workers)": _num(sidecar, "value"),
            "cold (object store)": _num(sidecar, "cold"),
        }
        _bars(
            out_dir / "read_throughput.png",
            "Sequential read through the mount",
            sidecar.get("unit", ""),
            {k: v for k, v in bars.items() if v is not None},
        )
        charts.append(("Read throughput through the sidecar mount", "read_throughput.png"))
    preload = data.get("preload", {})
    if preload:
        bars = {"raw parallel GET (ceiling)": _num(preload, "ceiling"), "preload": _num(preload, "value")}
        _bars(
            out_dir / "preload.png",
            "Preload vs raw parallel ranged GET",
            preload.get("unit", ""),
            {k: v for k, v in bars.items() if v is not None},
        )
        charts.append(("Preload vs raw GET", "preload.png"))
    e2e = data.get("e2e", {})
    if e2e:
        bars = {
            "local cp (ceiling)": _num(e2e, "ceiling"),
            "warm copy": _num(e2e, "value"),
            "cold copy": _num(e2e, "cold"),
        }
        _bars(
            out_dir / "e2e.png",
            "Demo copy: with and without the cache",
            e2e.get("unit", ""),
            {k: v for k, v in bars.items() if v is not None},
        )
        charts.append(("End to end copy", "e2e.png"))
    webhook = data.get("webhook", {})
    if webhook and _cdf(out_dir / "webhook_latency.png", webhook):
        charts.append(("Webhook latency CDF", "webhook_latency.png"))
    for name, entry in sorted(data.items()):
        extras = {
            k: v for k, v in entry.items()
            if k not in {"latency_cdf", "profiles", "profile", "copies"} and not isinstance(v, list)
        }
        lines += ["", f"## {name}", "", "```json", json.dumps(extras, indent=2, sort_keys=True), "```"]
    for title, file in charts:
        lines += ["", f"### {title}", "", f"![{title}]({file})"]
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    here = Path(__file__).parent / "results"
    print(write_report(here / "latest.json", here))
