"""From a pod's container spec to a `ProcessSpec`: argv, env, user, capabilities, mounts, limits.

What kubelet's `generateContainerConfig` and a container runtime decide together: the image's
ENTRYPOINT/CMD/USER/ENV/WORKDIR as defaults, the pod and container securityContext on top (container
wins), `runAsNonRoot` checked against the resulting uid, and each volumeMount turned into a bind mount
(subPath, readOnly, mountPropagation; Bidirectional only for privileged containers).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eddy.quantity import parse_quantity
from sandbox.kubelet.envs import ConfigError, container_argv, expand, parse_cpu_millis
from sandbox.kubelet.images import STAND_IN, ImageConfig
from sandbox.kubelet.process import BindMount, ProcessSpec
from sandbox.kubelet.volumes import Volume

Obj = dict[str, Any]
PROPAGATION = {"None": "None", "HostToContainer": "HostToContainer", "Bidirectional": "Bidirectional"}


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]


def identity(pod: Obj, container: Obj, image: ImageConfig) -> Identity:
    """uid/gid/groups as the runtime applies them; ConfigError for runAsNonRoot with uid 0."""
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    try:
        image_uid, image_gid = image.uid_gid()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    uid = int(uid) if uid is not None else image_uid
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    gid = int(gid) if gid is not None else (image_gid if image_gid is not None else 0)
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if non_root and uid == 0:
        raise ConfigError("container has runAsNonRoot and image will run as root "
                          f"(pod: {pod['metadata'].get('name')!r}, container: {container.get('name')})")
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.append(int(pod_sc["fsGroup"]))
    return Identity(uid, gid, tuple(dict.fromkeys(groups)))


def resolve_argv0(argv: list[str], path: str) -> list[str]:
    """The runtime's lookup of a bare command name in the container's PATH."""
    if not argv or "/" in argv[0]:
        return argv
    found = shutil.which(argv[0], path=path)
    if found is None:
        raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH')
    return [found, *argv[1:]]


def make_argv(container: Obj, image: ImageConfig, env: dict[str, str]) -> list[str]:
    argv = container_argv(container, image.entrypoint, image.cmd, env)
    if not argv:
        if image.entrypoint or image.cmd:
            raise ConfigError("no command specified")
        argv = list(STAND_IN)  # an image whose own process is not modelled: up until stopped
    return resolve_argv0(argv, env.get("PATH", ""))


def volume_mounts(pod: Obj, container: Obj, volumes: dict[str, Volume], env: dict[str, str],
                  privileged: bool) -> list[BindMount]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        name = str(vm.get("name", ""))
        vol = volumes.get(name)
        if vol is None:
            raise ConfigError(f"volumeMount {name!r}: no such volume in the pod")
        propagation = PROPAGATION.get(str(vm.get("mountPropagation") or "None"))
        if propagation is None:
            raise ConfigError(f"invalid mountPropagation {vm.get('mountPropagation')!r}")
        if propagation == "Bidirectional" and not privileged:
            raise ConfigError("Bidirectional mount propagation is available only to privileged containers")
        source = vol.path
        sub = str(vm.get("subPath") or "")
        if vm.get("subPathExpr"):
            sub = expand(str(vm["subPathExpr"]), env)
        if sub:
            if sub.startswith("/") or ".." in sub.split("/"):
                raise ConfigError(f"subPath {sub!r} must be a relative path without '..'")
            source = vol.path / sub
            if vol.read_only:  # configMap/secret/...: bind the file the symlinks point at now
                source = Path(os.path.realpath(source))
                if not str(source).startswith(str(vol.path) + "/") or not source.exists():
                    raise ConfigError(f"subPath {sub!r} does not exist in volume {name!r}")
            elif not source.exists() and not source.is_symlink():
                source.mkdir(mode=0o755, parents=True)
        mounts.append(BindMount(source=source, target=str(vm.get("mountPath", "")),
                                read_only=bool(vm.get("readOnly")) or vol.read_only,
                                propagation=propagation))
    return mounts


def process_spec(
    pod: Obj,
    container: Obj,
    *,
    image: ImageConfig,
    env: dict[str, str],
    volumes: dict[str, Volume],
    log_path: Path,
    netns: str | None,
    hosts_file: Path | None,
) -> ProcessSpec:
    """Everything ContainerProcess.start needs; ConfigError / FileNotFoundError when it cannot start."""
    who = identity(pod, container, image)
    sc = container.get("securityContext") or {}
    privileged = bool(sc.get("privileged"))
    caps = sc.get("capabilities") or {}
    spec = pod.get("spec") or {}
    hostname = str(spec.get("hostname") or pod["metadata"].get("name", ""))[:63]
    env = {"HOSTNAME": hostname, "HOME": "/root" if who.uid == 0 else "/", **env}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    argv = make_argv(container, image, env)
    mounts = volume_mounts(pod, container, volumes, env, privileged)
    limits = (container.get("resources") or {}).get("limits") or {}
    return ProcessSpec(
        argv=argv,
        env=env,
        log_path=log_path,
        cwd=str(container.get("workingDir") or image.workdir or "/"),
        uid=who.uid,
        gid=who.gid,
        groups=who.groups,
        privileged=privileged,
        cap_add=tuple(str(c) for c in caps.get("add") or []),
        cap_drop=tuple(str(c) for c in caps.get("drop") or []),
        no_new_privs=sc.get("allowPrivilegeEscalation") is False and not privileged,
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        mounts=tuple(mounts),
        netns=netns or None,
        hostname=hostname,
        hosts_file=hosts_file,
        cpu_limit_millis=parse_cpu_millis(limits["cpu"]) if "cpu" in limits else None,
        memory_limit_bytes=parse_quantity(str(limits["memory"])) if "memory" in limits else None,
    )
