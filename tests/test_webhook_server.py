"""The webhook app's start-up: one warm-up admission before it listens, then the start-up heap frozen."""

from __future__ import annotations

import base64
import gc
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest

from eddy.manifests import Manifests
from webhook.certs import TlsReloader, new_bundle
from webhook.profiles import InjectorSettings
from webhook.review import _WARM_UP_POD, pod_create_review, warm_up
from webhook.server import FileResolver, bound_port, make_app, start_https


def _sidecars(pod: dict[str, Any]) -> list[str]:
    spec = pod["spec"]
    containers = (*spec.get("initContainers", []), *spec["containers"])
    return [c["name"] for c in containers if c["name"].startswith("fluid-fuse")]


@pytest.mark.parametrize("native", [True, False])
def test_warm_up_is_a_whole_injection(native: bool) -> None:
    """The sample Dataset and JindoRuntime pass the CRD schemas (CEL rules included) and the sample pod
    gets its sidecar: the warm-up takes the path a real first admission takes."""
    decision = warm_up(InjectorSettings(native_sidecar=native))
    assert decision.outcome == "injected", decision
    response = decision.response["response"]
    assert response["allowed"] is True
    patch = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(_WARM_UP_POD, patch)
    assert _sidecars(patched) == ["fluid-fuse-0"]
    assert _sidecars(_WARM_UP_POD) == []  # the sample itself is left as it was


async def test_server_listens_with_its_start_up_heap_frozen(tmp_path: Path) -> None:
    reloader = TlsReloader(tmp_path / "keys")
    bundle = new_bundle(["127.0.0.1"])
    reloader.load(bundle)
    (tmp_path / "ca.crt").write_bytes(bundle.ca_bundle)
    runner = await start_https(make_app(FileResolver(Manifests()), InjectorSettings()), reloader.context,
                               "127.0.0.1", 0)
    try:
        assert gc.get_freeze_count() > 0
        review = pod_create_review(_WARM_UP_POD, "default", "uid-1")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        async with aiohttp.ClientSession() as session, session.post(
            f"https://127.0.0.1:{bound_port(runner)}/mutate", json=review, ssl=ctx
        ) as answer:
            assert answer.status == 200
            body = await answer.json()
        # this resolver has no Dataset: allowed unchanged, with the warning that says so
        assert body["response"]["uid"] == "uid-1"
        assert body["response"]["allowed"] is True
        assert "patch" not in body["response"]
        assert "belong to no Dataset" in body["response"]["warnings"][0]
    finally:
        await runner.cleanup()
        gc.unfreeze()  # the rest of the test session collects as usual
