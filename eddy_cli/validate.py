"""`eddy validate -f FILE...`: check Fluid manifests offline, with the schema Eddy's CRDs carry.

`parse_object` checks each Dataset, JindoRuntime and DataLoad against the CRD schema (Fluid's
v1alpha1 schema with Eddy's rules, eddy/crds.py) and Eddy's own rules, so what this command accepts is
what `kubectl apply` accepts on a cluster running Eddy, placeholders aside. Fields Fluid declares that
Eddy does not act on are noted; other Fluid kinds (AlluxioRuntime, DataProcess, ...) and unknown kinds
of the `data.fluid.io` group are errors; Kubernetes' own kinds (Secret, Deployment) are skipped; a kind
of any other group is an error (this command cannot check it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from eddy.api import GROUP, KINDS, Dataset, Model, ValidationError, parse_object
from eddy.cliargs import add_filename_arg
from eddy.manifests import ManifestError, documents
from eddy.secrets import plain_credentials

# Fluid's kinds in data.fluid.io/v1alpha1 (its config/crd/bases), beside the three Eddy serves.
FLUID_KINDS = (
    "AlluxioRuntime", "CacheRuntime", "CacheRuntimeClass", "DataBackup", "DataLoad", "DataMigrate",
    "DataProcess", "Dataset", "EFCRuntime", "JindoRuntime", "JuiceFSRuntime", "ThinRuntime",
    "ThinRuntimeProfile", "VineyardRuntime", "GooseFSRuntime",
)
# Kubernetes' own API groups: their documents (a Secret, the app's Deployment) sit beside Fluid's in the
# same files and are skipped; a document of any other group is a kind this command cannot check.
BUILTIN_GROUPS = ("", "apps", "batch", "policy", "autoscaling")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "validate",
        help="check Dataset/JindoRuntime/DataLoad manifests offline",
        description="Parse every Fluid object in the files; print one line per error "
        "(file, object, field path) and exit non-zero if any.",
    )
    add_filename_arg(parser, dest="filename", required=True,
                     help="a YAML or JSON manifest (repeatable; '-' reads standard input)")
    parser.set_defaults(func=run)


def kind_error(doc: Any) -> str:
    """Why a document's kind is refused ("" when Eddy serves it or it belongs to another API group)."""
    if not isinstance(doc, dict):
        return "not an object"
    kind = str(doc.get("kind") or "")
    api_version = str(doc.get("apiVersion") or "")
    group = api_version.split("/")[0] if "/" in api_version else ""  # "v1" is the core group
    if not kind:
        return "no kind"
    if kind in KINDS:
        return ""
    served = ", ".join(KINDS)
    if kind in FLUID_KINDS:
        return f"{kind} is a Fluid kind Eddy does not serve (Eddy serves {served}); install Fluid for it"
    if group != GROUP and group not in BUILTIN_GROUPS and not group.endswith(".k8s.io"):
        return (f"{kind} ({doc.get('apiVersion')}) is not a kind eddy validate knows: it checks Fluid's "
                f"{served} and skips Kubernetes' own kinds")
    if group == GROUP:
        return f"{kind} is not a kind of {GROUP} (Eddy serves {served})"
    return ""


def _label(doc: Any, index: int) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    kind = doc.get("kind") if isinstance(doc, dict) else ""
    if kind and name:
        return f"{kind}/{name}"
    return f"{kind or 'document'} #{index + 1}"


def check_file(path: str) -> tuple[list[Model], list[str], list[str]]:
    """(valid models, error lines, skipped `Kind/name`s) of one file; raises ManifestError."""
    models: list[Model] = []
    errors: list[str] = []
    skipped: list[str] = []
    for index, doc in enumerate(documents(path)):
        why = kind_error(doc)
        if why:
            errors.append(f"{path}: {_label(doc, index)}: {why}")
        elif doc.get("kind") not in KINDS:
            skipped.append(_label(doc, index))
        else:
            try:
                models.append(parse_object(doc))
            except ValidationError as error:
                errors.extend(f"{path}: {_label(doc, index)}: {e}" for e in error.errors)
    return models, errors, skipped


def run(args: argparse.Namespace) -> int:
    errors = 0
    checked = 0
    for path in args.filename:
        try:
            models, lines, skipped = check_file(path)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            errors += 1
            continue
        checked += len(models)
        for line in lines:
            print(line, file=sys.stderr)
            errors += 1
        for model in models:
            for field_path in model.ignored:
                label = f"{model.kind}/{model.meta.name}"
                print(f"note: {path}: {label}: {field_path}: accepted, not acted on by Eddy")
            if isinstance(model, Dataset):
                for where in plain_credentials(model.mounts):
                    print(f"warning: {path}: Dataset/{model.meta.name}: {where}: a credential in plain text "
                          "(it is copied into the runtime's ConfigMap); use encryptOptions with a Secret")
                if model.read_write_requested:
                    modes = ", ".join(model.access_modes)
                    print(f"warning: {path}: Dataset/{model.meta.name}: spec.accessModes: {modes}: "
                          "Eddy's cache is read-only; writes fail with EROFS")
        for label in skipped:
            print(f"note: {path}: {label}: not a Fluid kind, skipped")
    if errors:
        print(f"{errors} error(s)", file=sys.stderr)
        return 1
    print(f"{checked} object(s) valid")
    return 0
