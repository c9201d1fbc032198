"""Kubernetes quantities (`5Gi`, `500M`, `1024`) and the human sizes `kubectl get dataset` prints."""

from __future__ import annotations

import re

_SUFFIXES: dict[str, int] = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def parse_quantity(text: str | int) -> int:
    """Bytes in a Kubernetes quantity; raises ValueError for anything else (negative, `5Gx`, empty)."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a quantity")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text!r} is not a quantity")
        return text
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity")
    number, suffix = match.group(1), match.group(2) or ""
    return int(float(number) * _SUFFIXES[suffix]) if "." in number else int(number) * _SUFFIXES[suffix]


def human_size(n: int | float) -> str:
    """Size as Fluid prints it: `0.00B`, `1.16GiB`, `5.00GiB`."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{value:.2f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def percentage(part: int | float, whole: int | float) -> str:
    """`100.0%`, `57.3%`; `0.0%` when the whole is unknown or zero."""
    if whole <= 0:
        return "0.0%"
    return f"{min(100.0, 100.0 * part / whole):.1f}%"
