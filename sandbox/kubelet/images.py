"""What an image would give a container, without images: entrypoint, cmd, user, env, workdir.

The sandbox has no container images. Eddy's own image (`ghcr.io/eddy/eddy`, any tag, and whatever
`manifests/kustomization.yaml` renames it to) is modelled from the repository's Dockerfile: its last
stage's ENTRYPOINT, CMD, USER, ENV and WORKDIR are read from that file (never copied here), and its
`eddy` executable is this virtualenv's, first on PATH. Every other image runs the pod spec's command
with this machine's binaries as root, or, with no command, a stand-in that stays up until stopped.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EDDY_IMAGE = "ghcr.io/eddy/eddy"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The stand-in for an image's own process: up until SIGTERM/SIGINT (also as PID 1 of a namespace, where
# default signal actions do not apply), with this machine's shell and sleep.
STAND_IN = ("/bin/sh", "-c", 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done')


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a container runtime uses."""

    name: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""  # "65532", "65532:65532", "" (root)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"

    def uid_gid(self) -> tuple[int, int | None]:
        """The numeric user (and group, if given) of USER; names other than root are not resolvable
        without the image's /etc/passwd and count as an error."""
        if not self.user:
            return 0, None
        user, _, group = self.user.partition(":")
        if user == "root":
            user = "0"
        if not user.isdigit() or (group and not group.isdigit()):
            raise ValueError(f"image {self.name}: USER {self.user!r} is not numeric")
        return int(user), int(group) if group else None


class ImageError(Exception):
    """The image's configuration cannot be determined."""


def image_repository(image: str) -> str:
    """`ghcr.io/eddy/eddy:0.1.0@sha256:...` -> `ghcr.io/eddy/eddy`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def parse_dockerfile(text: str, name: str = EDDY_IMAGE) -> ImageConfig:
    """ENTRYPOINT/CMD/USER/ENV/WORKDIR of the Dockerfile's last stage (continuation lines joined)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user, workdir = "", "/"
    env: dict[str, str] = {}
    for line in lines:
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":  # a new stage starts from scratch (the base image's config is not known)
            entrypoint, cmd, user, workdir, env = (), (), "", "/", {}
        elif word == "ENTRYPOINT":
            entrypoint = _exec_form(rest)
            cmd = ()  # as Docker: setting ENTRYPOINT resets a CMD inherited before it
        elif word == "CMD":
            cmd = _exec_form(rest)
        elif word == "USER":
            user = rest
        elif word == "WORKDIR":
            workdir = rest if rest.startswith("/") else str(Path(workdir) / rest)
        elif word == "ENV":
            env.update(_env_pairs(rest))
    return ImageConfig(name, entrypoint, cmd, user, env, workdir)


def _exec_form(rest: str) -> tuple[str, ...]:
    if rest.startswith("["):
        value = json.loads(rest)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ImageError(f"not an exec form: {rest!r}")
        return tuple(value)
    return ("/bin/sh", "-c", rest)


def _env_pairs(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        return {words[0]: rest.split(None, 1)[1] if len(words) > 1 else ""}
    return dict(w.split("=", 1) for w in words if "=" in w)


class ImageCatalog:
    """Resolves an image reference to its `ImageConfig`."""

    def __init__(
        self,
        *,
        dockerfile: Path | None = None,
        kustomization: Path | None = None,
        eddy_bin: Path | None = None,
    ) -> None:
        self.dockerfile = dockerfile or REPO / "Dockerfile"
        self.kustomization = kustomization or REPO / "manifests" / "kustomization.yaml"
        self.eddy_bin = eddy_bin or Path(sys.executable).parent  # the venv's bin: `eddy` lives there
        self._eddy: ImageConfig | None = None
        self._names: frozenset[str] | None = None

    def eddy_repositories(self) -> frozenset[str]:
        """`ghcr.io/eddy/eddy` and what the kustomization's `images:` maps it to."""
        if self._names is None:
            names = {EDDY_IMAGE}
            if self.kustomization.exists():
                doc = yaml.safe_load(self.kustomization.read_text()) or {}
                for entry in doc.get("images") or []:
                    if isinstance(entry, dict) and entry.get("name") == EDDY_IMAGE and entry.get("newName"):
                        names.add(image_repository(str(entry["newName"])))
            self._names = frozenset(names)
        return self._names

    def is_eddy(self, image: str) -> bool:
        return image_repository(image) in self.eddy_repositories()

    def resolve(self, image: str) -> ImageConfig:
        if self.is_eddy(image):
            return self._eddy_config(image)
        return ImageConfig(image, env={"PATH": DEFAULT_PATH})

    def _eddy_config(self, image: str) -> ImageConfig:
        if self._eddy is None:
            if not self.dockerfile.exists():
                raise ImageError(f"image {image}: {self.dockerfile} (its Dockerfile) is not there")
            parsed = parse_dockerfile(self.dockerfile.read_text(), EDDY_IMAGE)
            env = dict(parsed.env)
            env["PATH"] = f"{self.eddy_bin}:{env.get('PATH', DEFAULT_PATH)}"
            self._eddy = ImageConfig(EDDY_IMAGE, parsed.entrypoint, parsed.cmd, parsed.user, env,
                                     parsed.workdir)
        cfg = self._eddy
        return ImageConfig(image, cfg.entrypoint, cfg.cmd, cfg.user, dict(cfg.env), cfg.workdir)
