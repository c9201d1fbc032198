"""`eddy demo`: the seed's scenario end to end on one machine (filled in by the demo work)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("demo", help="run the seed scenario locally")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print("eddy demo: not built yet")
    return 2
