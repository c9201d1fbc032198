"""Is Fluid installed here? Eddy's controller and webhook refuse to start beside it.

Eddy serves Fluid's API group (`data.fluid.io`): beside Fluid, two controllers would act on the same
Datasets and two webhooks inject the same pods. Fluid is taken to be installed when

- a CRD of `data.fluid.io` is not marked as Eddy's (the label `app.kubernetes.io/part-of: eddy` that
  eddy/crds.py puts on Eddy's three), for example Fluid's `alluxioruntimes.data.fluid.io`, or Fluid's own
  `datasets.data.fluid.io` that `kubectl apply` of Eddy would otherwise have replaced; or
- one of Fluid's controllers runs (a Deployment named `dataset-controller`, `fluid-webhook`,
  `jindoruntime-controller`, ...).

What the caller may not read (no RBAC for CRDs or Deployments) is not held against it: that check is
skipped with a warning.
"""

from __future__ import annotations

import logging

from eddy.api import GROUP
from eddy.crds import EDDY_CRD_LABEL, EDDY_CRD_LABEL_VALUE
from eddy.kube import DEPLOYMENTS, Kube, KubeError, Resource
from eddy.kube.client import Obj

log = logging.getLogger("eddy.fluidcheck")

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                namespaced=False)
FLUID_DEPLOYMENTS = frozenset({
    "dataset-controller", "fluid-webhook", "fluidapp-controller", "alluxioruntime-controller",
    "jindoruntime-controller", "juicefsruntime-controller", "goosefsruntime-controller",
    "thinruntime-controller", "efcruntime-controller", "vineyardruntime-controller",
    "application-controller",
})


class FluidInstalled(RuntimeError):
    """Fluid runs in this cluster; the message says what was found and what to do."""


async def _readable(kube: Kube, resource: Resource, looking_for: str) -> list[Obj]:
    """Every object of `resource`, or none (with a warning) when the caller may not list them."""
    try:
        objects, _ = await kube.list(resource)
    except KubeError as exc:
        log.warning("cannot list %s to look for %s: %s", resource.plural, looking_for, exc)
        return []
    return objects


async def fluid_evidence(kube: Kube) -> list[str]:
    """What shows that Fluid is installed (empty: nothing found)."""
    found: list[str] = []
    for crd in await _readable(kube, CRDS, "Fluid"):
        meta = crd.get("metadata") or {}
        if (crd.get("spec") or {}).get("group") != GROUP:
            continue
        if (meta.get("labels") or {}).get(EDDY_CRD_LABEL) != EDDY_CRD_LABEL_VALUE:
            found.append(f"CRD {meta.get('name')} was not installed by Eddy")
    for dep in await _readable(kube, DEPLOYMENTS, "Fluid's controllers"):
        meta = dep.get("metadata") or {}
        if meta.get("name") in FLUID_DEPLOYMENTS:
            found.append(f"Fluid's controller Deployment {meta.get('namespace')}/{meta.get('name')} exists")
    return found


async def refuse_beside_fluid(kube: Kube, component: str) -> None:
    """Raise FluidInstalled (with a message for the operator) when Fluid is found."""
    found = await fluid_evidence(kube)
    if found:
        raise FluidInstalled(
            f"eddy {component}: Fluid is installed in this cluster ({'; '.join(found)}). Eddy serves "
            f"Fluid's {GROUP} API itself and cannot run beside Fluid: uninstall Fluid, or run Eddy in a "
            "cluster without it (--allow-fluid skips this check, at your own risk)."
        )
