"""Secret values for mounts, read from mounted Secret volumes (or a mapping in tests).

In a pod every Secret a Dataset references is mounted at `/etc/eddy/secrets/<secret>/`, one file per
key, exactly as Kubernetes projects a Secret volume. `SecretSource.from_dir` reads those files on
demand. Values never appear in a repr, a log line or an exception message: errors name the secret and
the key only.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from eddy.api import Mount, SecretKeyRef

log = logging.getLogger(__name__)


class SecretError(LookupError):
    """A referenced secret value is missing or unreadable. The message names secret and key, never a value."""


def secret_values(doc: Mapping[str, Any], where: str) -> dict[str, str]:
    """The text values of a Kubernetes Secret object (`data` decoded, then `stringData`).

    A key whose value is not base64 UTF-8 text is left out with a warning that names the key only:
    mount credentials are text, and neither the bytes nor a decoder's message (which quotes them) may
    reach a log, a status or an error."""
    values: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            values[str(key)] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            log.warning("Secret %s: key %s is not base64 text; ignored", where, key)
    values.update({str(k): str(v) for k, v in (doc.get("stringData") or {}).items()})
    return values


class Credentials(NamedTuple):
    """An access key pair; unpacks as `(access_key, secret_key)` and never shows them in its repr."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return "Credentials(access_key=***, secret_key=***)"

    def __str__(self) -> str:
        return self.__repr__()


class SecretSource:
    """Where secret values come from: a directory of mounted Secret volumes, or an in-memory mapping."""

    def __init__(
        self, *, directory: Path | None = None, mapping: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self._directory = directory
        self._mapping = {name: dict(keys) for name, keys in (mapping or {}).items()}

    @classmethod
    def from_dir(cls, path: str | Path) -> SecretSource:
        """Files `<path>/<secret-name>/<key>`: one mounted Secret volume per secret."""
        return cls(directory=Path(path))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Mapping[str, str]]) -> SecretSource:
        """`{secret-name: {key: value}}`."""
        return cls(mapping=mapping)

    def value(self, ref: SecretKeyRef) -> str:
        """The value of one key of one secret; surrounding whitespace (a trailing newline) is dropped."""
        if self._directory is None:
            keys = self._mapping.get(ref.name)
            if keys is None or ref.key not in keys:
                raise SecretError(f"secret {ref.name!r} has no key {ref.key!r}")
            return keys[ref.key].strip()
        path = self._directory / ref.name / ref.key
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise SecretError(
                f"secret {ref.name!r} key {ref.key!r}: no file {path} (is the Secret mounted?)"
            ) from None
        except OSError as exc:
            raise SecretError(
                f"secret {ref.name!r} key {ref.key!r}: cannot read {path}: {exc.strerror}"
            ) from None

    def __repr__(self) -> str:
        if self._directory is not None:
            return f"SecretSource(directory={str(self._directory)!r})"
        return f"SecretSource(secrets={sorted(self._mapping)!r})"


def credential_option_names(scheme: str) -> tuple[str, str]:
    """The option names holding the access key id and secret for a mount scheme (`oss`, `s3`)."""
    return f"fs.{scheme}.accessKeyId", f"fs.{scheme}.accessKeySecret"


def plain_credentials(mounts: Sequence[Mount]) -> list[str]:
    """Where credentials sit in plain `options` (field paths, never values).

    Fluid accepts them there, and so does Eddy, but plain options travel with the Dataset into the
    runtime's ConfigMap, readable by anyone who may read ConfigMaps; `encryptOptions` keep them in a
    Secret. Callers warn with these paths."""
    found = []
    for i, mount in enumerate(mounts):
        for name in credential_option_names(mount.scheme):
            if mount.options.get(name) and not any(o.name == name for o in mount.encrypt_options):
                found.append(f"spec.mounts[{i}].options[{name}]")
    return found


def _option(mount: Mount, name: str, secrets: SecretSource | None) -> str | None:
    for opt in mount.encrypt_options:
        if opt.name == name:
            if secrets is None:
                raise SecretError(
                    f"mount {mount.name!r}: option {name!r} comes from secret {opt.secret.name!r} "
                    f"key {opt.secret.key!r}, but no secret source was given"
                )
            return secrets.value(opt.secret)
    value = mount.options.get(name)
    return value if value else None


def credentials_for(mount: Mount, secrets: SecretSource | None) -> Credentials | None:
    """The mount's access key pair, from `encryptOptions` (via `secrets`) or plain `options`.

    None when the mount names no credentials (the client then uses its default chain or anonymous
    access); a SecretError when only one half is present, naming which.
    """
    key_name, secret_name = credential_option_names(mount.scheme)
    access_key = _option(mount, key_name, secrets)
    secret_key = _option(mount, secret_name, secrets)
    if access_key is None and secret_key is None:
        return None
    if access_key is None or secret_key is None:
        missing = key_name if access_key is None else secret_name
        raise SecretError(f"mount {mount.name!r}: {missing!r} is missing (set it with the other credential)")
    return Credentials(access_key, secret_key)
