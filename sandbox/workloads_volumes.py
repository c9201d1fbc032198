"""PersistentVolume binder (kube-controller-manager's persistentvolume-binder) and a hostPath
provisioner, so claims become `Bound` as in a cluster and the pod runner can mount them.

- A claim with `spec.volumeName` (pre-bound, as Eddy's controller makes a Dataset's PVC) is bound to
  that volume when the volume is free or already reserved for it (`claimRef`).
- A claim without one is matched to an `Available` volume: the same `storageClassName`, the access
  modes it asks for, enough capacity (the smallest that fits), `spec.selector.matchLabels`.
- With a `volume_root`, a claim that still has no volume and no explicit `storageClassName: ""` gets a
  new hostPath volume `pvc-<claim uid>` under that directory (what a cluster's default StorageClass,
  kind's local-path say, would do): reclaim policy `Delete`, removed with its claim.
- Binding writes the volume's `claimRef` and phase `Bound`, the claim's `volumeName`,
  `pv.kubernetes.io/bind-completed`, phase `Bound`, `capacity` and `accessModes`. A deleted claim's
  volume becomes `Released` (Retain) or goes (Delete, the ones provisioned here).
Not modelled: StorageClass objects and `WaitForFirstConsumer`, volume expansion, `Recycle`,
`volumeMode: Block`, label selectors with `matchExpressions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

from eddy.kube.client import Kube
from eddy.kube.errors import AlreadyExists, NotFound
from eddy.kube.informer import Informer
from eddy.kube.resources import PVCS, PVS
from eddy.quantity import parse_quantity
from sandbox.workloads import Key, OwnedIndex, OwnerController

Obj = dict[str, Any]
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
PROVISIONER = "sandbox.eddy.io/hostpath"


def _request(pvc: Obj) -> int:
    text = (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage") or 0
    try:
        return parse_quantity(text)
    except ValueError:
        return 0


def _capacity(pv: Obj) -> int:
    try:
        return parse_quantity(((pv.get("spec") or {}).get("capacity") or {}).get("storage") or 0)
    except ValueError:
        return 0


def _claimed_by(pv: Obj, pvc: Obj) -> bool | None:
    """True: reserved for this claim; False: for another one; None: free."""
    ref = (pv.get("spec") or {}).get("claimRef")
    if not ref:
        return None
    meta = pvc["metadata"]
    same = ref.get("name") == meta["name"] and ref.get("namespace") == meta["namespace"] and (
        not ref.get("uid") or ref.get("uid") == meta["uid"])
    return same


def matches(pv: Obj, pvc: Obj) -> bool:
    """Could `pvc` bind to the free volume `pv`?"""
    spec, want = pv.get("spec") or {}, pvc.get("spec") or {}
    if (pv.get("status") or {}).get("phase") not in (None, "Pending", "Available"):
        return False
    if (spec.get("storageClassName") or "") != (want.get("storageClassName") or ""):
        return False
    if not set(want.get("accessModes") or []) <= set(spec.get("accessModes") or []):
        return False
    if _capacity(pv) < _request(pvc):
        return False
    labels = (pv.get("metadata") or {}).get("labels") or {}
    selector = (want.get("selector") or {}).get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


class VolumeBinder(OwnerController):
    resource = PVCS
    component = "persistentvolume-controller"

    def __init__(self, kube: Kube, pods: OwnedIndex, *, volume_root: Path | None = None) -> None:
        super().__init__(kube, pods)
        self.volume_root = volume_root
        self.volumes = Informer(kube, PVS, on_event=self._volume_event)

    async def _volume_event(self, _etype: str, _pv: Obj) -> None:
        for pvc in self.owners.items():  # a volume changed: any waiting claim may now bind
            if (pvc.get("status") or {}).get("phase") != "Bound":
                self.enqueue((pvc["metadata"]["namespace"], pvc["metadata"]["name"]))

    def pod_event(self, etype: str, pod: Obj) -> None:
        """Pods do not move claims."""

    def start(self) -> None:
        self.volumes.start()
        super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.volumes.stop()

    async def wait_synced(self, timeout: float) -> None:
        await super().wait_synced(timeout)
        await self.volumes.wait_synced(timeout)

    async def reconcile(self, owner: Obj) -> float | None:
        spec = owner.get("spec") or {}
        pv: Obj | None = None
        if spec.get("volumeName"):
            pv = self.volumes.get(None, str(spec["volumeName"]))
            if pv is None or _claimed_by(pv, owner) is False:
                return None  # not there (yet), or another claim's: stays Pending, as in a cluster
        else:
            free = [v for v in self.volumes.items()
                    if _claimed_by(v, owner) is not False and matches(v, owner)]
            reserved = [v for v in free if _claimed_by(v, owner)]
            if reserved or free:
                pv = (reserved or sorted(free, key=_capacity))[0]
            elif self.volume_root is not None and spec.get("storageClassName") != "":
                pv = await self._provision(owner)
        if pv is None:
            return None
        await self._bind(pv, owner)
        return None

    async def _provision(self, pvc: Obj) -> Obj:
        assert self.volume_root is not None
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        name = f"pvc-{meta['uid']}"
        path = self.volume_root / name
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.chmod, 0o777)  # any container user may write, as local-path does
        body: Obj = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get(
                    "storage", "1Gi")},
                "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or "",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": self._claim_ref(pvc),
            },
        }
        try:
            pv = await self.kube.create(PVS, body)
        except AlreadyExists:
            pv = await self.kube.get(PVS, name)
        await self.events.record(pvc, "ProvisioningSucceeded",
                                 f"Successfully provisioned volume {name} (hostPath {path})")
        return pv

    @staticmethod
    def _claim_ref(pvc: Obj) -> Obj:
        meta = pvc["metadata"]
        return {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": meta["namespace"],
                "name": meta["name"], "uid": meta["uid"]}

    async def _bind(self, pv: Obj, pvc: Obj) -> None:
        pv_name, meta = str(pv["metadata"]["name"]), pvc["metadata"]
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref.get("uid") != meta["uid"]:
            pv = await self.kube.patch(PVS, pv_name, {"spec": {"claimRef": self._claim_ref(pvc)}})
        if (pv.get("status") or {}).get("phase") != "Bound":
            await self.kube.patch_status(PVS, pv_name, {"status": {"phase": "Bound"}})
        if (pvc.get("spec") or {}).get("volumeName") != pv_name or (meta.get("annotations") or {}).get(
                "pv.kubernetes.io/bind-completed") != "yes":
            await self.kube.patch(PVCS, meta["name"], {
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {"volumeName": pv_name}}, meta["namespace"])
        spec = pv.get("spec") or {}
        status = {"phase": "Bound", "accessModes": spec.get("accessModes") or [],
                  "capacity": spec.get("capacity") or {}}
        if {k: (pvc.get("status") or {}).get(k) for k in status} != status:
            await self.kube.patch_status(PVCS, meta["name"], {"status": status}, meta["namespace"])

    async def gone(self, key: Key) -> None:
        """The claim is deleted: its volume is Released, or deleted when it was provisioned here."""
        for pv in self.volumes.items():
            ref = (pv.get("spec") or {}).get("claimRef") or {}
            bound = (pv.get("status") or {}).get("phase") == "Bound"
            if (ref.get("namespace"), ref.get("name")) != key or not bound:
                continue
            name = str(pv["metadata"]["name"])
            policy = (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "Retain"
            mine = ((pv.get("metadata") or {}).get("annotations") or {}).get(PROVISIONED_BY) == PROVISIONER
            if policy == "Delete" and mine:
                path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
                if path and self.volume_root is not None and Path(path).parent == self.volume_root:
                    await asyncio.to_thread(shutil.rmtree, path, True)
                await self.kube.delete(PVS, name, missing_ok=True)
            else:
                with contextlib.suppress(NotFound):
                    await self.kube.patch_status(PVS, name, {"status": {"phase": "Released"}})
