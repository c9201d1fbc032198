"""Command-line flags that mean the same thing in every subcommand, named as kubectl names them."""

from __future__ import annotations

import argparse
from typing import Any

OLD_FILE_FLAG = "--file"  # the name before kubectl's `--filename`; still accepted, not shown in --help


def add_filename_arg(
    container: argparse.ArgumentParser | argparse._ActionsContainer,
    *,
    dest: str,
    help: str,
    required: bool = False,
    default: Any = None,
) -> argparse.Action:
    """`-f/--filename FILE`, repeatable (a list in `dest`), as in `kubectl apply -f`.

    `--file` is the same option under its former name: argparse has no hidden aliases, so the spelling
    is registered on the very same action (it fills the same list and satisfies `required`) after the
    action is made, which keeps it out of --help and usage lines."""
    action = container.add_argument("-f", "--filename", dest=dest, action="append", required=required,
                                    default=default, metavar="FILE", help=help)
    container._option_string_actions.setdefault(OLD_FILE_FLAG, action)
    return action
