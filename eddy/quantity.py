"""Kubernetes quantities (`5Gi`, `500M`, `1024`) and the human sizes `kubectl get dataset` prints."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
# The same language as the CRD's pattern (eddy/crds.py), so the API server and Eddy agree.
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_BINARY = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def parse_quantity(text: str | int | float) -> int:
    """Bytes in a Kubernetes quantity (`5Gi`, `1.5G`, `1024`, or an int); fractions of a byte round up.

    Raises ValueError for anything else: negative values, unknown suffixes (`5Gx`, `5GB`), empty text.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a quantity")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text!r} is negative")
        return text
    if isinstance(text, float):
        if not text >= 0 or text == float("inf"):
            raise ValueError(f"{text!r} is not a quantity")
        text = repr(text)
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a quantity")
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a quantity") from None
    total = number * _SUFFIXES[match.group(2) or ""]
    whole = int(total)
    return whole + 1 if total > whole else whole  # Kubernetes rounds fractional bytes up


def format_quantity(n: int) -> str:
    """The shortest exact quantity for a byte count: `5Gi`, `1536Mi`, `1000`; parses back to n."""
    if n < 0:
        raise ValueError(f"{n!r} is negative")
    for suffix in _BINARY:
        unit = _SUFFIXES[suffix]
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def human_size(n: int | float) -> str:
    """Size as Fluid prints it: `0.00B`, `1.16GiB`, `5.00GiB` (binary units, two decimals)."""
    value = float(n)
    for unit in _UNITS:
        if abs(round(value, 2)) < 1024 or unit == _UNITS[-1]:
            return f"{value:.2f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def percentage(part: int | float, whole: int | float) -> str:
    """`100.0%`, `57.3%`; `0.0%` when the whole is unknown or zero; never above 100% or below 0%."""
    if whole <= 0:
        return "0.0%"
    return f"{max(0.0, min(100.0, 100.0 * part / whole)):.1f}%"
