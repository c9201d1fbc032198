"""`kubectl get`-style tables, as the seed shows them."""

from __future__ import annotations

from collections.abc import Sequence


def age(seconds: float) -> str:
    """Kubernetes' short duration: `45s`, `2m8s`, `1h2m`, `3d4h`."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m" if (s % 3600) // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded like kubectl: three spaces between, left-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)
