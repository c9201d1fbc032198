"""Cluster mode against a Kubernetes API test server on 127.0.0.1, through the real kubernetes-asyncio
client: the TLS Secret shared by replicas, the caBundle, renewal, and admissions served from watch-fed
caches (no API call per admission), verified with the CA read back from the webhook configuration."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from eddy import kube
from eddy.kube.metrics import api_request_counter
from sandbox.apiserver import KubeApiServer
from tests.test_injector import seed_pod
from tests.test_webhook import SECRET_VALUES, dataset_doc, review
from webhook.certs import CertBundle, TlsReloader, service_names
from webhook.cluster import InformerCache, KubeSecretStore, NativeSidecarState, informers
from webhook.resolver import CachedResolver
from webhook.tlssecret import CertKeeper, Conflict

REPO = Path(__file__).parents[1]
MWC = REPO / "manifests" / "webhook" / "mutatingwebhook.yaml"
HOSTS = [*service_names("eddy-webhook", "eddy-system"), "127.0.0.1"]


@pytest.fixture
async def api(kube_api: KubeApiServer) -> AsyncIterator[KubeApiServer]:
    kube_api.put(yaml.safe_load(MWC.read_text()))
    yield kube_api


def calls(api: KubeApiServer) -> int:
    return sum(api.calls.values())


async def watches_open(api: KubeApiServer, resources: tuple[str, ...]) -> None:
    """Wait until the webhook's informers have opened their watch streams (set up once, not per admission)."""
    async with asyncio.timeout(20):
        while not all(api.calls[("watch", r)] for r in resources):  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(0.05)


def keeper(client: kube.Kube, tmp: Path, **kw: Any) -> CertKeeper:
    return CertKeeper(
        KubeSecretStore(client),
        TlsReloader(tmp),
        namespace="eddy-system",
        secret="eddy-webhook-tls",
        webhook_config="eddy-webhook",
        hosts=HOSTS,
        **kw,
    )


def ca_bundles(api: KubeApiServer) -> list[bytes]:
    config = api.get_object("mutatingwebhookconfigurations", None, "eddy-webhook")
    assert config is not None
    return [base64.b64decode(h["clientConfig"]["caBundle"]) for h in config["webhooks"]]


async def test_secret_shared_by_replicas_ca_bundle_and_renewal(api: KubeApiServer, tmp_path: Path) -> None:
    client = await kube.Kube.connect(url=api.url)
    try:
        one, two = keeper(client, tmp_path / "one"), keeper(client, tmp_path / "two")
        # Two replicas start at once: one creates the Secret, the other adopts it (409 handled).
        actions = sorted(await asyncio.gather(one.sync(), two.sync()))
        assert actions in (["adopted", "created"], ["created", "kept"])
        assert one.reloader.bundle == two.reloader.bundle is not None
        secret = api.get_object("secrets", "eddy-system", "eddy-webhook-tls")
        assert secret is not None
        bundle = CertBundle.from_secret_data(secret["data"])
        assert bundle == one.reloader.bundle
        assert ca_bundles(api) == [bundle.ca_bundle, bundle.ca_bundle]  # both webhook entries
        assert await one.sync() == "kept"
        # 340 days later the serving certificate is within 30 days of its end: renewed once.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
        assert await two.sync(later) == "renewed"
        assert two.reloader.bundle != bundle and two.reloader.bundle is not None
        assert two.reloader.bundle.ca_cert == bundle.ca_cert  # the CA has years left: kept
        assert await one.sync(later) == "kept"  # the other replica reloads what the first renewed
        assert one.reloader.bundle == two.reloader.bundle
        # Near the CA's end the CA rotates too, and the caBundle trusts old and new CA meanwhile.
        much_later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3640)
        assert await one.sync(much_later) == "renewed"
        rotated = one.reloader.bundle
        assert rotated is not None and rotated.ca_cert != bundle.ca_cert
        assert ca_bundles(api)[0] == rotated.ca_cert + bundle.ca_cert
        # A Secret holding garbage is replaced rather than served.
        broken = api.get_object("secrets", "eddy-system", "eddy-webhook-tls")
        assert broken is not None
        api.put({**broken, "data": {"tls.crt": "bm90IGEgY2VydA=="}})
        assert await two.sync() == "renewed"
    finally:
        await client.close()


def cluster_objects(api: KubeApiServer, kubelet: str = "v1.30.1") -> None:
    for name, phase in (("serverless-data", "Bound"), ("fresh-data", "")):
        doc = dataset_doc(name, "default", "access-key")
        if phase:
            doc["status"] = {"phase": phase}
        api.put(doc)
        api.put(
            {
                "apiVersion": "data.fluid.io/v1alpha1",
                "kind": "JindoRuntime",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"replicas": 1},
            },
        )
    api.put(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "serverless-data",
                "namespace": "default",
                "labels": {
                    "fluid.io/dataset-id": "default-serverless-data",
                    "fluid.io/s-default-serverless-data": "true",
                },
            },
            "spec": {"accessModes": ["ReadOnlyMany"]},
        },
    )
    api.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "access-key", "namespace": "default"},
            "data": {"k": base64.b64encode(SECRET_VALUES[0].encode()).decode()},
        },
    )
    api.put(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-1"},
            "status": {"nodeInfo": {"kubeletVersion": kubelet}},
        },
    )


async def start_cluster_webhook(
    api: KubeApiServer, tmp: Path, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    cmd = [
        sys.executable,
        "-m",
        "eddy_cli.main",
        "webhook",
        "--kube-url",
        api.url,
        *([] if env else ["--namespace", "eddy-system"]),
        "--service",
        "eddy-webhook",
        "--webhook-config",
        "eddy-webhook",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--cert-dir",
        str(tmp / "tls"),
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(30):
            while line := await proc.stdout.readline():
                seen += line
                if match := re.search(rb"https://127\.0\.0\.1:(\d+)/mutate", line):
                    return proc, int(match.group(1))
    except TimeoutError:
        pass
    proc.kill()
    await proc.wait()
    raise AssertionError(f"cluster webhook did not start: {seen.decode()[-2000:]}")


async def test_cluster_webhook_admits_from_caches(api: KubeApiServer, tmp_path: Path) -> None:
    cluster_objects(api)
    proc, port = await start_cluster_webhook(api, tmp_path)
    drain = asyncio.create_task(proc.stdout.read())  # type: ignore[union-attr]
    try:
        ca = tmp_path / "ca.crt"
        ca.write_bytes(ca_bundles(api)[0])  # the client trusts what the webhook wrote into the config
        ctx = ssl.create_default_context(cafile=str(ca))
        url = f"https://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:

            async def admit(pod: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
                async with session.post(f"{url}/mutate", json=review(pod, namespace), ssl=ctx) as r:
                    assert r.status == 200
                    body = await r.read()
                assert not any(s.encode() in body for s in SECRET_VALUES)
                assert base64.b64encode(SECRET_VALUES[0].encode()) not in body
                response: dict[str, Any] = json.loads(body)["response"]
                return response

            async with asyncio.timeout(20):
                while True:
                    async with session.get(f"{url}/readyz", ssl=ctx) as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
            await watches_open(api, ("persistentvolumeclaims", "datasets", "jindoruntimes", "nodes"))
            pod = seed_pod("deployment-eci.yaml")
            before = calls(api)
            for _ in range(20):
                response = await admit(pod)
            assert calls(api) == before, "steady state: no API call per admission"
            out = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
            kubernetes_validate.validate(out, "1.30", strict=True)
            assert out["spec"]["initContainers"][0]["restartPolicy"] == "Always"  # v1.30 everywhere: native
            assert "warnings" not in response
            # Not yet bound: injected, with a warning.
            fresh = seed_pod("deployment-eci.yaml")
            fresh["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "fresh-data"
            response = await admit(fresh)
            assert "patch" in response and any("not bound" in w for w in response["warnings"])
            # Not a Dataset's claim: one cold GET, then remembered; allowed unchanged with a warning.
            other = seed_pod("deployment-eci.yaml")
            other["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "home-dirs"
            before = calls(api)
            response = await admit(other)
            assert "patch" not in response and any("home-dirs" in w for w in response["warnings"])
            await admit(other)
            assert calls(api) == before + 1, api.requests[-3:]
            async with session.get(f"{url}/metrics", ssl=ctx) as r:
                metrics = await r.text()
            # the cold GET, counted
            assert 'eddy_webhook_api_requests_total{resource="datasets",verb="get"} 1.0' in metrics
            assert ('eddy_webhook_api_requests_total{resource="mutatingwebhookconfigurations",verb="get"}'
                    in metrics)
            # A Dataset created after start arrives through the watch.
            api.put(
                {**dataset_doc("late-data", "default", "access-key"), "status": {"phase": "Bound"}},
            )
            late = seed_pod("deployment-acs.yaml")
            late["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "late-data"
            await asyncio.sleep(0.5)
            assert "patch" in await admit(late)
            # An old (virtual) kubelet joins: classic sidecars from then on.
            api.put(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": "virtual-kubelet"},
                    "status": {"nodeInfo": {"kubeletVersion": "v1.26.3-vk-2.11"}},
                },
            )
            async with asyncio.timeout(10):
                while True:
                    response = await admit(pod)
                    out = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
                    if "initContainers" not in out["spec"]:
                        break
                    await asyncio.sleep(0.3)
            assert out["spec"]["containers"][0]["name"] == "fluid-fuse-0"
            kubernetes_validate.validate(out, "1.30", strict=True)
            async with session.get(f"{url}/metrics", ssl=ctx) as r:
                text = await r.text()
            assert 'eddy_webhook_admissions_total{outcome="injected"}' in text
            assert "eddy_webhook_native_sidecars 0.0" in text
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await drain
    assert proc.returncode == 0


async def test_cluster_webhook_learns_image_and_namespace_from_its_pod(
    api: KubeApiServer, tmp_path: Path
) -> None:
    """No --image and no --namespace: both come from the webhook's own Pod (downward API names it)."""
    cluster_objects(api)
    meta = {"name": "eddy-webhook-7d4f-abcde", "namespace": "data-plane"}
    api.put({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
             "spec": {"containers": [{"name": "webhook", "image": "registry.example/eddy:1.2.3"}]}})
    env = {"POD_NAME": "eddy-webhook-7d4f-abcde", "POD_NAMESPACE": "data-plane", "CONTAINER_NAME": "webhook"}
    proc, port = await start_cluster_webhook(api, tmp_path, env)
    drain = asyncio.create_task(proc.stdout.read())  # type: ignore[union-attr]
    try:
        # Its TLS Secret lives in its own namespace, learnt from the environment.
        assert api.get_object("secrets", "data-plane", "eddy-webhook-tls") is not None
        ca = tmp_path / "ca.crt"
        ca.write_bytes(ca_bundles(api)[0])
        ctx = ssl.create_default_context(cafile=str(ca))
        await watches_open(api, ("persistentvolumeclaims", "datasets", "jindoruntimes"))
        pod = seed_pod("deployment-eci.yaml")
        async with aiohttp.ClientSession() as session, session.post(
            f"https://127.0.0.1:{port}/mutate", json=review(pod, "default"), ssl=ctx
        ) as r:
            assert r.status == 200
            response = (await r.json())["response"]
        out = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
        sidecars = [c for c in [*out["spec"].get("initContainers", []), *out["spec"]["containers"]]
                    if c["name"].startswith("fluid-fuse")]
        assert sidecars and {c["image"] for c in sidecars} == {"registry.example/eddy:1.2.3"}
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await drain
    assert proc.returncode == 0


async def test_informer_relists_after_gone_and_follows_deletes(kube_api: KubeApiServer) -> None:
    kube_api.put(dataset_doc("one", "default", "k"))
    async with kube.Kube(await kube.make_api_client(url=kube_api.url)) as client, informers(
        client, watch_nodes=False
    ) as found:
        assert sorted(found) == ["datasets", "pvcs", "runtimes"]
        informer = found["datasets"]
        assert informer.synced and informer.get("default", "one") is not None
        await watches_open(kube_api, ("datasets",))
        # Cut the Dataset watch off (its re-watches fail), change things unseen and make the server
        # forget them: the informer's next watch (from its old resourceVersion) gets 410 Gone and lists.
        kube_api.fail_next(10**9, 503, path="/datasets?watch=true")
        kube_api.close_watches()
        async with asyncio.timeout(10):
            while not informer.errors:  # noqa: ASYNC110 - polls the informer
                await asyncio.sleep(0.05)
        kube_api.put(dataset_doc("unseen", "default", "k"))
        kube_api.compact()
        kube_api.put(dataset_doc("two", "team-a", "k"))
        kube_api.clear_faults()
        async with asyncio.timeout(10):
            while informer.get("team-a", "two") is None:  # noqa: ASYNC110 - polls the informer's store
                await asyncio.sleep(0.05)
        assert informer.get("default", "unseen") is not None
        kube_api.remove("datasets", "default", "one")
        async with asyncio.timeout(10):
            while informer.get("default", "one") is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert kube_api.calls[("list", "datasets")] == 2  # the first list, and the re-list after 410
        assert informer.relists == 1


async def test_secret_store_maps_404_and_409(api: KubeApiServer) -> None:
    """What CertKeeper relies on: a missing object reads as None, a 409 is tlssecret's Conflict, other
    errors pass through as eddy.kube errors (the renewal loop logs them and retries)."""
    registry = CollectorRegistry()
    async with await kube.Kube.connect(url=api.url) as client:
        client.add_request_hook(api_request_counter("webhook", registry))
        store = KubeSecretStore(client)
        assert await store.get_secret("eddy-system", "nope") is None
        assert await store.get_webhook_config("nope") is None
        assert await store.get_webhook_config("eddy-webhook") is not None
        body = {"metadata": {"name": "s", "namespace": "eddy-system"}, "data": {}}
        created = await store.create_secret("eddy-system", body)
        with pytest.raises(Conflict):
            await store.create_secret("eddy-system", body)  # 409 AlreadyExists
        stale = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        assert created["metadata"]["resourceVersion"] != "1"
        with pytest.raises(Conflict):
            await store.replace_secret("eddy-system", "s", stale)  # 409 Conflict
        api.fail_next(status=500, path="/secrets/s")
        with pytest.raises(kube.Unavailable):
            await store.get_secret("eddy-system", "s")
    calls = {(verb, resource): registry.get_sample_value("eddy_webhook_api_requests_total",
                                                         {"verb": verb, "resource": resource})
             for verb, resource in (("get", "secrets"), ("create", "secrets"), ("update", "secrets"),
                                    ("get", "mutatingwebhookconfigurations"))}
    assert calls == {("get", "secrets"): 2, ("create", "secrets"): 2, ("update", "secrets"): 1,
                     ("get", "mutatingwebhookconfigurations"): 2}  # failed calls count too


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - polls what an informer's handler keeps
            await asyncio.sleep(0.02)


def kubelet_node(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"nodeInfo": {"kubeletVersion": version}}}


async def test_native_sidecars_follow_node_events(kube_api: KubeApiServer) -> None:
    """The decision is kept by the node informer's handler (no scan per admission): a node joining,
    upgraded, leaving, and one that joined unseen while the watch was cut, delivered by the re-list."""
    cluster_objects(kube_api)  # node-1 runs v1.30.1
    async with kube.Kube(await kube.make_api_client(url=kube_api.url)) as client:
        nodes = kube.Informer(client, kube.NODES)
        state = NativeSidecarState("auto", "v1.30.0", nodes)
        assert not state.enabled()  # nodes not listed yet: classic sidecars, which every kubelet runs
        async with nodes:
            await until(state.enabled)
            await client.create(kube.NODES, kubelet_node("virtual-kubelet", "v1.26.3-vk-2.11"))
            await until(lambda: not state.enabled())
            assert state.too_old == {"virtual-kubelet"}
            await client.patch_status(kube.NODES, "virtual-kubelet",
                                      {"status": {"nodeInfo": {"kubeletVersion": "v1.29.2-vk-2.12"}}})
            await until(state.enabled)  # upgraded in place: MODIFIED
            await client.create(kube.NODES, kubelet_node("edge", "unknown"))
            await until(lambda: not state.enabled())
            await client.delete(kube.NODES, "edge")
            await until(state.enabled)  # DELETED
            assert state.too_old == set()
            # An old node joins while the watch is cut and the server forgets the history: the watch
            # gets 410 Gone, and the re-list's difference reaches the handler.
            await watches_open(kube_api, ("nodes",))
            kube_api.fail_next(10**9, 503, path="/nodes?watch=true")
            kube_api.close_watches()
            await until(lambda: nodes.errors > 0)
            kube_api.put(kubelet_node("unseen", "v1.27.0"))
            kube_api.compact()
            kube_api.clear_faults()
            await until(lambda: not state.enabled())
            assert nodes.relists == 1 and state.too_old == {"unseen"}
            # Made after the list (as the server's app is): seeded from the store.
            assert NativeSidecarState("auto", "v1.30.0", nodes).too_old == {"unseen"}
            kube_api.remove("nodes", None, "unseen")
            await until(state.enabled)
            assert not NativeSidecarState("auto", "v1.28.9", nodes).enabled()  # the API server counts too
            assert NativeSidecarState("on", "v1.28.9", nodes).enabled()
            assert not NativeSidecarState("off", "v1.30.0", nodes).enabled()


async def seen(informer: kube.Informer, written: dict[str, Any]) -> None:
    meta = written["metadata"]
    await until(lambda: (informer.get(meta["namespace"], meta["name"]) or {}).get("metadata", {})
                .get("resourceVersion") == meta["resourceVersion"])


async def test_status_writes_do_not_parse_again_and_spec_changes_do(kube_api: KubeApiServer) -> None:
    """The controller writes status often: the resolver keeps the parsed Dataset and JindoRuntime across
    status-only writes (reading the phase from the new document), and parses again at once on a spec
    or label change."""
    cluster_objects(kube_api)
    async with kube.Kube(await kube.make_api_client(url=kube_api.url)) as client, informers(
        client, watch_nodes=False
    ) as found:

        async def fetch(namespace: str, name: str) -> dict[str, Any] | None:
            return await client.get_or_none(kube.DATASETS, name, namespace)

        resolver = CachedResolver(InformerCache(found["datasets"]), InformerCache(found["pvcs"]),
                                  InformerCache(found["runtimes"]), fetch)
        datasets, runtimes = resolver.dataset_models, resolver.runtime_models

        async def resolve() -> Any:
            return (await resolver.resolve("default", ["serverless-data"]))["serverless-data"]

        first = await resolve()
        assert first.bound and first.runtime is not None
        assert (datasets.parses, runtimes.parses) == (1, 1)
        assert await resolve() == first and (datasets.parses, runtimes.parses) == (1, 1)
        for phase, bound in (("NotBound", False), ("Bound", True)):
            await seen(found["runtimes"], await client.patch_status(
                kube.JINDORUNTIMES, "serverless-data", {"status": {"workerNumberReady": 1}}, "default"))
            await seen(found["datasets"], await client.patch_status(
                kube.DATASETS, "serverless-data", {"status": {"phase": phase}}, "default"))
            now = await resolve()
            assert now.bound is bound and (bound or "NotBound" in now.why_not_bound)
            assert now.dataset is first.dataset and now.runtime is first.runtime
            assert (datasets.parses, runtimes.parses) == (1, 1), "status-only writes: no parse"
        changed = await client.patch(kube.DATASETS, "serverless-data",
                                     {"spec": {"accessModes": ["ReadWriteMany"]}}, "default")
        assert changed["metadata"]["generation"] == 2
        await seen(found["datasets"], changed)
        now = await resolve()
        assert now.dataset.access_modes == ("ReadWriteMany",) and datasets.parses == 2
        fuse = {"spec": {"fuse": {"args": ["--cache-mib=256"]}}}
        await seen(found["runtimes"],
                   await client.patch(kube.JINDORUNTIMES, "serverless-data", fuse, "default"))
        now = await resolve()
        assert now.runtime.fuse.args == ("--cache-mib=256",) and runtimes.parses == 2
        await seen(found["datasets"], await client.patch(
            kube.DATASETS, "serverless-data", {"metadata": {"labels": {"team": "a"}}}, "default"))
        now = await resolve()
        assert now.dataset.meta.labels == {"team": "a"} and datasets.parses == 3  # labels: no generation
        assert (datasets.parses, runtimes.parses) == (3, 2)
