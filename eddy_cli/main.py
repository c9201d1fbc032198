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
# The module of each subcommand: a command line naming one imports that module alone, so a probe
# (`eddy sidecar check-mount`, run every second by the kubelet) does not load every part's libraries.
COMMAND_MODULES = {
    "webhook": "webhook.cli",
    "sidecar": "sidecar.cli",
    "worker": "worker.cli",
    "preloader": "preloader.cli",
    "preload": "preloader.cli",
    "controller": "controller.cli",
    "validate": "eddy_cli.validate",
    "demo": "eddy_cli.demo",
    "sandbox": "sandbox.cli",
}
GLOBAL_OPTIONS_WITH_VALUE = ("--log-level",)


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand a command line names (the first word that is not a global option), if known."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            return word if word in COMMAND_MODULES else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eddy",
        description="Eddy: a Fluid-compatible object-store cache for serverless pods.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [COMMAND_MODULES[command]] if command else list(SUBCOMMAND_MODULES)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name.split(".")[0]:
                raise
            continue  # a part this installation does not carry (the image has no sandbox/)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command_of(words))
    args = parser.parse_args(words)
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
