"""The FUSE sidecar container of one Dataset, given the names of the volumes it mounts (pure).

`webhook/injector.py` decides where the sidecar goes and which volume names are free; this module
decides what the container is: its command, how it gets FUSE (`fuse_access`), its mounts, and how the
app waits for the mount (`mount_check`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

from eddy.api import Dataset, FuseSpec, JindoRuntime
from eddy.names import (
    CONFIG_FILE_KEY,
    CONFIG_MOUNT_DIR,
    PODINFO_ANNOTATIONS,
    PODINFO_DIR,
    SECRETS_MOUNT_DIR,
    config_map_name,
)
from eddy.wire import TOKEN_DIR, TOKEN_READ_KEY, token_secret_name
from webhook.profiles import InjectorSettings, PodSwitches

FUSE_MOUNTPOINT = "/eddy/mnt"
FUSE_DEVICE = "/dev/fuse"
Container = dict[str, Any]


def dns_label(*parts: str) -> str:
    """A DNS-1123 label (container/volume name) from parts; long names keep a hash suffix."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:54].rstrip('-')}-{digest}"


class SidecarVolumes(NamedTuple):
    """The names of the volumes one sidecar mounts (the injector has made them unique in the pod)."""

    fuse: str  # the Dataset's volume, now an emptyDir: the FUSE mount goes onto it
    config: str
    secrets: tuple[tuple[str, str], ...]  # (volume, Secret name) per Secret the Dataset references
    token: str  # the workers' read token
    podinfo: str = ""  # classic mode: the pod's annotations (the controller's stop request)
    device: str = ""  # a hostPath /dev/fuse, when `FuseAccess.host_device`

    def pod_volumes(self, dataset: Dataset) -> list[dict[str, Any]]:
        """The volumes the pod gains for this sidecar (the FUSE and podinfo ones are the pod's)."""
        volumes: list[dict[str, Any]] = [
            {"name": self.config, "configMap": {"name": config_map_name(dataset.meta.name)}}]
        volumes += [{"name": vol, "secret": {"secretName": secret}} for vol, secret in self.secrets]
        volumes.append({"name": self.token, "secret": {
            "secretName": token_secret_name(dataset.meta.name),
            "items": [{"key": TOKEN_READ_KEY, "path": TOKEN_READ_KEY}],
        }})
        if self.device:
            volumes.append({"name": self.device, "hostPath": {"path": FUSE_DEVICE, "type": "CharDevice"}})
        return volumes


class FuseAccess(NamedTuple):
    """How the sidecars of a pod may mount FUSE (the same for all of them)."""

    security: dict[str, Any]  # its securityContext
    bidirectional: bool  # its mount reaches the app containers by Bidirectional propagation
    device_resource: str = ""  # a device-plugin resource giving /dev/fuse, requested and limited at 1
    host_device: bool = False  # /dev/fuse comes from a hostPath volume


def fuse_access(settings: InjectorSettings, switches: PodSwitches) -> FuseAccess:
    """Root in the sidecar, whatever the image's USER or the pod's securityContext say: mounting FUSE
    needs CAP_SYS_ADMIN, which the kernel gives only to uid 0 (a non-root uid loses its capabilities
    at exec), and a root mount gets `allow_other`, so app containers of any uid can read /data. The
    privilege is the container's, which this mode grants anyway; the app containers keep theirs."""
    root = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}
    if switches.unprivileged:
        # Fluid's unprivileged sidecar: not privileged, no SYS_ADMIN, no hostPath /dev/fuse. The mount
        # works only where the platform gives unprivileged containers FUSE (its device resource, if the
        # operator named one, is still requested); no Bidirectional propagation (privileged only).
        return FuseAccess({"privileged": False, **root}, False, settings.fuse_device_resource)
    if settings.fuse_mode == "privileged":
        return FuseAccess({"privileged": True, **root}, True)
    # Kubernetes allows Bidirectional propagation only to privileged containers: in this mode the
    # sidecar's mount reaches the app containers only where the platform shares it (docs/webhook.md).
    security = {"privileged": False, "capabilities": {"add": ["SYS_ADMIN"]}, **root}
    return FuseAccess(security, False, settings.fuse_device_resource, not settings.fuse_device_resource)


def mount_check(settings: InjectorSettings, switches: PodSwitches) -> dict[str, Any]:
    """The fields by which the app waits for the mount: native mode, a restartable init container with
    a startup probe; classic mode, a `postStart` (the kubelet starts the next container only when it
    returns). Fluid's `fuse.sidecar.poststart.fluid.io/inject: "false"` drops the wait."""
    fields: dict[str, Any] = {}
    if settings.native_sidecar:
        fields["restartPolicy"] = "Always"
    if settings.native_sidecar and switches.mount_check:
        fields["startupProbe"] = {
            "exec": {"command": _check_mount_cmd(2)},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, settings.mount_timeout_s),
        }
    if not settings.native_sidecar and switches.mount_check:
        fields["lifecycle"] = {"postStart": {"exec": {"command": _check_mount_cmd(settings.mount_timeout_s)}}}
    return fields


def sidecar_container(
    name: str,
    dataset: Dataset,
    volumes: SidecarVolumes,
    resources: dict[str, dict[str, str]],
    settings: InjectorSettings,
    health_port: int,
    fuse: FuseSpec | None,
    switches: PodSwitches,
    access: FuseAccess,
) -> Container:
    """The sidecar running `eddy sidecar mount ...` for `dataset`.

    `fuse` (the JindoRuntime's `spec.fuse`) sets the image, pull policy, extra environment and extra
    `eddy sidecar mount` flags; `resources` already holds its resources merged under the annotations.
    `switches` are Fluid's per-pod switches (unprivileged sidecar, no mount check); `access` is
    `fuse_access(settings, switches)`, the same for every sidecar of the pod.
    """
    fuse = fuse or FuseSpec()
    command = ["eddy", "sidecar", "mount", "--config", f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE_KEY}"]
    if volumes.secrets:
        command += ["--secret-dir", SECRETS_MOUNT_DIR]
    # Sidecars share the pod's network namespace: each gets its own health port.
    command += ["--mountpoint", FUSE_MOUNTPOINT, "--health-port", str(health_port)]
    if settings.sidecar_metrics_address:
        command += ["--metrics-address", settings.sidecar_metrics_address]
    if not settings.native_sidecar:
        command += ["--stop-file", PODINFO_ANNOTATIONS]
    command += sidecar_flags(fuse.args)
    res = {kind: dict(values) for kind, values in resources.items()}
    if access.device_resource:
        res["requests"][access.device_resource] = "1"
        res["limits"][access.device_resource] = "1"
    env = [{"name": k, "value": v} for k, v in fuse.env.items() if k != "EDDY_DATASET"]
    return {
        "name": name,
        "image": fuse.image_ref or settings.image,
        "imagePullPolicy": fuse.image_pull_policy or settings.image_pull_policy,
        "command": command,
        "env": [*env, {"name": "EDDY_DATASET", "value": dataset.meta.key}],
        "resources": res,
        "securityContext": access.security,
        "volumeMounts": _mounts(volumes, access, settings),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **mount_check(settings, switches),
    }


def _mounts(volumes: SidecarVolumes, access: FuseAccess, settings: InjectorSettings) -> list[dict[str, Any]]:
    fuse_mount: dict[str, Any] = {"name": volumes.fuse, "mountPath": FUSE_MOUNTPOINT}
    if access.bidirectional:
        fuse_mount["mountPropagation"] = "Bidirectional"
    mounts = [fuse_mount, {"name": volumes.config, "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}]
    mounts += [{"name": vol, "mountPath": f"{SECRETS_MOUNT_DIR}/{secret}", "readOnly": True}
               for vol, secret in volumes.secrets]
    if volumes.token:  # only the read token (eddy/wire.py): a sidecar can read blocks, never purge
        mounts.append({"name": volumes.token, "mountPath": TOKEN_DIR, "readOnly": True})
    if volumes.device:
        mounts.append({"name": volumes.device, "mountPath": FUSE_DEVICE})
    if not settings.native_sidecar:
        mounts.append({"name": volumes.podinfo, "mountPath": PODINFO_DIR, "readOnly": True})
    return mounts


def _check_mount_cmd(timeout_s: float) -> list[str]:
    """`eddy sidecar check-mount` waits up to --timeout for the mount to answer (exit 0/1)."""
    return ["eddy", "sidecar", "check-mount", FUSE_MOUNTPOINT, "--timeout", f"{timeout_s:g}"]


def sidecar_flags(args: tuple[str, ...]) -> list[str]:
    """The `spec.fuse.args` Eddy's sidecar takes: its own `--flag[=value]`s (Jindo's `-o` FUSE options
    mean nothing to it; `fuse_arg_warnings` names them)."""
    return [a for a in args if a.startswith("--")]


def fuse_arg_warnings(runtime: JindoRuntime) -> list[str]:
    dropped = [a for a in runtime.fuse.args if not a.startswith("--")]
    if not dropped:
        return []
    return [f"JindoRuntime {runtime.meta.key}: spec.fuse.args {' '.join(dropped)}: not flags of Eddy's "
            "sidecar (eddy sidecar mount --help), ignored"]
