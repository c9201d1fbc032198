"""Entry point of the `eddy` command.

Each part owns its subcommand: a module exposing `register(subparsers)` that adds a parser and sets
`func` to a callable taking the parsed arguments and returning an exit code (or a coroutine of one).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Sequence

# Modules that register subcommands, in the order `eddy --help` lists them.
SUBCOMMAND_MODULES = (
    "webhook.cli",
    "sidecar.cli",
    "worker.cli",
    "preloader.cli",
    "controller.cli",
    "eddy_cli.validate",
    "eddy_cli.demo",
    "sandbox.cli",  # registers without importing the sandbox; absent from the runtime image
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eddy",
        description="Eddy: a Fluid-compatible object-store cache for serverless pods.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name.split(".")[0]:
                raise
            continue  # a part this installation does not carry (the image has no sandbox/)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    result = args.func(args)
    if inspect.iscoroutine(result):
        try:
            result = asyncio.run(result)
        except KeyboardInterrupt:
            return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
