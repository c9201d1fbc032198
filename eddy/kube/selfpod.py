"""What a part learns about itself from its own Pod (named through the downward API)."""

from __future__ import annotations

import logging
import os

from eddy.kube.client import Kube
from eddy.kube.resources import PODS

log = logging.getLogger("eddy.kube")


async def own_image(kube: Kube, container: str) -> str:
    """The image of `container` in this process's own Pod ($POD_NAMESPACE/$POD_NAME), or "".

    One image runs every part, so the workers the controller makes and the sidecars the webhook injects
    run the image the control plane itself runs: a kustomize overlay's `images:` is the one place to set
    it. "" when the variables are unset or the pod or container cannot be read; the caller falls back to
    its default and logs which it used.
    """
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not (name and namespace):
        return ""
    try:
        pod = await kube.get_or_none(PODS, name, namespace)
    except Exception as exc:  # the default image still works; say why it was used
        log.warning("cannot read my own pod %s/%s: %s", namespace, name, exc)
        return ""
    for item in ((pod or {}).get("spec") or {}).get("containers") or []:
        if item.get("name") == container and item.get("image"):
            return str(item["image"])
    return ""
