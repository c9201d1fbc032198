"""`python -m webhook ...` runs what `eddy webhook ...` runs, loading only this part's subcommand."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys

from webhook.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webhook")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    rest = list(sys.argv[1:] if argv is None else argv)
    top: list[str] = []
    if "--log-level" in rest:  # a top-level option of `eddy`; accept it anywhere here
        at = rest.index("--log-level")
        top, rest = rest[at : at + 2], rest[:at] + rest[at + 2 :]
    args = parser.parse_args([*top, "webhook", *rest])
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
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
