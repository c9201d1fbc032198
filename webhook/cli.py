"""`eddy webhook`: command-line entry of the webhook part."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("webhook", help="(not yet available)")
    parser.set_defaults(func=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    print("eddy webhook: this part is not built yet")
    return 2
