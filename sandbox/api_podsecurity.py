"""Two of kube-apiserver's checks on a pod being created, which the sandbox makes so that generated
specs fail here as they would in a cluster:

- `validate_pod`: a subset of the pod validation (422 Invalid): containers with names and images,
  unique container and volume names, mounts that name a volume, `Bidirectional` mount propagation only
  in privileged containers.
- `check_pod_security`: the PodSecurity admission plugin, enforcing the namespace's
  `pod-security.kubernetes.io/enforce` level (`baseline` or `restricted`, "latest" policies; no label
  or `privileged`: nothing checked), with kube-apiserver's Forbidden message.
"""

from __future__ import annotations

from typing import Any

from sandbox.api_kinds import ApiError, Obj

GROUPS = ("initContainers", "containers", "ephemeralContainers")
BASELINE_CAPS = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def _containers(spec: Obj) -> list[tuple[str, int, Obj]]:
    return [
        (group, i, c) for group in GROUPS for i, c in enumerate(spec.get(group) or []) if isinstance(c, dict)
    ]


def validate_pod(pod: Obj) -> None:
    spec = pod.get("spec") or {}
    name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "")
    errors: list[str] = []
    if not spec.get("containers"):
        errors.append("spec.containers: Required value")
    volumes = [v.get("name") for v in spec.get("volumes") or []]
    for i, v in enumerate(volumes):
        if v in volumes[:i]:
            errors.append(f'spec.volumes[{i}].name: Duplicate value: "{v}"')
    seen: set[str] = set()
    for group, i, c in _containers(spec):
        where = f"spec.{group}[{i}]"
        cname = c.get("name")
        if not cname:
            errors.append(f"{where}.name: Required value")
        elif cname in seen:
            errors.append(f'{where}.name: Duplicate value: "{cname}"')
        seen.add(str(cname))
        if not c.get("image"):
            errors.append(f"{where}.image: Required value")
        privileged = bool((c.get("securityContext") or {}).get("privileged"))
        for j, m in enumerate(c.get("volumeMounts") or []):
            if m.get("name") not in volumes:
                errors.append(f'{where}.volumeMounts[{j}].name: Not found: "{m.get("name")}"')
            if m.get("mountPropagation") == "Bidirectional" and not privileged:
                errors.append(
                    f"{where}.volumeMounts.mountPropagation: Forbidden: Bidirectional mount "
                    "propagation is available only to privileged containers"
                )
    if errors:
        raise ApiError(
            422,
            "Invalid",
            f'Pod "{name}" is invalid: [{", ".join(errors)}]'
            if len(errors) > 1
            else f'Pod "{name}" is invalid: {errors[0]}',
            {"name": name, "kind": "Pod"},
        )


def _sc(obj: Obj) -> Obj:
    sc = obj.get("securityContext")
    return sc if isinstance(sc, dict) else {}


def _names(items: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in items)


def _list(kind: str, names: list[str], tail: str) -> str:
    plural = "s" if len(names) > 1 else ""
    return f"{kind}{plural} {_names(names)} {tail}"


def _baseline(spec: Obj, containers: list[tuple[str, int, Obj]]) -> list[str]:
    out: list[str] = []
    host = [f"{k}={str(spec.get(k)).lower()}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        out.append(f"host namespaces ({', '.join(host)})")
    privileged = [str(c.get("name")) for _, _, c in containers if _sc(c).get("privileged")]
    if privileged:
        out.append(
            f"privileged ({_list('container', privileged, 'must not set securityContext.privileged=true')})"
        )
    caps: list[str] = []
    for _, _, c in containers:
        caps += [
            str(cap)
            for cap in (_sc(c).get("capabilities") or {}).get("add") or []
            if cap not in BASELINE_CAPS
        ]
    if caps:
        out.append(f"non-default capabilities ({_names(sorted(set(caps)))})")
    host_path = [str(v.get("name")) for v in spec.get("volumes") or [] if "hostPath" in v]
    if host_path:
        out.append(f"hostPath volumes ({_names(host_path)})")
    ports = [
        str(p.get("hostPort")) for _, _, c in containers for p in c.get("ports") or [] if p.get("hostPort")
    ]
    if ports:
        out.append(f"hostPort ({', '.join(ports)})")
    unconfined = [
        str(c.get("name"))
        for _, _, c in containers
        if (_sc(c).get("seccompProfile") or {}).get("type") == "Unconfined"
    ]
    if (_sc(spec).get("seccompProfile") or {}).get("type") == "Unconfined" or unconfined:
        out.append(
            "seccompProfile (pod or containers must not set securityContext.seccompProfile.type to "
            '"Unconfined")'
        )
    sysctls = [
        str(s.get("name")) for s in _sc(spec).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS
    ]
    if sysctls:
        out.append(f"forbidden sysctls ({', '.join(sysctls)})")
    return out


def _restricted(spec: Obj, containers: list[tuple[str, int, Obj]]) -> list[str]:
    out: list[str] = []
    bad_volumes = [
        f'"{v.get("name")}"'
        for v in spec.get("volumes") or []
        if not any(k in RESTRICTED_VOLUMES for k in v if k != "name")
    ]
    if bad_volumes:
        out.append(f"restricted volume types (volumes {', '.join(bad_volumes)} use restricted volume types)")
    names = [str(c.get("name")) for _, _, c in containers]
    escalate = [
        n
        for n, (_, _, c) in zip(names, containers, strict=True)
        if _sc(c).get("allowPrivilegeEscalation") is not False
    ]
    if escalate:
        must = "must set securityContext.allowPrivilegeEscalation=false"
        out.append(f"allowPrivilegeEscalation != false ({_list('container', escalate, must)})")
    drop = [
        n
        for n, (_, _, c) in zip(names, containers, strict=True)
        if "ALL" not in ((_sc(c).get("capabilities") or {}).get("drop") or [])
    ]
    adds = [
        n
        for n, (_, _, c) in zip(names, containers, strict=True)
        if set((_sc(c).get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
    ]
    if drop or adds:
        parts = []
        if drop:
            parts.append(_list("container", drop, 'must set securityContext.capabilities.drop=["ALL"]'))
        if adds:
            parts.append(
                _list(
                    "container",
                    adds,
                    'must not include capabilities other than "NET_BIND_SERVICE" '
                    "in securityContext.capabilities.add",
                )
            )
        out.append(f"unrestricted capabilities ({'; '.join(parts)})")
    pod_non_root = _sc(spec).get("runAsNonRoot")
    explicit_false = [
        n for n, (_, _, c) in zip(names, containers, strict=True) if _sc(c).get("runAsNonRoot") is False
    ]
    unset = [n for n, (_, _, c) in zip(names, containers, strict=True) if _sc(c).get("runAsNonRoot") is None]
    non_root: list[str] = []
    if pod_non_root is False:
        non_root.append("pod must not set securityContext.runAsNonRoot=false")
    if explicit_false:
        non_root.append(_list("container", explicit_false, "must not set securityContext.runAsNonRoot=false"))
    if pod_non_root is None and unset:
        non_root.append("pod or " + _list("container", unset, "must set securityContext.runAsNonRoot=true"))
    if non_root:
        out.append(f"runAsNonRoot != true ({'; '.join(non_root)})")
    root_users = [n for n, (_, _, c) in zip(names, containers, strict=True) if _sc(c).get("runAsUser") == 0]
    if _sc(spec).get("runAsUser") == 0 or root_users:
        out.append("runAsUser=0 (pod or containers must not set runAsUser=0)")
    good = ("RuntimeDefault", "Localhost")
    pod_seccomp = (_sc(spec).get("seccompProfile") or {}).get("type") in good
    missing = [
        n
        for n, (_, _, c) in zip(names, containers, strict=True)
        if (_sc(c).get("seccompProfile") or {}).get("type") not in good
        and not (pod_seccomp and not _sc(c).get("seccompProfile"))
    ]
    if missing:
        must = 'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"'
        out.append(f"seccompProfile (pod or {_list('container', missing, must)})")
    return out


def check_pod_security(pod: Obj, namespace: Obj | None) -> None:
    labels: dict[str, Any] = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get("pod-security.kubernetes.io/enforce", "privileged")
    if level not in ("baseline", "restricted"):
        return
    spec = pod.get("spec") or {}
    containers = _containers(spec)
    problems = _baseline(spec, containers)
    if level == "restricted":
        problems += _restricted(spec, containers)
    if problems:
        name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "")
        raise ApiError(
            403,
            "Forbidden",
            f'pods "{name}" is forbidden: violates PodSecurity "{level}:latest": ' + ", ".join(problems),
            {"name": name, "kind": "pods"},
        )
