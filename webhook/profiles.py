"""Injector settings and the ONE table of platform profiles (what differs between eci, acs and open source).

A profile is chosen by the pod's trigger label: `alibabacloud.com/fluid-sidecar-target: eci|acs`, or
Fluid's open-source `serverless.fluid.io/inject: "true"` (profile `serverless`). Everything that varies by
platform is a field of `PlatformProfile`; the injector reads fields and never tests a platform name.

Per-pod resource overrides are annotations (`eddy.io/sidecar-cpu-request` ...); a malformed value is
ignored with a warning (the pod still gets the defaults), never a rejection.

Fluid's per-pod switches (`pod_switches`) use Fluid's keys and meanings (pkg/common/constants.go,
pkg/utils/annotations.go of fluid-cloudnative/fluid): the `unprivileged.sidecar.fluid.io/inject` and
`fuse.sidecar.poststart.fluid.io/inject` labels and the `serverless.fluid.io/platform` annotation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eddy.names import LABEL_SERVERLESS_INJECT, LABEL_SIDECAR_TARGET, SIDECAR_TARGETS

FuseMode = Literal["privileged", "sys-admin"]
FUSE_MODES: tuple[FuseMode, ...] = ("privileged", "sys-admin")

# Annotations a pod may carry to size its sidecar(s). Values are Kubernetes quantities.
ANNOTATION_CPU_REQUEST = "eddy.io/sidecar-cpu-request"
ANNOTATION_CPU_LIMIT = "eddy.io/sidecar-cpu-limit"
ANNOTATION_MEMORY_REQUEST = "eddy.io/sidecar-memory-request"
ANNOTATION_MEMORY_LIMIT = "eddy.io/sidecar-memory-limit"
RESOURCE_ANNOTATIONS = {
    ("requests", "cpu"): ANNOTATION_CPU_REQUEST,
    ("limits", "cpu"): ANNOTATION_CPU_LIMIT,
    ("requests", "memory"): ANNOTATION_MEMORY_REQUEST,
    ("limits", "memory"): ANNOTATION_MEMORY_LIMIT,
}
# Left on the injected pod: which profile shaped it (for `kubectl get pod -o yaml` readers).
ANNOTATION_PLATFORM = "eddy.io/platform"

OPEN_SOURCE_PROFILE = "serverless"

# Fluid's per-pod switches. Fluid reads the two switches from the pod's labels and the platform from its
# annotations; Eddy also takes a switch given as an annotation (the label wins), since nothing else
# would tell the user it was not read.
LABEL_UNPRIVILEGED = "unprivileged.sidecar.fluid.io/inject"  # "true": no privileged, no SYS_ADMIN
LABEL_SIDECAR_POSTSTART = "fuse.sidecar.poststart.fluid.io/inject"  # "false": no mount check
ANNOTATION_SERVERLESS_PLATFORM = "serverless.fluid.io/platform"  # "default" | "unprivileged"
PLATFORM_DEFAULT = "default"
PLATFORM_UNPRIVILEGED = "unprivileged"
FLUID_PLATFORMS = (PLATFORM_DEFAULT, PLATFORM_UNPRIVILEGED)


@dataclass(frozen=True)
class PlatformProfile:
    """Everything platform-specific about the injected sidecar.

    `requests_equal_limits`: serverless platforms (ECI, ACS) size and bill a pod from its containers'
    declared resources and treat a container without limits as "use the platform default", so the
    sidecar declares requests == limits there (a Guaranteed-style sidecar that is sized exactly).
    """

    name: str
    requests_equal_limits: bool
    cpu: tuple[str, str]  # (request, limit)
    memory: tuple[str, str]
    pod_annotations: Mapping[str, str] = field(default_factory=dict)


def _alibaba_serverless(name: str) -> PlatformProfile:
    """ECI and ACS differ in name only: both bill declared resources (requests == limits)."""
    return PlatformProfile(name, requests_equal_limits=True, cpu=("500m", "500m"), memory=("1Gi", "1Gi"),
                           pod_annotations={ANNOTATION_PLATFORM: name})


PROFILES: dict[str, PlatformProfile] = {
    "eci": _alibaba_serverless("eci"),
    "acs": _alibaba_serverless("acs"),
    OPEN_SOURCE_PROFILE: PlatformProfile(
        OPEN_SOURCE_PROFILE,
        requests_equal_limits=False,
        cpu=("100m", "2"),
        memory=("256Mi", "2Gi"),
        pod_annotations={ANNOTATION_PLATFORM: OPEN_SOURCE_PROFILE},
    ),
}
assert set(SIDECAR_TARGETS) <= set(PROFILES)


@dataclass(frozen=True)
class InjectorSettings:
    """What the operator chooses once for every injected pod (flags of `eddy webhook`)."""

    image: str = "ghcr.io/eddy/eddy:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    native_sidecar: bool = True
    fuse_mode: FuseMode = "privileged"
    # sys-admin mode: where /dev/fuse comes from. A device-plugin resource name (e.g.
    # `smarter-devices/fuse`) works on nodes without hostPath; empty means a hostPath CharDevice.
    fuse_device_resource: str = ""
    mount_timeout_s: int = 300
    # Where injected sidecars serve /metrics: "" keeps their default (127.0.0.1: inside the pod only);
    # "0.0.0.0" lets Prometheus scrape them at the pod's IP (manifests/monitoring/podmonitors.yaml).
    sidecar_metrics_address: str = ""


class InjectionDenied(Exception):
    """The pod asks for injection in a way Eddy cannot honour; the message tells the user what to fix."""


@dataclass(frozen=True)
class PodSwitches:
    """Fluid's per-pod switches, as read from one pod.

    `unprivileged`: the sidecar gets neither `privileged` nor `SYS_ADMIN` nor a hostPath `/dev/fuse`;
    the platform must provide FUSE to it (docs/webhook.md says what still works).
    `mount_check`: False drops the sidecar's wait for its mount (classic `postStart`, native startup
    probe), so the app starts without waiting for the data.
    """

    unprivileged: bool = False
    mount_check: bool = True


def _switch(labels: Mapping[str, str], annotations: Mapping[str, str], key: str) -> str | None:
    value = labels.get(key, annotations.get(key))
    return None if value is None else str(value)


def pod_switches(labels: Mapping[str, str], annotations: Mapping[str, Any]) -> PodSwitches:
    """Fluid's switches on a pod asking for injection; InjectionDenied for a platform Fluid has not.

    As Fluid's GetServerlessPlatform: `unprivileged.sidecar.fluid.io/inject: "true"` wins; otherwise the
    `serverless.fluid.io/platform` annotation names the platform (`default` or `unprivileged`; any other
    value is refused, as Fluid's webhook refuses a platform it has no mutator for); otherwise `default`.
    Values match exactly (`"true"`, `"false"`), as in Fluid.
    """
    notes = {str(k): str(v) for k, v in annotations.items()}
    unprivileged = _switch(labels, notes, LABEL_UNPRIVILEGED) == "true"
    if not unprivileged and ANNOTATION_SERVERLESS_PLATFORM in notes:
        platform = notes[ANNOTATION_SERVERLESS_PLATFORM]
        if platform not in FLUID_PLATFORMS:
            raise InjectionDenied(
                f'annotation {ANNOTATION_SERVERLESS_PLATFORM}="{platform}" is not a platform Eddy knows; '
                f"valid values: {', '.join(FLUID_PLATFORMS)}"
            )
        unprivileged = platform == PLATFORM_UNPRIVILEGED
    mount_check = _switch(labels, notes, LABEL_SIDECAR_POSTSTART) != "false"
    return PodSwitches(unprivileged=unprivileged, mount_check=mount_check)


def select_profile(labels: Mapping[str, str]) -> PlatformProfile | None:
    """The profile a pod's labels ask for; None if it does not ask; InjectionDenied for a bad target."""
    target = labels.get(LABEL_SIDECAR_TARGET)
    if target is not None:
        if target not in SIDECAR_TARGETS:
            valid = ", ".join(SIDECAR_TARGETS)
            raise InjectionDenied(
                f'label {LABEL_SIDECAR_TARGET}="{target}" is not a known target; valid values: {valid}'
            )
        return PROFILES[target]
    if labels.get(LABEL_SERVERLESS_INJECT) == "true":
        return PROFILES[OPEN_SOURCE_PROFILE]
    return None


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_FACTORS = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def quantity_value(text: str) -> float | None:
    """The number a Kubernetes quantity stands for (cpu `500m` -> 0.5), or None if malformed."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if not match:
        return None
    return float(match.group(1)) * _FACTORS[match.group(2) or ""]


def sidecar_resources(
    profile: PlatformProfile, annotations: Mapping[str, str], runtime: Mapping[str, Any] | None = None
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The sidecar's `resources`, later sources winning: the profile's defaults, the JindoRuntime's
    `spec.fuse.resources` (`runtime`), then the pod's annotations (docs/webhook.md)."""
    warnings: list[str] = []
    chosen = {
        ("requests", "cpu"): profile.cpu[0],
        ("limits", "cpu"): profile.cpu[1],
        ("requests", "memory"): profile.memory[0],
        ("limits", "memory"): profile.memory[1],
    }
    explicit: set[tuple[str, str]] = set()
    for kind in ("requests", "limits"):
        values = (runtime or {}).get(kind)
        for resource, value in (values.items() if isinstance(values, Mapping) else ()):
            chosen[(kind, str(resource))] = str(value)
            explicit.add((kind, str(resource)))
    for slot, annotation in RESOURCE_ANNOTATIONS.items():
        if annotation not in annotations:
            continue
        value = str(annotations[annotation]).strip()
        if quantity_value(value) is None or value.startswith("-"):
            warnings.append(f'annotation {annotation}="{value}" is not a quantity; using {chosen[slot]}')
            continue
        chosen[slot] = value
        explicit.add(slot)
    for resource in ("cpu", "memory"):
        request, limit = chosen[("requests", resource)], chosen[("limits", resource)]
        explicit_request = ("requests", resource) in explicit
        if profile.requests_equal_limits and not explicit_request:
            chosen[("requests", resource)] = limit
        elif (quantity_value(request) or 0) > (quantity_value(limit) or 0):
            warnings.append(f"sidecar {resource} request {request} exceeds its limit {limit}; using {limit}")
            chosen[("requests", resource)] = limit
    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for (kind, resource), value in chosen.items():
        resources[kind][resource] = value
    if profile.requests_equal_limits:  # other resources (ephemeral-storage, ...) the runtime names
        for resource, value in resources["limits"].items():
            resources["requests"].setdefault(resource, value)
    return resources, warnings
