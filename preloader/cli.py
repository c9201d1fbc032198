"""`eddy preloader`: command-line entry of the preloader part."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("preloader", help="(not yet available)")
    parser.set_defaults(func=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    print("eddy preloader: this part is not built yet")
    return 2
