"""The sandbox API server as kubectl and in-cluster clients see it: Eddy's manifests applied with the
real kubectl, CRD printer columns and pod Tables, graceful pod deletion, ServiceAccount admission,
binding, logs, and kubernetes-asyncio's in-cluster configuration over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from eddy import kube
from sandbox.apiserver import ApiError, KubeApiServer
from sandbox.builtin import TOKEN_MOUNT
from tests.support.kube import kubectl, write_kubeconfig

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parent.parent
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


async def http(
    server: KubeApiServer, method: str, path: str, *, accept: str = "application/json", body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.url + path, json=body, headers={"Accept": accept}) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if resp.content_type.endswith("json") else text


@contextlib.asynccontextmanager
async def client(server: KubeApiServer) -> Any:
    async with await kube.Kube.connect(url=server.url) as k:
        yield k


def must(obj: dict[str, Any] | None) -> dict[str, Any]:
    assert obj is not None
    return obj


def pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox"}], **spec},
    }


async def test_kubectl_applies_eddys_manifests_and_prints_crd_columns(
    sandbox_api: KubeApiServer, tmp_path: Path
) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", sandbox_api)
    rc, rendered, err = await kubectl(config, "kustomize", str(REPO / "manifests"))
    assert rc == 0, err
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    rc, out, err = await kubectl(config, "apply", "-k", str(REPO / "manifests"))
    assert rc == 0, f"kubectl apply failed:\n{out}\n{err}"
    for doc in docs:  # every object of the rendering is stored
        kind = sandbox_api.kinds.by_kind(doc["apiVersion"], doc["kind"])
        assert kind is not None, doc["kind"]
        ns = doc["metadata"].get("namespace") if kind.namespaced else None
        stored = sandbox_api.get_object(
            f"{kind.plural}.{kind.group}" if kind.group else kind.plural, ns, doc["metadata"]["name"]
        )
        assert stored is not None, f"{doc['kind']} {doc['metadata']['name']} was not created"
        assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]
    crds = sandbox_api.objects("customresourcedefinitions")
    assert {c["metadata"]["name"] for c in crds} >= {
        "datasets.data.fluid.io",
        "dataloads.data.fluid.io",
        "jindoruntimes.data.fluid.io",
    }
    for crd in crds:
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert (
        must(sandbox_api.get_object("namespaces", None, "eddy-system"))["metadata"]["labels"][
            "kubernetes.io/metadata.name"
        ]
        == "eddy-system"
    )
    rc, out, err = await kubectl(config, "apply", "-k", str(REPO / "manifests"))
    assert rc == 0 and "deployment.apps/eddy-webhook unchanged" in out, out + err
    rc, out, err = await kubectl(
        config, "-n", "eddy-system", "scale", "deployment", "eddy-webhook", "--replicas=3"
    )
    assert rc == 0, err  # through the scale subresource
    assert must(sandbox_api.get_object("deployments", "eddy-system", "eddy-webhook"))["spec"]["replicas"] == 3

    sandbox_api.put(
        {
            "apiVersion": "data.fluid.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "demo", "namespace": "default"},
            "spec": {},
            "status": {
                "phase": "Bound",
                "ufsTotal": "1.20GiB",
                "cacheStates": {
                    "cached": "600.00MiB",
                    "cacheCapacity": "2.00GiB",
                    "cachedPercentage": "48.8%",
                },
            },
        }
    )
    rc, out, err = await kubectl(config, "get", "dataset")
    assert rc == 0, err
    header, row = out.splitlines()
    assert header.split() == [
        "NAME",
        "UFS",
        "TOTAL",
        "SIZE",
        "CACHED",
        "CACHE",
        "CAPACITY",
        "CACHED",
        "PERCENTAGE",
        "PHASE",
        "AGE",
    ]
    assert row.split()[:6] == ["demo", "1.20GiB", "600.00MiB", "2.00GiB", "48.8%", "Bound"]
    assert row.split()[6].endswith("s")  # an age, computed by the server for the `date` column
    # The CRDs' category (kubectl keeps discovery for hours: a category added since is seen by a new cache).
    shutil.rmtree(tmp_path / "kube-cache")
    rc, out, err = await kubectl(config, "get", "fluid", "-A")
    assert rc == 0 and "dataset.data.fluid.io/demo" in out, out + err

    await sandbox_api.create(pod("web"), "default")
    rc, out, err = await kubectl(config, "get", "pods", "-o", "wide")
    assert rc == 0, err
    assert out.split("\n")[0].split() == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED",
        "NODE",
        "READINESS",
        "GATES",
    ]
    assert out.split("\n")[1].split()[:4] == ["web", "0/1", "Pending", "0"]


async def test_crd_registers_and_unregisters_its_kind(sandbox_api: KubeApiServer) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {
                "plural": "widgets",
                "singular": "widget",
                "kind": "Widget",
                "shortNames": ["wd"],
                "categories": ["toys"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                    ],
                }
            ],
        },
    }
    async with client(sandbox_api) as k:
        await k.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=crd)
        status, resources = await http(sandbox_api, "GET", "/apis/example.com/v1")
        assert status == 200
        widgets = next(r for r in resources["resources"] if r["name"] == "widgets")
        assert widgets["shortNames"] == ["wd"] and widgets["categories"] == ["toys"]
        assert any(r["name"] == "widgets/status" for r in resources["resources"])
        _, groups = await http(sandbox_api, "GET", "/apis")
        assert "example.com" in [g["name"] for g in groups["groups"]]
        _, aggregated = await http(
            sandbox_api,
            "GET",
            "/apis",
            accept="application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        )
        assert aggregated["kind"] == "APIGroupDiscoveryList"
        assert "example.com" in [i["metadata"]["name"] for i in aggregated["items"]]
        path = "/apis/example.com/v1/namespaces/default/widgets"
        await k.request(
            "POST",
            path,
            body={
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": 3},
            },
        )
        await k.request(
            "PATCH",
            f"{path}/w1/status",
            body={"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            content_type="application/merge-patch+json",
        )
        status, table = await http(sandbox_api, "GET", path, accept=TABLE)
        assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Ready"]
        assert table["rows"][0]["cells"] == ["w1", 3, "True"]
        assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
        _, bare = await http(sandbox_api, "GET", path + "?includeObject=None", accept=TABLE)
        assert "object" not in bare["rows"][0]
        await k.request(
            "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com"
        )
    status, _ = await http(sandbox_api, "GET", path)
    assert status == 404
    assert (await http(sandbox_api, "GET", "/apis/example.com/v1"))[0] == 404


async def test_pod_table_columns(sandbox_api: KubeApiServer) -> None:
    sandbox_api.put(
        {
            **pod("init"),
            "metadata": {"name": "init", "namespace": "default"},
            "spec": {
                "initContainers": [{"name": "i0", "image": "x"}, {"name": "i1", "image": "x"}],
                "containers": [{"name": "app", "image": "x"}],
                "nodeName": "sandbox",
            },
            "status": {
                "phase": "Pending",
                "podIP": "10.244.0.5",
                "podIPs": [{"ip": "10.244.0.5"}],
                "initContainerStatuses": [
                    {"name": "i0", "state": {"terminated": {"exitCode": 0}}},
                    {"name": "i1", "state": {"running": {}}},
                ],
            },
        }
    )
    sandbox_api.put(
        {
            **pod("run"),
            "metadata": {"name": "run", "namespace": "default"},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "a", "ready": True, "restartCount": 0, "state": {"running": {}}},
                    {
                        "name": "b",
                        "ready": False,
                        "restartCount": 2,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    },
                ],
            },
        }
    )
    sandbox_api.put(
        {
            **pod("done"),
            "metadata": {"name": "done", "namespace": "default"},
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "app",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                    }
                ],
            },
        }
    )
    status, table = await http(
        sandbox_api, "GET", "/api/v1/namespaces/default/pods?includeObject=Object", accept=TABLE
    )
    assert status == 200 and table["kind"] == "Table"
    assert [(c["name"], c["priority"]) for c in table["columnDefinitions"]][:6] == [
        ("Name", 0),
        ("Ready", 0),
        ("Status", 0),
        ("Restarts", 0),
        ("Age", 0),
        ("IP", 1),
    ]
    rows = {r["cells"][0]: r for r in table["rows"]}
    assert rows["init"]["cells"][1:3] == ["0/1", "Init:1/2"] and rows["init"]["cells"][5:7] == [
        "10.244.0.5",
        "sandbox",
    ]
    assert rows["run"]["cells"][1:4] == ["1/2", "CrashLoopBackOff", "2"]
    assert rows["done"]["cells"][2] == "Completed" and rows["done"]["conditions"][0]["reason"] == "Succeeded"
    assert rows["run"]["object"]["kind"] == "Pod"
    status, one = await http(sandbox_api, "GET", "/api/v1/namespaces/default/pods/run", accept=TABLE)
    assert len(one["rows"]) == 1
    _, namespaces = await http(sandbox_api, "GET", "/api/v1/namespaces", accept=TABLE)
    assert [c["name"] for c in namespaces["columnDefinitions"]] == ["Name", "Status", "Age"]


async def test_graceful_pod_deletion_and_binding(sandbox_api: KubeApiServer) -> None:
    async with client(sandbox_api) as k:
        await k.create(kube.PODS, pod("unbound"), "default")
        await k.delete(kube.PODS, "unbound", "default")
        assert sandbox_api.get_object("pods", "default", "unbound") is None  # no node: gone at once

        await k.create(kube.PODS, pod("p", terminationGracePeriodSeconds=20), "default")
        core = k8s.CoreV1Api(k.api)
        binding = (
            "/api/v1/namespaces/default/pods/p/binding"  # answered with a Status, as kube-apiserver does
        )
        done = await k.request(
            "POST", binding, body={"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "sandbox"}}
        )
        assert done["status"] == "Success"
        bound = must(sandbox_api.get_object("pods", "default", "p"))
        assert bound["spec"]["nodeName"] == "sandbox"
        assert any(c["type"] == "PodScheduled" for c in bound["status"]["conditions"])
        with pytest.raises(kube.Conflict):
            await k.request("POST", binding, body={"target": {"kind": "Node", "name": "other"}})
        # a pod's spec is immutable but for images (and a few scheduling fields), as kube-apiserver validates
        with pytest.raises(kube.Invalid):
            await k.patch(kube.PODS, "p", {"spec": {"nodeName": "elsewhere"}}, "default")
        image = {"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}}
        changed = await k.patch(kube.PODS, "p", image, "default", patch_type="strategic")
        assert changed["spec"]["containers"][0]["image"] == "busybox:2"

        await k.delete(kube.PODS, "p", "default")
        terminating = must(sandbox_api.get_object("pods", "default", "p"))
        assert terminating["metadata"]["deletionGracePeriodSeconds"] == 20
        assert terminating["metadata"]["deletionTimestamp"]
        await core.delete_namespaced_pod("p", "default", grace_period_seconds=5)
        assert (
            must(sandbox_api.get_object("pods", "default", "p"))["metadata"]["deletionGracePeriodSeconds"]
            == 5
        )
        await k.patch_status(kube.PODS, "p", {"status": {"phase": "Running"}}, "default")  # the kubelet
        assert sandbox_api.get_object("pods", "default", "p") is not None
        await core.delete_namespaced_pod("p", "default", body=k8s.V1DeleteOptions(grace_period_seconds=0))
        assert sandbox_api.get_object("pods", "default", "p") is None


async def test_service_account_admission_and_namespace_objects(sandbox_api: KubeApiServer) -> None:
    async with client(sandbox_api) as k:
        await k.create(kube.NAMESPACES, {"metadata": {"name": "team"}})
        assert sandbox_api.get_object("serviceaccounts", "team", "default") is not None
        root_ca = must(sandbox_api.get_object("configmaps", "team", "kube-root-ca.crt"))
        assert root_ca["data"]["ca.crt"] == sandbox_api.ca_pem
        spec = {
            "initContainers": [{"name": "init", "image": "x"}],
            "containers": [
                {"name": "a", "image": "x"},
                {"name": "b", "image": "x", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT}]},
            ],
            "volumes": [{"name": "own", "emptyDir": {}}],
        }
        made = await k.create(kube.PODS, {"metadata": {"name": "p"}, "spec": spec}, "team")
        spec = made["spec"]
        assert spec["serviceAccountName"] == "default"
        volume = next(v for v in spec["volumes"] if v["name"].startswith("kube-api-access-"))
        assert len(volume["name"]) == len("kube-api-access-") + 5
        sources = volume["projected"]["sources"]
        assert sources[0] == {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
        assert sources[1]["configMap"] == {
            "name": "kube-root-ca.crt",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        assert sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.namespace"
        mount = {"name": volume["name"], "readOnly": True, "mountPath": TOKEN_MOUNT}
        assert mount in spec["initContainers"][0]["volumeMounts"]
        assert mount in spec["containers"][0]["volumeMounts"]
        assert mount not in spec["containers"][1]["volumeMounts"]  # it mounts something there already
        off = await k.create(
            kube.PODS,
            {
                "metadata": {"name": "q"},
                "spec": {"automountServiceAccountToken": False, "containers": [{"name": "a", "image": "x"}]},
            },
            "team",
        )
        assert "volumes" not in off["spec"] and "volumeMounts" not in off["spec"]["containers"][0]
        await k.delete(kube.NAMESPACES, "team")
        assert sandbox_api.get_object("namespaces", None, "team") is None  # nothing bound: all went at once
    assert sandbox_api.get_object("configmaps", "team", "kube-root-ca.crt") is None


async def test_pod_log(sandbox_api: KubeApiServer, tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("one\ntwo\nthree\n")
    sandbox_api.log_source = lambda ns, name, container: (
        log_file if (ns, name, container) == ("default", "p", "app") else None
    )
    await sandbox_api.create(pod("p"), "default")
    status, text = await http(sandbox_api, "GET", "/api/v1/namespaces/default/pods/p/log")
    assert (status, text) == (200, "one\ntwo\nthree\n")
    async with aiohttp.ClientSession() as session:
        async with session.get(sandbox_api.url + "/api/v1/namespaces/default/pods/p/log?tailLines=1") as resp:
            assert await resp.text() == "three\n"
        async with session.get(sandbox_api.url + "/api/v1/namespaces/default/pods/p/log?follow=true") as resp:
            assert (await resp.content.readuntil(b"three\n")) == b"one\ntwo\nthree\n"
            with log_file.open("a") as f:
                f.write("four\n")
            assert await asyncio.wait_for(resp.content.readline(), 5) == b"four\n"
            sandbox_api.put(
                {**must(sandbox_api.get_object("pods", "default", "p")), "status": {"phase": "Succeeded"}}
            )
            assert await asyncio.wait_for(resp.content.read(), 5) == b""  # the stream ends with the pod
    status, _ = await http(sandbox_api, "GET", "/api/v1/namespaces/default/pods/p/log?container=nope")
    assert status == 400


async def test_in_cluster_config_over_tls(sandbox_api: KubeApiServer, tmp_path: Path) -> None:
    port = await sandbox_api.serve_tls("127.0.0.1")
    service = must(sandbox_api.get_object("services", "default", "kubernetes"))
    assert service["spec"]["clusterIP"] == "10.96.0.1" and service["spec"]["ports"][0]["targetPort"] == port
    endpoints = must(sandbox_api.get_object("endpoints", "default", "kubernetes"))
    assert endpoints["subsets"][0]["addresses"] == [{"ip": "127.0.0.1"}]
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("any-token")
    ca.write_text(sandbox_api.ca_pem)
    configuration = k8s.Configuration()
    InClusterConfigLoader(
        str(token),
        str(ca),
        environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)},
    ).load_and_set(configuration)
    async with kube.Kube(k8s.ApiClient(configuration)) as k:
        names = [n["metadata"]["name"] for n in (await k.list(kube.NAMESPACES))[0]]
        assert names == ["default", "kube-public", "kube-system"]
        assert sandbox_api.last_headers["Authorization"] == "Bearer any-token"
    # kubectl over TLS, with the CA in its kubeconfig
    config = write_kubeconfig(tmp_path / "kubeconfig", sandbox_api, f"https://127.0.0.1:{port}")
    rc, out, err = await kubectl(config, "get", "namespaces", "-o", "name")
    assert rc == 0 and out.split() == [
        "namespace/default",
        "namespace/kube-public",
        "namespace/kube-system",
    ], err
    # the serving certificate names what in-cluster clients dial
    context = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="kubernetes.default.svc"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    alt = (
        x509.load_der_x509_certificate(der)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert set(alt.get_values_for_type(x509.DNSName)) >= {
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    }
    assert "127.0.0.1" in {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)}
    del reader


async def test_strict_server_validates_pods_and_enforces_pod_security(tmp_path: Path) -> None:
    server = await KubeApiServer(strict=True).start()
    try:
        config = write_kubeconfig(tmp_path / "kubeconfig", server)
        rc, rendered, err = await kubectl(config, "kustomize", str(REPO / "manifests"))
        assert rc == 0, err
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        for doc in docs:  # namespace and service accounts first, as kubectl apply orders them
            if doc["kind"] in ("Namespace", "ServiceAccount"):
                await server.create(doc)
        namespace = must(server.get_object("namespaces", None, "eddy-system"))
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        # Eddy's own pods pass the namespace's restricted level
        for doc in docs:
            if doc["kind"] == "Deployment":
                template = doc["spec"]["template"]
                await server.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "spec": template["spec"],
                        "metadata": {**template["metadata"], "name": doc["metadata"]["name"]},
                    },
                    doc["metadata"]["namespace"],
                )
        assert len(server.objects("pods", "eddy-system")) == 3
        rogue = pod("rogue", serviceAccountName="eddy-webhook")
        rogue["spec"]["containers"][0]["securityContext"] = {"privileged": True}
        with pytest.raises(ApiError) as denied:
            await server.create(rogue, "eddy-system")
        assert denied.value.code == 403
        assert 'violates PodSecurity "restricted:latest": privileged (container "app" must not set' in (
            denied.value.message
        )
        assert "runAsNonRoot != true" in denied.value.message
        with pytest.raises(ApiError) as missing:  # NamespaceLifecycle
            await server.create(pod("p"), "nowhere")
        assert missing.value.code == 404
        with pytest.raises(ApiError) as no_account:
            await server.create(pod("p", serviceAccountName="ghost"), "default")
        assert no_account.value.code == 403 and 'serviceaccount "ghost" not found' in no_account.value.message
        shared = pod("shared", volumes=[{"name": "data", "emptyDir": {}}])
        shared["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "data", "mountPath": "/data", "mountPropagation": "Bidirectional"}
        ]
        with pytest.raises(ApiError) as invalid:
            await server.create(shared, "default")
        assert (
            invalid.value.code == 422
            and "Bidirectional mount propagation is available only to privileged" in (invalid.value.message)
        )
        shared["spec"]["containers"][0]["securityContext"] = {"privileged": True}
        await server.create(shared, "default")  # the default namespace enforces nothing
    finally:
        await server.stop()


async def test_kubectl_of_an_older_server_version_validates_through_openapi_v2(tmp_path: Path) -> None:
    """This machine's kubectl runs the minor version matching the server: 1.28 reads `fieldValidation`
    support from the protobuf /openapi/v2, newer ones from /openapi/v3."""
    server = await KubeApiServer(git_version="v1.28.0").start()
    try:
        config = write_kubeconfig(tmp_path / "kubeconfig", server)
        manifests = REPO / "manifests"
        rc, out, err = await kubectl(
            config, "apply", "-f", str(manifests / "namespace.yaml"), "-f", str(manifests / "crds")
        )
        assert rc == 0, out + err
        assert server.get_object("customresourcedefinitions", None, "datasets.data.fluid.io") is not None
        assert ("get", "discovery") in server.calls
        assert any(path.startswith("/openapi/v") for _, path in server.requests)
        # SidecarContainers is off before 1.29: a native sidecar's restartPolicy is dropped, after admission
        sidecar = pod("native", initContainers=[{"name": "side", "image": "x", "restartPolicy": "Always"}])
        made = await server.create(sidecar, "default")
        assert "restartPolicy" not in made["spec"]["initContainers"][0]
        server.git_version = "v1.29.0"
        made = await server.create({**sidecar, "metadata": {"name": "native2"}}, "default")
        assert made["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    finally:
        await server.stop()


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run_here(
    namespace: str, name: str, container: str, argv: list[str], *, stdin: bytes | None = None
) -> Ran:
    """A stand-in container runtime for exec: the command runs on this machine (the pod runner's exec
    runs it in the container's namespaces)."""
    assert (namespace, name, container) == ("default", "p", "app")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate(stdin)
    return Ran(proc.returncode or 0, out, err)


async def test_kubectl_exec_over_websocket(sandbox_api: KubeApiServer, tmp_path: Path) -> None:
    sandbox_api.exec_handler = run_here
    await sandbox_api.create(pod("p"), "default")
    config = write_kubeconfig(tmp_path / "kubeconfig", sandbox_api)
    rc, out, err = await kubectl(config, "exec", "p", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (rc, out, err.splitlines()[0]) == (3, "out\n", "err")
    assert "command terminated with exit code 3" in err
    source = tmp_path / "source.txt"
    source.write_text("through stdin\n")
    copied = tmp_path / "copied.txt"
    rc, out, err = await kubectl(config, "cp", str(source), f"p:{copied}")  # tar over exec's stdin
    assert rc == 0, err
    assert copied.read_text() == "through stdin\n"
    assert sandbox_api.calls[("get", "pods/exec")] >= 2
