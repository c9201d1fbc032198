"""Classic-mode pods finish: tell the FUSE sidecar to leave once every other container has ended.

When the cluster has no native sidecars, the webhook injects the sidecar as a regular container, and a
Job or Argo step pod (`restartPolicy: Never`/`OnFailure`) would then never complete. The controller
watches injected pods; once every non-sidecar container has terminated (successfully or not, Fluid
#1948; with `OnFailure` only a clean exit is final, a failed one restarts), it sets the pod annotation
`eddy.fluid.io/sidecar-stop: "true"`.

Mechanism: the webhook mounts the pod's own annotations into the sidecar with a downwardAPI volume
(`/etc/eddy/podinfo/annotations`, kept current by the kubelet). The sidecar polls that file; on seeing
the annotation it unmounts its FUSE mount and exits 0. Why this one: it needs no network path to the
pod (serverless pods are not reachable by the controller on 127.0.0.1), no `pods/exec` (often denied on
virtual nodes, and a privileged verb), no token to distribute, and no RBAC in the pod: only the
controller's `patch` on pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eddy.names import LABEL_INJECT_DONE, STOP_ANNOTATION

__all__ = ["STOP_ANNOTATION", "is_sidecar", "sidecars_to_stop", "stop_patch"]
SIDECAR_ENV = "EDDY_DATASET"
SIDECAR_PREFIXES = ("fluid-fuse", "eddy-")  # Fluid's name (webhook/injector.py); Eddy's before


def is_sidecar(container: Mapping[str, Any]) -> bool:
    env = container.get("env") or []
    if any(isinstance(e, Mapping) and e.get("name") == SIDECAR_ENV for e in env):
        return True
    return str(container.get("name", "")).startswith(SIDECAR_PREFIXES)


def _finished(state: Mapping[str, Any], restart_policy: str) -> bool:
    terminated = (state or {}).get("terminated")
    if not isinstance(terminated, Mapping):
        return False
    return restart_policy == "Never" or int(terminated.get("exitCode", 1)) == 0


def sidecars_to_stop(pod: Mapping[str, Any]) -> list[str]:
    """Names of the classic sidecars of `pod` that should now exit; [] when none should (yet)."""
    meta = pod.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL_INJECT_DONE) != "true":
        return []
    if (meta.get("annotations") or {}).get(STOP_ANNOTATION) == "true":
        return []
    spec = pod.get("spec") or {}
    policy = str(spec.get("restartPolicy") or "Always")
    if policy not in ("Never", "OnFailure"):
        return []
    containers = [c for c in spec.get("containers") or [] if isinstance(c, Mapping)]
    sidecars = [str(c.get("name")) for c in containers if is_sidecar(c)]
    apps = [str(c.get("name")) for c in containers if not is_sidecar(c)]
    if not sidecars or not apps:
        return []
    statuses = {
        str(s.get("name")): s for s in (pod.get("status") or {}).get("containerStatuses") or []
        if isinstance(s, Mapping)
    }
    for name in apps:
        status = statuses.get(name)
        if status is None or not _finished(status.get("state") or {}, policy):
            return []
    return sidecars


def stop_patch() -> dict[str, Any]:
    return {"metadata": {"annotations": {STOP_ANNOTATION: "true"}}}
