"""eddy.kube and the Kubernetes API test server, with the real kubernetes-asyncio client on top."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from eddy import kube
from eddy.api import parse_object
from eddy.kube.flags import add_kube_args, connect, watched_namespace
from eddy.kube.hooks import api_verb, resource_of_path
from eddy.retry import RetryPolicy
from tests.support.kube import KubeApiServer

NS = "default"


def dataload(name: str = "warm", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "data.fluid.io/v1alpha1",
        "kind": "DataLoad",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": {"dataset": {"name": "demo", "namespace": NS}, "target": [{"path": "/", "replicas": 1}]},
    }


async def next_event(events: Any, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
    result: tuple[str, dict[str, Any]] = await asyncio.wait_for(anext(events), timeout)
    return result


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds (AssertionError after `timeout` seconds)."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture
async def k(kube_client: k8s.ApiClient) -> kube.Kube:
    return kube.Kube(kube_client)


# ---------------------------------------------------------------------------------------------- raw client
async def test_custom_objects_api_watch_sees_added_and_status_modified(
    kube_api: KubeApiServer, kube_client: k8s.ApiClient
) -> None:
    co = k8s.CustomObjectsApi(kube_client)
    listing = await co.list_namespaced_custom_object("data.fluid.io", "v1alpha1", NS, "dataloads")
    rv = listing["metadata"]["resourceVersion"]
    created = await co.create_namespaced_custom_object(
        "data.fluid.io", "v1alpha1", NS, "dataloads", dataload()
    )
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    assert parse_object(created).meta.name == "warm"

    w = k8s_watch.Watch()
    seen: list[tuple[str, Any]] = []
    async with w:
        stream = w.stream(co.list_namespaced_custom_object, "data.fluid.io", "v1alpha1", NS, "dataloads",
                          resource_version=rv, timeout_seconds=5)
        async for event in stream:
            seen.append((event["type"], event["object"]))
            if len(seen) == 1:
                await co.patch_namespaced_custom_object_status(
                    "data.fluid.io", "v1alpha1", NS, "dataloads", "warm",
                    {"status": {"phase": "Executing"}, "spec": {"policy": "Cron"}},
                    _content_type="application/merge-patch+json",
                )
            if len(seen) == 2:
                w.stop()
    assert [t for t, _ in seen] == ["ADDED", "MODIFIED"]
    modified = seen[1][1]
    assert modified["status"] == {"phase": "Executing"}
    assert modified["spec"] == dataload()["spec"]  # the status subresource ignored the spec change
    assert modified["metadata"]["generation"] == 1


async def test_core_api_errors_and_typed_watch(kube_api: KubeApiServer, kube_client: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(kube_client)
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    created = await core.create_namespaced_pod(NS, pod)
    assert created.metadata.resource_version
    with pytest.raises(ApiException) as conflict:
        await core.create_namespaced_pod(NS, pod)
    assert conflict.value.status == 409 and '"AlreadyExists"' in conflict.value.body
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_pod("nope", NS)
    assert missing.value.status == 404
    version = await k8s.VersionApi(kube_client).get_code()
    assert version.git_version == "v1.30.0"
    w = k8s_watch.Watch()
    async with w:
        stream = w.stream(core.list_namespaced_pod, NS, timeout_seconds=1)
        names = [e["object"].metadata.name async for e in stream]
    assert names == ["p"]


async def test_stale_resource_version_gets_410_from_watch(kube_api: KubeApiServer, k: kube.Kube) -> None:
    await k.create(kube.CONFIGMAPS, {"metadata": {"name": "a", "namespace": NS}, "data": {"x": "1"}})
    _, rv = await k.list(kube.CONFIGMAPS, NS)
    await k.patch(kube.CONFIGMAPS, "a", {"data": {"x": "2"}}, NS)
    kube_api.compact()
    with pytest.raises(kube.Gone):
        async for _ in k.watch(kube.CONFIGMAPS, NS, rv, timeout_seconds=2):
            pass


# ---------------------------------------------------------------------------------------------- Kube wrapper
async def test_spec_patch_leaves_status_alone_and_bumps_generation(k: kube.Kube) -> None:
    await k.create(kube.DATALOADS, dataload())
    await k.patch_status(kube.DATALOADS, "warm", {"status": {"phase": "Pending"}}, NS)
    patch = {"spec": {"loadMetadata": True}, "status": {"phase": "X"}}
    after = await k.patch(kube.DATALOADS, "warm", patch, NS)
    assert after["status"] == {"phase": "Pending"}
    assert after["spec"]["loadMetadata"] is True
    assert after["metadata"]["generation"] == 2
    labelled = await k.patch(kube.DATALOADS, "warm", {"metadata": {"labels": {"a": "b"}}}, NS)
    assert labelled["metadata"]["generation"] == 2  # metadata-only change: no new generation


async def test_errors_map_to_kube_errors(k: kube.Kube) -> None:
    with pytest.raises(kube.NotFound):
        await k.get(kube.DATASETS, "missing", NS)
    assert await k.get_or_none(kube.DATASETS, "missing", NS) is None
    first = await k.create(kube.DATALOADS, dataload())
    with pytest.raises(kube.AlreadyExists) as exists:
        await k.create(kube.DATALOADS, dataload())
    assert isinstance(exists.value, kube.Conflict) and exists.value.status == 409
    await k.patch(kube.DATALOADS, "warm", {"metadata": {"labels": {"x": "y"}}}, NS)
    with pytest.raises(kube.Conflict):
        await k.replace(kube.DATALOADS, "warm", first, NS)  # first's resourceVersion is stale
    with pytest.raises(kube.Invalid):
        await k.patch(kube.DATALOADS, "warm", [{"op": "test", "path": "/spec/policy", "value": "Cron"}], NS,
                      patch_type="json")
    assert await k.delete(kube.DATALOADS, "missing", NS, missing_ok=True) is None


async def test_json_patch_and_generate_name(k: kube.Kube) -> None:
    doc = dataload()
    doc["metadata"] = {"generateName": "load-", "namespace": NS}
    created = await k.create(kube.DATALOADS, doc)
    name = created["metadata"]["name"]
    assert name.startswith("load-") and len(name) == len("load-") + 5
    patched = await k.patch(kube.DATALOADS, name, [
        {"op": "add", "path": "/spec/target/-", "value": {"path": "/b", "replicas": 2}},
        {"op": "replace", "path": "/spec/dataset/name", "value": "other"},
    ], NS, patch_type="json")
    assert [t["path"] for t in patched["spec"]["target"]] == ["/", "/b"]
    assert patched["spec"]["dataset"]["name"] == "other"


async def test_label_and_field_selectors(k: kube.Kube) -> None:
    for name, labels in [("a", {"tier": "mem", "app": "x"}), ("b", {"tier": "ssd"}), ("c", {})]:
        await k.create(kube.DATALOADS, dataload(name, labels))

    async def names(selector: str) -> list[str]:
        items, rv = await k.list(kube.DATALOADS, NS, label_selector=selector)
        assert int(rv) >= 3
        return [i["metadata"]["name"] for i in items]

    assert await names("tier=mem") == ["a"]
    assert await names("tier!=mem") == ["b", "c"]
    assert await names("tier in (mem,ssd)") == ["a", "b"]
    assert await names("tier notin (mem)") == ["b", "c"]
    assert await names("tier") == ["a", "b"]
    assert await names("!tier") == ["c"]
    assert await names("tier,app=x") == ["a"]
    items, _ = await k.list(kube.DATALOADS, field_selector="metadata.name=b")
    assert [i["metadata"]["name"] for i in items] == ["b"]


async def test_finalizers_delay_deletion(kube_api: KubeApiServer, k: kube.Kube) -> None:
    doc = dataload()
    doc["metadata"]["finalizers"] = ["eddy.io/cleanup"]
    await k.create(kube.DATALOADS, doc)
    answered = await k.delete(kube.DATALOADS, "warm", NS)
    assert answered is not None and answered["metadata"]["deletionTimestamp"]
    still = await k.get(kube.DATALOADS, "warm", NS)
    assert still["metadata"]["deletionTimestamp"]
    await k.patch(kube.DATALOADS, "warm", {"metadata": {"finalizers": None}}, NS)
    assert kube_api.get_object("dataloads", NS, "warm") is None


async def test_owner_garbage_collection(kube_api: KubeApiServer, k: kube.Kube) -> None:
    owner = await k.create(kube.DATASETS, {"metadata": {"name": "demo", "namespace": NS}, "spec": {}})
    ref = {"apiVersion": owner["apiVersion"], "kind": "Dataset", "name": "demo",
           "uid": owner["metadata"]["uid"]}
    await k.create(kube.CONFIGMAPS, {"metadata": {"name": "cfg", "namespace": NS, "ownerReferences": [ref]}})
    await k.delete(kube.DATASETS, "demo", NS)
    assert kube_api.objects("configmaps", NS) == []


async def test_call_counter_and_fault_injection(kube_api: KubeApiServer, k: kube.Kube) -> None:
    kube_api.reset_calls()
    await k.create(kube.PODS, {"metadata": {"name": "p", "namespace": NS}, "spec": {"containers": []}})
    await k.get(kube.PODS, "p", NS)
    await k.list(kube.PODS)
    assert kube_api.calls[("create", "pods")] == 1
    assert kube_api.calls[("get", "pods")] == 1
    assert kube_api.calls[("list", "pods")] == 1
    assert kube_api.calls["total"] == 3
    kube_api.fail_next(2, 503, method="GET", path="/pods/p")
    for _ in range(2):
        with pytest.raises(kube.Unavailable):
            await k.get(kube.PODS, "p", NS)
    assert (await k.get(kube.PODS, "p", NS))["metadata"]["name"] == "p"


async def test_events_are_recorded_and_aggregated(kube_api: KubeApiServer, k: kube.Kube) -> None:
    obj = await k.create(kube.DATALOADS, dataload())
    recorder = kube.EventRecorder(k, "eddy-preloader")
    first = await recorder.record(obj, "Loading", "warming 3 blocks")
    again = await recorder.record(obj, "Loading", "warming 3 blocks")
    assert first is not None and again is not None and again["count"] == 2
    events = kube_api.objects("events", NS)
    assert len(events) == 1
    assert events[0]["involvedObject"]["uid"] == obj["metadata"]["uid"]
    assert events[0]["source"]["component"] == "eddy-preloader"


# ---------------------------------------------------------------------------------------------- Informer
async def test_informer_relists_after_410_and_ends_with_the_right_store(
    kube_api: KubeApiServer, k: kube.Kube
) -> None:
    await k.create(kube.DATALOADS, dataload("a"))
    await k.create(kube.DATALOADS, dataload("b"))
    seen: list[tuple[str, str]] = []

    async def on_event(etype: str, obj: dict[str, Any]) -> None:
        seen.append((etype, obj["metadata"]["name"]))

    informer = kube.Informer(k, kube.DATALOADS, NS, on_event=on_event, backoff_initial=0.01, backoff_max=0.05)
    async with informer:
        await informer.wait_synced(5)
        await informer.wait_idle(5)
        assert sorted(seen) == [("ADDED", "a"), ("ADDED", "b")]
        await eventually(lambda: kube_api.calls[("watch", "dataloads")] == 1)
        # Cut the informer off (its watches fail), change things, and make the server forget them.
        kube_api.fail_next(10**9, 503, path="watch=true")
        kube_api.close_watches()
        await eventually(lambda: informer.errors >= 1)
        await k.create(kube.DATALOADS, dataload("c"))
        await k.delete(kube.DATALOADS, "a", NS)
        await k.patch_status(kube.DATALOADS, "b", {"status": {"phase": "Complete"}}, NS)
        kube_api.compact()
        kube_api.clear_faults()
        await eventually(lambda: informer.relists == 1 and informer.get(NS, "c") is not None)
        await informer.wait_idle(5)
        assert sorted(o["metadata"]["name"] for o in informer.items()) == ["b", "c"]
        assert (informer.get(NS, "b") or {})["status"] == {"phase": "Complete"}
        # ...and after the re-list it watches again and keeps up.
        await k.create(kube.DATALOADS, dataload("d"))
        await eventually(lambda: informer.get(NS, "d") is not None)
    assert kube_api.calls[("list", "dataloads")] == 2
    assert sorted(seen[2:5]) == [("ADDED", "c"), ("DELETED", "a"), ("MODIFIED", "b")]
    assert seen[5:] == [("ADDED", "d")]


async def test_informer_survives_errors_and_label_selector(kube_api: KubeApiServer, k: kube.Kube) -> None:
    kube_api.fail_next(3, 500, method="GET", path="/dataloads")
    await k.create(kube.DATALOADS, dataload("keep", {"eddy": "yes"}))
    await k.create(kube.DATALOADS, dataload("skip", {"eddy": "no"}))
    bad_handler_calls = 0

    async def broken(etype: str, obj: dict[str, Any]) -> None:
        nonlocal bad_handler_calls
        bad_handler_calls += 1
        raise RuntimeError("handler bug")

    informer = kube.Informer(k, kube.DATALOADS, label_selector="eddy=yes", on_event=broken,
                             backoff_initial=0.01, backoff_max=0.05)
    # it never gives up, and each pause is between half and all of the doubling step (tests/test_retry.py)
    assert informer.backoff == RetryPolicy(initial=0.01, maximum=0.05, jitter=0.5, attempts=None)
    async with informer:
        await informer.wait_synced(5)
        assert informer.errors == 3
        assert [o["metadata"]["name"] for o in informer.items()] == ["keep"]
        # a label change moves an object out of the selection: the watch reports it DELETED
        await k.patch(kube.DATALOADS, "keep", {"metadata": {"labels": {"eddy": "no"}}}, NS)
        await k.patch(kube.DATALOADS, "skip", {"metadata": {"labels": {"eddy": "yes"}}}, NS)
        await eventually(lambda: informer.get(NS, "keep") is None and informer.get(NS, "skip") is not None)
        await informer.wait_idle(5)
    assert bad_handler_calls == 3  # ADDED keep, DELETED keep, ADDED skip: each failed, none fatal


def test_resource_paths() -> None:
    assert kube.PODS.path("ns", "p", "status") == "/api/v1/namespaces/ns/pods/p/status"
    assert kube.DATASETS.path() == "/apis/data.fluid.io/v1alpha1/datasets"
    assert kube.PVS.path("ignored", "pv") == "/api/v1/persistentvolumes/pv"
    assert kube.resource_for("apps/v1", "StatefulSet") is kube.STATEFULSETS
    with pytest.raises(ValueError):
        kube.PODS.path(None, "p")


# ---------------------------------------------------------------------------------------------- more kinds
async def test_typed_clients_for_every_group(kube_api: KubeApiServer, kube_client: k8s.ApiClient) -> None:
    apps = k8s.AppsV1Api(kube_client)
    sts = {"metadata": {"name": "w"}, "spec": {"serviceName": "w", "selector": {"matchLabels": {"a": "b"}},
           "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
               {"name": "worker", "image": "eddy:1", "env": [{"name": "A", "value": "1"}]},
               {"name": "helper", "image": "busybox"}]}}}}
    await apps.create_namespaced_stateful_set(NS, sts)
    # strategic merge: containers merge by name, env by name
    worker = {"name": "worker", "image": "eddy:2", "env": [{"name": "B", "value": "2"}]}
    patch = {"spec": {"replicas": 3, "template": {"spec": {"containers": [worker]}}}}
    patched = await apps.patch_namespaced_stateful_set("w", NS, patch)
    containers = patched.spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [("worker", "eddy:2"), ("helper", "busybox")]
    assert [e.name for e in containers[0].env] == ["A", "B"]
    assert patched.metadata.generation == 2 and patched.spec.replicas == 3
    status_patch = {"status": {"replicas": 3, "readyReplicas": 2}}
    status = await apps.patch_namespaced_stateful_set_status("w", NS, status_patch)
    assert status.status.ready_replicas == 2 and status.metadata.generation == 2
    await k8s.AppsV1Api(kube_client).create_namespaced_deployment(NS, {"metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}}}})

    adm = k8s.AdmissionregistrationV1Api(kube_client)
    await adm.create_mutating_webhook_configuration({"metadata": {"name": "eddy"}, "webhooks": [{
        "name": "eddy.fluid.io", "clientConfig": {"caBundle": ""}, "admissionReviewVersions": ["v1"],
        "sideEffects": "None"}]})
    await adm.patch_mutating_webhook_configuration(
        "eddy", [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}])
    stored = kube_api.get_object("mutatingwebhookconfigurations", None, "eddy")
    assert stored is not None and stored["webhooks"][0]["clientConfig"] == {"caBundle": "Q0E="}

    coord = k8s.CoordinationV1Api(kube_client)
    lease_doc = {"metadata": {"name": "ctl"}, "spec": {"holderIdentity": "me"}}
    lease = await coord.create_namespaced_lease(NS, lease_doc)
    lease.spec.holder_identity = "you"
    await coord.replace_namespaced_lease("ctl", NS, lease)
    with pytest.raises(ApiException) as stale:
        await coord.replace_namespaced_lease("ctl", NS, lease)  # same resourceVersion again
    assert stale.value.status == 409

    core = k8s.CoreV1Api(kube_client)
    await core.create_namespace({"metadata": {"name": "other"}})
    secret_doc = {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
    secret = await core.create_namespaced_secret("other", secret_doc)
    assert secret.data == {"k": "dg=="} and secret.string_data is None
    await core.create_persistent_volume({"metadata": {"name": "default-demo"}, "spec": {"capacity": {
        "storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "csi": {"driver": "fuse.csi.fluid.io",
        "volumeHandle": "default-demo"}}})
    await core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "demo"}, "spec": {
        "accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}},
        "volumeName": "default-demo"}})
    await core.create_namespaced_service(NS, {"metadata": {"name": "w"}, "spec": {"clusterIP": "None"}})
    await core.create_namespaced_config_map("other", {"metadata": {"name": "c"}, "data": {"eddy.yaml": "x"}})
    await core.create_namespaced_event(NS, {"metadata": {"name": "e1"}, "involvedObject": {"name": "w"},
                                            "reason": "R", "message": "m", "type": "Normal"})
    await k8s.EventsV1Api(kube_client).create_namespaced_event(NS, {
        "metadata": {"name": "e2"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "R",
        "action": "A", "reportingController": "eddy", "reportingInstance": "x", "type": "Normal"})
    assert [o["metadata"]["name"] for o in kube_api.objects("events")] == ["e1"]
    assert [o["metadata"]["name"] for o in kube_api.objects("events.events.k8s.io")] == ["e2"]
    pvs = await core.list_persistent_volume()
    assert [p.metadata.name for p in pvs.items] == ["default-demo"]
    every_cm = await core.list_config_map_for_all_namespaces()
    assert [c.metadata.namespace for c in every_cm.items] == ["other"]
    ns_list = await core.list_namespace()
    assert [n.status.phase for n in ns_list.items] == ["Active"]


async def test_watch_all_namespaces_timeout_and_shutdown(kube_api: KubeApiServer, k: kube.Kube) -> None:
    await k.create(kube.CONFIGMAPS, {"metadata": {"name": "a", "namespace": "x"}})
    await k.create(kube.CONFIGMAPS, {"metadata": {"name": "b", "namespace": "y"}})
    stream = k.watch(kube.CONFIGMAPS, timeout_seconds=1)
    events = [(t, o["metadata"].get("namespace", "")) async for t, o in stream]
    assert events == [("ADDED", "x"), ("ADDED", "y"), ("BOOKMARK", "")]  # all namespaces; ends at timeout
    # an open watch ends cleanly when the server shuts down
    stream = k.watch(kube.CONFIGMAPS, "x", timeout_seconds=60, bookmarks=False)
    assert (await next_event(stream))[0] == "ADDED"
    pending = asyncio.ensure_future(next_event(stream))
    await asyncio.sleep(0.05)
    await kube_api.stop()
    with pytest.raises((StopAsyncIteration, kube.Unavailable)):
        await asyncio.wait_for(pending, 5)


def write_kubeconfig(path: Any, current: str, **servers: str) -> str:
    """A kubeconfig with one context (and cluster) per `name=url`, all with the token `test-token`."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": "u", "user": {"token": "test-token"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "u"}} for n in servers],
    }
    path.write_text(json.dumps(doc))  # JSON is YAML
    return str(path)


async def test_make_api_client_from_kubeconfig(kube_api: KubeApiServer, tmp_path: Any) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", "t", t=kube_api.url)
    async with kube.Kube(await kube.make_api_client(kubeconfig=config)) as k:
        assert (await k.version())["gitVersion"] == "v1.30.0"
    assert kube_api.last_headers.get("Authorization") == "Bearer test-token"
    kube_api.git_version = "v1.28.3"
    async with await kube.Kube.connect(url=kube_api.url) as k:
        version = await k.version()
    assert (version["major"], version["minor"]) == ("1", "28")
    assert "Authorization" not in kube_api.last_headers


async def test_server_rejects_what_the_real_one_rejects(kube_api: KubeApiServer, k: kube.Kube) -> None:
    with pytest.raises(kube.NotFound):
        await k.request("GET", "/apis/data.fluid.io/v1alpha1/namespaces/default/nosuchthings")
    with pytest.raises(kube.NotFound):
        await k.patch_status(kube.CONFIGMAPS, "a", {"status": {}}, NS)  # no status subresource
    await k.create(kube.CONFIGMAPS, {"metadata": {"name": "a", "namespace": NS}})
    with pytest.raises(kube.BadRequest):
        await k.patch(kube.CONFIGMAPS, "a", {"data": {}}, NS, patch_type="json")  # not a list of ops
    with pytest.raises(kube.Conflict):
        stale = {"metadata": {"resourceVersion": "12345"}, "data": {"x": "y"}}
        await k.patch(kube.CONFIGMAPS, "a", stale, NS)
    with pytest.raises(kube.Invalid):
        await k.create(kube.CONFIGMAPS, {"metadata": {"namespace": NS}})
    created = await k.create(kube.DATALOADS, {**dataload(), "status": {"phase": "Complete"}})
    assert "status" not in created  # status on create is dropped for kinds with the subresource
    groups = await k.request("GET", "/apis")
    assert "data.fluid.io" in [g["name"] for g in groups["groups"]]
    resources = await k.request("GET", "/apis/data.fluid.io/v1alpha1")
    assert {"datasets", "dataloads/status"} <= {r["name"] for r in resources["resources"]}


async def test_delete_collection_and_exact_list_of_a_compacted_version(
    kube_api: KubeApiServer, k: kube.Kube
) -> None:
    for name, tier in [("a", "mem"), ("b", "mem"), ("c", "ssd")]:
        meta = {"name": name, "namespace": NS, "labels": {"tier": tier}}
        await k.create(kube.CONFIGMAPS, {"metadata": meta})
    _, rv = await k.list(kube.CONFIGMAPS, NS)
    await k.request("DELETE", kube.CONFIGMAPS.path(NS), [("labelSelector", "tier=mem")])
    assert [o["metadata"]["name"] for o in kube_api.objects("configmaps")] == ["c"]
    kube_api.compact()
    with pytest.raises(kube.Gone):
        exact = [("resourceVersion", rv), ("resourceVersionMatch", "Exact")]
        await k.request("GET", kube.CONFIGMAPS.path(NS), exact)
    items, _ = await k.list(kube.CONFIGMAPS, NS)  # a plain list is always served from the current state
    assert [i["metadata"]["name"] for i in items] == ["c"]


async def test_watch_carries_big_objects_and_unreachable_server_is_unavailable(
    kube_api: KubeApiServer, k: kube.Kube
) -> None:
    big = "x" * 300_000  # one watch line far beyond aiohttp's readline buffer
    kube_api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"b": big}})
    events = [(t, o) async for t, o in k.watch(kube.CONFIGMAPS, NS, timeout_seconds=1, bookmarks=False)]
    assert [t for t, _ in events] == ["ADDED"] and events[0][1]["data"]["b"] == big
    url = kube_api.url
    await kube_api.stop()
    async with await kube.Kube.connect(url=url) as gone:
        with pytest.raises(kube.Unavailable) as unavailable:
            await gone.get(kube.PODS, "p", NS)
    assert unavailable.value.status == 0


async def test_informer_skips_malformed_events(k: kube.Kube) -> None:
    informer = kube.Informer(k, kube.DATALOADS, NS)
    informer._apply("ADDED", {"metadata": {}})  # no name
    informer._apply("SURPRISE", dataload())
    informer._apply("ADDED", {**dataload(), "metadata": {**dataload()["metadata"], "resourceVersion": "7"}})
    assert [o["metadata"]["name"] for o in informer.items()] == ["warm"]
    assert informer.resource_version == "7"


async def test_replace_of_a_stale_read_is_a_conflict(k: kube.Kube) -> None:
    """Optimistic concurrency as the webhook's certificate renewal uses it: `replace` carries the
    resourceVersion it read, so a write in between makes it a Conflict; a fresh read then succeeds."""
    body = {"metadata": {"name": "n", "namespace": NS}, "data": {"count": "0"}}
    read = await k.create(kube.CONFIGMAPS, body)
    await k.patch(kube.CONFIGMAPS, "n", {"data": {"count": "10"}}, NS)  # someone else writes first
    with pytest.raises(kube.Conflict):
        await k.replace(kube.CONFIGMAPS, "n", {**read, "data": {"count": "1"}}, NS)
    live = await k.get(kube.CONFIGMAPS, "n", NS)
    written = await k.replace(kube.CONFIGMAPS, "n", {**live, "data": {"count": "11"}}, NS)
    assert written["data"]["count"] == "11"


# ---------------------------------------------------------------------------------------------- request hooks
async def test_request_hooks_see_every_call(
    kube_api: KubeApiServer, k: kube.Kube, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[kube.ApiRequest] = []
    k.add_request_hook(seen.append)
    k.add_request_hook(lambda request: [][0])  # a failing hook is logged; the call's outcome stands
    cm = {"metadata": {"name": "a", "namespace": NS, "labels": {"x": "y"}}}
    await k.create(kube.CONFIGMAPS, cm)
    await k.get(kube.CONFIGMAPS, "a", NS)
    await k.list(kube.CONFIGMAPS, NS)
    with pytest.raises(kube.NotFound):
        await k.get(kube.CONFIGMAPS, "nope", NS)
    kube_api.fail_next(status=503, path="/configmaps/a")
    with pytest.raises(kube.Unavailable):
        await k.patch(kube.CONFIGMAPS, "a", {"data": {"k": "v"}}, NS)
    [_ async for _ in k.watch(kube.CONFIGMAPS, NS, timeout_seconds=1, bookmarks=False)]
    await k.request("DELETE", kube.CONFIGMAPS.path(NS), [("labelSelector", "x=y")])
    await k.delete(kube.CONFIGMAPS, "gone", NS, missing_ok=True)
    await k.version()
    assert [(r.verb, r.method, r.resource, r.status) for r in seen] == [
        ("create", "POST", "configmaps", 201),
        ("get", "GET", "configmaps", 200),
        ("list", "GET", "configmaps", 200),
        ("get", "GET", "configmaps", 404),
        ("patch", "PATCH", "configmaps", 503),
        ("watch", "GET", "configmaps", 200),
        ("deletecollection", "DELETE", "configmaps", 200),
        ("delete", "DELETE", "configmaps", 404),
        ("get", "GET", "", 200),
    ]
    assert seen[0].path == f"/api/v1/namespaces/{NS}/configmaps" and seen[-1].path == "/version"
    assert [r.writes for r in seen].count(True) == 4 and all(r.seconds >= 0 for r in seen)
    assert caplog.text.count("request hook") == len(seen)


async def test_request_hook_of_an_unanswered_call_has_status_0(kube_api: KubeApiServer) -> None:
    seen: list[kube.ApiRequest] = []
    url = kube_api.url
    await kube_api.stop()
    async with await kube.Kube.connect(url=url) as gone:
        gone.add_request_hook(seen.append)
        with pytest.raises(kube.Unavailable):
            await gone.get(kube.PODS, "p", NS)
        with pytest.raises(kube.Unavailable):
            await anext(gone.watch(kube.PODS, NS))
    assert [(r.verb, r.status) for r in seen] == [("get", 0), ("watch", 0)]


def test_resource_and_verb_of_a_path() -> None:
    assert resource_of_path("/api/v1/namespaces/ns/pods/p/binding") == ("pods/binding", "p")
    assert resource_of_path("/apis/data.fluid.io/v1alpha1/namespaces/ns/dataloads/d/status") == (
        "dataloads/status", "d")
    assert resource_of_path("/apis/data.fluid.io/v1alpha1/dataloads") == ("dataloads", "")
    assert resource_of_path("/api/v1/nodes/n") == ("nodes", "n")
    assert resource_of_path("/api/v1/namespaces/ns") == ("namespaces", "ns")
    assert resource_of_path("/api/v1/namespaces/ns/status") == ("namespaces/status", "ns")
    assert resource_of_path("/api/v1/namespaces/ns/pods") == ("pods", "")
    assert resource_of_path("/apis/data.fluid.io/v1alpha1") == ("", "")
    assert resource_of_path("/version") == ("", "")
    assert api_verb("GET", "/api/v1/namespaces/ns/pods") == "list"
    assert api_verb("GET", "/api/v1/namespaces/ns/pods", watch=True) == "watch"
    assert api_verb("GET", "/apis") == "get"
    assert api_verb("PUT", "/api/v1/namespaces/ns/pods/p") == "update"


# ---------------------------------------------------------------------------------------------- flags
async def test_kube_flags_pick_the_kubeconfig_context(kube_api: KubeApiServer, tmp_path: Any) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", "elsewhere", here=kube_api.url,
                              elsewhere="http://127.0.0.1:9")
    parser = argparse.ArgumentParser()
    add_kube_args(parser, watch_namespace=True)
    args = parser.parse_args(["--kubeconfig", config, "--context", "here", "--namespace", "all"])
    assert watched_namespace(args) is None
    assert watched_namespace(parser.parse_args(["--namespace", "team-a"])) == "team-a"
    async with await connect(args) as k:
        assert (await k.version())["gitVersion"] == "v1.30.0"  # the current context's server is down


def test_the_package_loads_its_names_on_first_use() -> None:
    """`eddy.kube.flags` and the light names load no client library (the webhook's local mode imports
    them); every name of `__all__` resolves."""
    code = ("import sys, eddy.kube.flags; from eddy.kube import CONFIGMAPS, NotFound, ApiRequest; "
            "print('kubernetes_asyncio' in sys.modules); import eddy.kube as k; "
            "print(all(getattr(k, n) is not None for n in k.__all__), 'kubernetes_asyncio' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "True", "True"], result.stderr
