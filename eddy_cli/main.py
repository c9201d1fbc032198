"""Entry point of the `eddy` command.

Each part owns its subcommand: a module exposing `register(subparsers)` that adds a parser and sets
`func` to a callable taking the parsed arguments and returning an exit code (or a coroutine of one).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import types
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
GLOBAL_OPTIONS_WITH_VALUE = ("--log-level", "--log-format")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Errors a user can cause (a missing or unreadable file, a bad value, a bad kubeconfig): one line on
# stderr and exit 1. Anything else is a bug and keeps its traceback; --debug shows one for every error.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, LookupError)
USER_ERROR_NAMES = ("ConfigException",)  # kubernetes-asyncio's, without importing it here


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


def add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after the subcommand's name (`eddy worker --debug`).

    On subcommands they default to SUPPRESS, so a value given before the name is not reset after it."""
    level: str = "INFO" if defaults else argparse.SUPPRESS
    fmt: str = "text" if defaults else argparse.SUPPRESS
    debug: bool | str = False if defaults else argparse.SUPPRESS
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=level, help="log verbosity (default INFO)")
    parser.add_argument("--log-format", choices=("text", "json"), default=fmt,
                        help="log lines as text (default) or one JSON object each, for cluster log pipelines")
    parser.add_argument("--debug", action="store_true", default=debug, help="show the traceback of any error")


def _add_to_subcommands(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:  # argparse keeps subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_global_options(sub, defaults=False)
                _add_to_subcommands(sub)


def version() -> str:
    try:
        from importlib.metadata import version as dist_version

        return f"eddy {dist_version('eddy')}"
    except Exception:  # not installed as a distribution (a plain checkout on PYTHONPATH)
        return "eddy (version unknown: not installed)"


class VersionAction(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs a probe's budget otherwise)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version())
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eddy",
        description="Eddy: a Fluid-compatible object-store cache for serverless pods.",
    )
    parser.add_argument("--version", action=VersionAction, nargs=0, help="print the version and exit")
    add_global_options(parser, defaults=True)
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
    _add_to_subcommands(parser)
    return parser


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERRORS) or type(exc).__name__ in USER_ERROR_NAMES


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command_of(words))
    args = parser.parse_args(words)
    setup_logging(args.log_level, args.log_format)
    try:
        result = args.func(args)
        if isinstance(result, types.CoroutineType):  # asyncio only for the commands that need it
            import asyncio

            result = asyncio.run(result)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug or not is_user_error(exc):
            raise
        print(f"eddy {args.command}: {exc or type(exc).__name__} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
