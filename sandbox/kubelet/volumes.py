"""A pod's volumes, materialised on the host under `<root>/pods/<uid>/volumes/<name>` as kubelet does.

emptyDir (a 0777 directory; `medium: Memory` is a tmpfs with `sizeLimit`), hostPath (with its `type`
checks and the *OrCreate types), configMap / secret / downwardAPI / projected (files written by the
atomic writer, re-rendered by `refresh` whenever their sources change), and persistentVolumeClaim when
the claim is Bound to a PersistentVolume with a hostPath or local source. Containers get these
directories bind-mounted (`pod.py`); this module only makes them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eddy.quantity import parse_quantity
from sandbox.kubelet import atomic
from sandbox.kubelet.atomic import FileProjection
from sandbox.kubelet.envs import ConfigError, ObjectLookup, PodFacts, field_value, resource_value
from sandbox.kubelet.mounts import MountError, mount_tmpfs, unmount_all

Obj = dict[str, Any]
ATOMIC_KINDS = ("configMap", "secret", "downwardAPI", "projected")


class VolumeError(Exception):
    """A volume cannot be set up (yet): kubelet's FailedMount; the pod stays Pending."""

    def __init__(self, message: str, *, reason: str = "FailedMount") -> None:
        super().__init__(message)
        self.reason = reason


class VolumeLookup(ObjectLookup, Protocol):
    def pvc(self, namespace: str, name: str) -> Obj | None: ...

    def pv(self, name: str) -> Obj | None: ...


@dataclass(frozen=True)
class Volume:
    name: str
    kind: str  # emptyDir | hostPath | configMap | secret | downwardAPI | projected | persistentVolumeClaim
    path: Path  # what containers bind-mount
    read_only: bool = False  # atomic-writer volumes and readOnly claims are always mounted read-only


def volume_kind(spec: Obj) -> str:
    kinds = [k for k in spec if k != "name"]
    return kinds[0] if kinds else "emptyDir"


class PodVolumes:
    """Sets up, keeps current and tears down the volumes of one pod."""

    def __init__(self, pod_dir: Path, lookup: VolumeLookup) -> None:
        self.dir = pod_dir / "volumes"
        self.lookup = lookup
        self.volumes: dict[str, Volume] = {}

    async def setup(self, pod: Obj, facts: PodFacts) -> None:
        """Make every volume not made yet; VolumeError names the first that cannot be."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for spec in (pod.get("spec") or {}).get("volumes") or []:
            name = str(spec.get("name", ""))
            if name not in self.volumes:
                self.volumes[name] = await self._make(pod, spec, facts)

    async def refresh(self, pod: Obj, facts: PodFacts) -> list[str]:
        """Re-render the atomic-writer volumes from the current objects; the names that changed.
        A source that vanished keeps the last content (as kubelet does); errors are returned too."""
        changed = []
        for spec in (pod.get("spec") or {}).get("volumes") or []:
            vol = self.volumes.get(str(spec.get("name", "")))
            if vol is None or vol.kind not in ATOMIC_KINDS:
                continue
            try:
                payload = self.payload(pod, spec, facts)
            except (VolumeError, ConfigError):
                continue
            if await asyncio.to_thread(atomic.write, vol.path, payload, gid=fs_group(pod)):
                changed.append(vol.name)
        return changed

    async def teardown(self) -> list[str]:
        """Unmount everything under the volumes directory and remove it; returns mounts left over."""
        left = await unmount_all(self.dir)
        if not left:
            await asyncio.to_thread(shutil.rmtree, self.dir, True)
        self.volumes.clear()
        return left

    # ------------------------------------------------------------------ one volume
    async def _make(self, pod: Obj, spec: Obj, facts: PodFacts) -> Volume:
        name = str(spec.get("name", ""))
        kind = volume_kind(spec)
        src = spec.get(kind) or {}
        path = self.dir / name
        gid = fs_group(pod)
        if kind == "emptyDir":
            await asyncio.to_thread(path.mkdir, 0o777, False, True)
            if src.get("medium") == "Memory" and not await asyncio.to_thread(os.path.ismount, path):
                size = parse_quantity(str(src["sizeLimit"])) if src.get("sizeLimit") else None
                try:
                    await mount_tmpfs(path, size)
                except MountError as exc:
                    raise VolumeError(f"MountVolume.SetUp failed for volume {name!r}: {exc}") from exc
            os.chmod(path, 0o2777 if gid is not None else 0o777)
            if gid is not None:
                os.chown(path, -1, gid)
            return Volume(name, kind, path)
        if kind == "hostPath":
            try:
                return Volume(name, kind, await asyncio.to_thread(_host_path, src))
            except OSError as exc:
                raise VolumeError(f"hostPath {src.get('path')!r}: {exc}") from exc
        if kind in ATOMIC_KINDS:
            try:
                payload = self.payload(pod, spec, facts)
            except ConfigError as exc:
                raise VolumeError(f"MountVolume.SetUp failed for volume {name!r}: {exc}") from exc
            await asyncio.to_thread(atomic.write, path, payload, gid=gid)
            return Volume(name, kind, path, read_only=True)
        if kind == "persistentVolumeClaim":
            return self._claim(pod, name, src)
        raise VolumeError(f"volume {name!r}: type {kind!r} is not supported by the sandbox")

    def _claim(self, pod: Obj, name: str, src: Obj) -> Volume:
        ns = pod["metadata"].get("namespace") or "default"
        claim_name = str(src.get("claimName", ""))
        pvc = self.lookup.pvc(ns, claim_name)
        if pvc is None:
            raise VolumeError(f'persistentvolumeclaim "{claim_name}" not found', reason="FailedScheduling")
        phase = (pvc.get("status") or {}).get("phase", "Pending")
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if phase != "Bound" or not pv_name:
            raise VolumeError(f'pod has unbound immediate PersistentVolumeClaims (claim "{claim_name}" '
                              f"is {phase})", reason="FailedScheduling")
        pv = self.lookup.pv(str(pv_name))
        if pv is None:
            raise VolumeError(f'persistentvolume "{pv_name}" of claim "{claim_name}" not found')
        pv_spec = pv.get("spec") or {}
        source = pv_spec.get("hostPath") or pv_spec.get("local")
        if not source or not source.get("path"):
            kinds = sorted(k for k in pv_spec if isinstance(pv_spec[k], dict) and k not in (
                "capacity", "claimRef", "nodeAffinity"))
            raise VolumeError(f'persistentvolume "{pv_name}" ({", ".join(kinds) or "no source"}) has no '
                              "hostPath or local source: the sandbox cannot mount it")
        path = Path(str(source["path"]))
        if not path.exists():
            raise VolumeError(f'persistentvolume "{pv_name}": path {path} does not exist')
        return Volume(name, "persistentVolumeClaim", path, read_only=bool(src.get("readOnly")))

    # ------------------------------------------------------------------ payloads
    def payload(self, pod: Obj, spec: Obj, facts: PodFacts) -> dict[str, FileProjection]:
        kind = volume_kind(spec)
        src = spec.get(kind) or {}
        ns = pod["metadata"].get("namespace") or "default"
        default_mode = int(src.get("defaultMode", 0o644))
        if kind == "configMap":
            return self._keys(ns, src, default_mode, secret=False)
        if kind == "secret":
            return self._keys(ns, src, default_mode, secret=True)
        if kind == "downwardAPI":
            return _downward(pod, src.get("items") or [], default_mode, facts)
        out: dict[str, FileProjection] = {}
        for source in src.get("sources") or []:
            if "configMap" in source:
                out.update(self._keys(ns, source["configMap"], default_mode, secret=False))
            elif "secret" in source:
                out.update(self._keys(ns, source["secret"], default_mode, secret=True))
            elif "downwardAPI" in source:
                out.update(_downward(pod, source["downwardAPI"].get("items") or [], default_mode, facts))
            elif "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                out[str(token.get("path", "token"))] = FileProjection(_token(pod, token), default_mode)
        return out

    def _keys(self, ns: str, src: Obj, default_mode: int, *, secret: bool) -> dict[str, FileProjection]:
        name = str(src.get("secretName" if secret and "secretName" in src else "name", ""))
        obj = self.lookup.secret(ns, name) if secret else self.lookup.configmap(ns, name)
        what = "secret" if secret else "configmap"
        if obj is None:
            if src.get("optional"):
                return {}
            raise ConfigError(f'{what} "{name}" not found')
        data: dict[str, bytes] = {}
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value) if secret else str(value).encode()
        if not secret:
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(value)
        items = src.get("items")
        if not items:
            return {key: FileProjection(value, default_mode) for key, value in data.items()}
        out = {}
        for item in items:
            key = str(item.get("key", ""))
            if key not in data:
                if src.get("optional"):
                    continue
                raise ConfigError(f"configmap references non-existent config key: {key}" if not secret
                                  else f"references non-existent secret key: {key}")
            out[str(item.get("path") or key)] = FileProjection(data[key], int(item.get("mode", default_mode)))
        return out


def _downward(pod: Obj, items: list[Obj], default_mode: int, facts: PodFacts) -> dict[str, FileProjection]:
    out = {}
    for item in items:
        if "fieldRef" in item:
            text = field_value(pod, str(item["fieldRef"].get("fieldPath", "")), facts)
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            text = resource_value(pod, str(ref.get("containerName", "")), str(ref.get("resource", "")),
                                  ref.get("divisor"))
        else:
            raise ConfigError(f"downwardAPI item {item.get('path')!r} has no source")
        out[str(item.get("path", ""))] = FileProjection(text.encode(), int(item.get("mode", default_mode)))
    return out


def _token(pod: Obj, source: Obj) -> bytes:
    """A stand-in service account token: non-empty, not a credential (the sandbox API needs none)."""
    meta = pod.get("metadata") or {}
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    audience = source.get("audience") or "api"
    return f"sandbox-token.{meta.get('namespace', 'default')}.{sa}.{audience}.{meta.get('uid', '')}".encode()


def fs_group(pod: Obj) -> int | None:
    value = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
    return int(value) if value is not None else None


_HOST_TYPES = {
    "Directory": stat.S_ISDIR, "File": stat.S_ISREG, "Socket": stat.S_ISSOCK,
    "CharDevice": stat.S_ISCHR, "BlockDevice": stat.S_ISBLK,
}


def _host_path(src: Obj) -> Path:
    """Check (or create) a hostPath as kubelet's hostPath type checker does."""
    path = Path(str(src.get("path", "")))
    kind = str(src.get("type") or "")
    if kind == "DirectoryOrCreate":
        if not path.exists():
            path.mkdir(mode=0o755, parents=True)
        kind = "Directory"
    elif kind == "FileOrCreate":
        if not path.exists():
            if not path.parent.is_dir():
                raise VolumeError(f"hostPath type check failed: {path.parent} is not a directory")
            path.touch(mode=0o644)
        kind = "File"
    if kind:
        check = _HOST_TYPES.get(kind)
        if check is None:
            raise VolumeError(f"hostPath type {kind!r} is not known")
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise VolumeError(f"hostPath type check failed: {path} does not exist") from None
        if not check(mode):
            raise VolumeError(f"hostPath type check failed: {path} is not a {kind}")
    return path
