"""A container's environment and command line, as the kubelet builds them.

Order and precedence as in kubelet's `makeEnvironmentVariables`: the image's ENV, then the service
variables (`KUBERNETES_SERVICE_HOST`/`PORT`), then `envFrom` sources in order, then `env` in order
(each later one wins); `$(VAR)` in `env[].value`, `command` and `args` expands against what is defined
so far, `$$(VAR)` is the escape, an unknown `$(VAR)` stays as written.
"""

from __future__ import annotations

import base64
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from eddy.quantity import parse_quantity

Obj = dict[str, Any]
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


class ConfigError(Exception):
    """What kubelet reports as CreateContainerConfigError (a missing Secret/ConfigMap/key...)."""


class ObjectLookup(Protocol):
    """The runner's caches of ConfigMaps and Secrets."""

    def configmap(self, namespace: str, name: str) -> Obj | None: ...

    def secret(self, namespace: str, name: str) -> Obj | None: ...


@dataclass(frozen=True)
class PodFacts:
    """What fieldRefs may read besides the pod object itself."""

    node_name: str
    pod_ip: str
    host_ip: str


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names are replaced, `$$` is a literal `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def field_value(pod: Obj, path: str, facts: PodFacts) -> str:
    """A `fieldRef.fieldPath` (the ones the API allows for env and downwardAPI)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName") or facts.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "".join(f'{k}="{_escape(str(v))}"\n' for k, v in sorted(values.items()))
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ConfigError(f"unsupported fieldPath {path!r}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_cpu_millis(text: str | int | float) -> int:
    """`500m` -> 500, `1.5` -> 1500, `2` -> 2000."""
    s = str(text).strip()
    if s.endswith("m"):
        return int(s[:-1])
    return math.ceil(float(s) * 1000)


def resource_value(pod: Obj, container_name: str, resource: str, divisor: str | None) -> str:
    """A `resourceFieldRef`: the container's limit or request; a missing limit is the node's capacity."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    container = next((c for c in containers if c.get("name") == container_name), None)
    if container is None:
        raise ConfigError(f"resourceFieldRef: no container {container_name!r}")
    kind, _, res = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(res)
    if res == "cpu" or res.endswith(".cpu"):
        millis = parse_cpu_millis(value) if value is not None else (
            (os.cpu_count() or 1) * 1000 if kind == "limits" else 0)
        div = parse_cpu_millis(divisor) if divisor else 1000
        return str(max(1, math.ceil(millis / div)) if millis else 0)
    if value is not None:
        amount = parse_quantity(str(value))
    elif kind == "limits":
        amount = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        amount = 0
    div_bytes = parse_quantity(str(divisor)) if divisor else 1
    return str(math.ceil(amount / div_bytes))


def _key_of(obj: Obj | None, key: str, *, secret: bool) -> str | None:
    if obj is None:
        return None
    if secret:
        raw = (obj.get("data") or {}).get(key)
        return base64.b64decode(raw).decode("utf-8", "replace") if raw is not None else None
    if key in (obj.get("data") or {}):
        return str(obj["data"][key])
    raw = (obj.get("binaryData") or {}).get(key)
    return base64.b64decode(raw).decode("utf-8", "replace") if raw is not None else None


def _all_keys(obj: Obj, *, secret: bool) -> dict[str, str]:
    keys = list(obj.get("data") or {}) + ([] if secret else list(obj.get("binaryData") or {}))
    out = {}
    for key in keys:
        value = _key_of(obj, key, secret=secret)
        if value is not None:
            out[key] = value
    return out


def container_env(
    pod: Obj,
    container: Obj,
    *,
    image_env: dict[str, str],
    service_env: dict[str, str],
    lookup: ObjectLookup,
    facts: PodFacts,
) -> dict[str, str]:
    """The environment of one container (ConfigError for what kubelet refuses to start with)."""
    ns = (pod.get("metadata") or {}).get("namespace") or "default"
    env: dict[str, str] = dict(image_env)
    env.update(service_env)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, secret in (("configMapRef", False), ("secretRef", True)):
            ref = source.get(kind)
            if ref is None:
                continue
            name = ref.get("name", "")
            obj = lookup.secret(ns, name) if secret else lookup.configmap(ns, name)
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{"secret" if secret else "configmap"} "{name}" not found')
            for key, value in _all_keys(obj, secret=secret).items():
                env[prefix + key] = value
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value") or ""), env)
            continue
        found = _value_from(pod, container, var["valueFrom"], ns, lookup, facts)
        if found is not None:
            env[name] = found
    return env


def _value_from(pod: Obj, container: Obj, source: Obj, ns: str, lookup: ObjectLookup,
                facts: PodFacts) -> str | None:
    if "fieldRef" in source:
        return field_value(pod, str(source["fieldRef"].get("fieldPath", "")), facts)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        return resource_value(pod, ref.get("containerName") or container.get("name", ""),
                              str(ref.get("resource", "")), ref.get("divisor"))
    for kind, secret in (("secretKeyRef", True), ("configMapKeyRef", False)):
        ref = source.get(kind)
        if ref is None:
            continue
        name, key = ref.get("name", ""), ref.get("key", "")
        obj = lookup.secret(ns, name) if secret else lookup.configmap(ns, name)
        what = "secret" if secret else "configmap"
        if obj is None:
            if ref.get("optional"):
                return None
            raise ConfigError(f'{what} "{name}" not found')
        value = _key_of(obj, key, secret=secret)
        if value is None:
            if ref.get("optional"):
                return None
            raise ConfigError(f"couldn't find key {key} in {what.capitalize()} {ns}/{name}")
        return value
    raise ConfigError("valueFrom has no known source")


def container_argv(container: Obj, entrypoint: tuple[str, ...], cmd: tuple[str, ...],
                   env: dict[str, str]) -> list[str]:
    """command replaces ENTRYPOINT (and drops CMD), args replaces CMD; both `$(VAR)`-expanded."""
    command = container.get("command")
    args = container.get("args")
    if command:
        argv = [expand(str(c), env) for c in command] + [expand(str(a), env) for a in args or []]
    elif args:
        argv = [*entrypoint, *(expand(str(a), env) for a in args)]
    else:
        argv = [*entrypoint, *cmd]
    return argv


def service_env(host: str, port: int) -> dict[str, str]:
    """The variables of the `kubernetes` Service every pod gets (empty without an API address)."""
    if not host or not port:
        return {}
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": str(port),
        "KUBERNETES_PORT_443_TCP_ADDR": host,
    }


def service_links(services: list[Obj], namespace: str) -> dict[str, str]:
    """Docker-links-style variables for the Services of the pod's namespace with a cluster IP
    (`enableServiceLinks`, on by default): `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<NAME>]`,
    `<SVC>_PORT`, `<SVC>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`."""
    env: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: str((s.get("metadata") or {}).get("name", ""))):
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ip = str(spec.get("clusterIP") or "")
        ports = spec.get("ports") or []
        if meta.get("namespace") != namespace or not ip or ip == "None" or not ports:
            continue
        prefix = str(meta.get("name", "")).upper().replace("-", "_")
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0].get("port"))
        for port in ports:
            if port.get("name"):
                port_name = str(port["name"]).upper().replace("-", "_")
                env[f"{prefix}_SERVICE_PORT_{port_name}"] = str(port["port"])
        first = ports[0]
        env[f"{prefix}_PORT"] = f"{str(first.get('protocol') or 'TCP').lower()}://{ip}:{first.get('port')}"
        for port in ports:
            proto = str(port.get("protocol") or "TCP")
            base = f"{prefix}_PORT_{port.get('port')}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{port.get('port')}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port.get("port"))
            env[f"{base}_ADDR"] = ip
    return env
