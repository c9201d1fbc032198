"""eddy.quantity: Kubernetes quantities in, Fluid's human sizes and percentages out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eddy.quantity import format_quantity, human_size, parse_quantity, percentage

SUFFIXES = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
UNITS = {"B": 0, "KiB": 1, "MiB": 2, "GiB": 3, "TiB": 4, "PiB": 5, "EiB": 6}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5Gi", 5368709120),
        ("1Ki", 1024),
        ("500Mi", 500 * 2**20),
        ("2Ti", 2 * 2**40),
        ("1k", 1000),
        ("10M", 10**7),
        ("100G", 10**11),
        ("1073741824", 2**30),
        (4096, 4096),
        ("1.5Gi", 3 * 2**29),
        (" 7Mi ", 7 * 2**20),
        ("0.5", 1),  # fractions of a byte round up, as Kubernetes does
    ],
)
def test_parse_quantity(text: str | int, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text", ["5Gx", "5GB", "5gi", "-5Gi", -1, "", "Gi", "abc", "1e3", "5.Gi", True, "five"]
)
def test_parse_quantity_refuses(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_the_seeds_sizes() -> None:
    assert human_size(1_245_540_515) == "1.16GiB"  # UFS TOTAL SIZE of the seed's data set
    assert human_size(0) == "0.00B"
    assert human_size(parse_quantity("5Gi")) == "5.00GiB"  # CACHE CAPACITY
    assert percentage(1_245_540_515, 1_245_540_515) == "100.0%"
    assert percentage(0, 1_245_540_515) == "0.0%"
    assert percentage(5, 0) == "0.0%"
    assert percentage(7, 3) == "100.0%"
    assert human_size(1023) == "1023.00B" and human_size(2**20 - 1) == "1.00MiB"


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from(sorted(SUFFIXES)))
def test_quantity_text_round_trips(number: int, suffix: str) -> None:
    assert parse_quantity(f"{number}{suffix}") == number * SUFFIXES[suffix]


@given(st.integers(min_value=0, max_value=2**62))
def test_format_quantity_round_trips_exactly(n: int) -> None:
    text = format_quantity(n)
    assert parse_quantity(text) == n
    assert len(text) <= len(str(n))


@given(st.integers(min_value=0, max_value=2**62))
def test_human_size_is_within_rounding_of_the_bytes(n: int) -> None:
    text = human_size(n)
    unit = text.lstrip("0123456789.")
    number = float(text[: -len(unit)])
    scale = 1024 ** UNITS[unit]
    assert abs(number * scale - n) <= 0.005 * scale + 1e-9 * n
    assert number < 1024 or unit == "EiB"
    assert n < 1024 or number >= 0.995  # the largest unit that keeps the number at least 1


@given(st.integers(min_value=0, max_value=2**50), st.integers(min_value=1, max_value=2**50))
def test_percentage_is_bounded_and_formatted(part: int, whole: int) -> None:
    text = percentage(part, whole)
    value = float(text.rstrip("%"))
    assert text.endswith("%") and 0.0 <= value <= 100.0
    assert abs(value - min(100.0, 100.0 * part / whole)) <= 0.05
