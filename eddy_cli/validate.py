"""`eddy validate -f FILE...`: check Fluid manifests offline with the models of `eddy.api`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from eddy.api import Dataset
from eddy.manifests import ManifestError, load_manifests
from eddy.secrets import plain_credentials


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "validate",
        help="check Dataset/JindoRuntime/DataLoad manifests offline",
        description="Parse every Fluid object in the files; print one line per error "
        "(file, object, field path) and exit non-zero if any.",
    )
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a YAML or JSON manifest (repeatable; '-' reads standard input)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    errors = 0
    checked = 0
    for path in args.filename:
        try:
            result = load_manifests(path, strict_kinds=False)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            errors += 1
            continue
        checked += len(result.models)
        for line in result.error_lines():
            print(line, file=sys.stderr)
            errors += 1
        for line in result.note_lines():
            print(f"note: {line}")
        for model in result.models:
            if isinstance(model, Dataset):
                for where in plain_credentials(model.mounts):
                    print(f"warning: {path}: Dataset/{model.meta.name}: {where}: a credential in plain text "
                          "(it is copied into the runtime's ConfigMap); use encryptOptions with a Secret")
        for skipped in result.skipped:
            print(f"note: {path}: {skipped}: not a Fluid kind, skipped")
    if errors:
        print(f"{errors} error(s)", file=sys.stderr)
        return 1
    print(f"{checked} object(s) valid")
    return 0
