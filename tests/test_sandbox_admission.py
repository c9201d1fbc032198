"""Admission in the sandbox's API server, through real HTTPS and the real kubernetes-asyncio client:
Eddy's MutatingWebhookConfiguration (manifests/) calling Eddy's webhook with its caBundle, a wrong CA, a
webhook that is down and one slower than timeoutSeconds (each as failurePolicy says), reinvocation, and
Eddy's ValidatingAdmissionPolicy (manifests/) denying a labelled pod that was not injected."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from eddy import kube
from sandbox.admission import MutatingWebhooks
from sandbox.apiserver import BY_KIND, AdmissionAttributes, ApiError, KubeApiServer
from sandbox.policy import ValidatingPolicies
from tests.support.admission_cluster import (
    add_label_once,
    eddy_webhook,
    manifest_mwc,
    manifest_policy,
    put_seed_objects,
    seed_pod,
    set_webhooks,
    small_webhook,
)
from webhook.certs import new_bundle

EDDY = ("eddy-system", "eddy-webhook", 443)
POLICIES = kube.Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
                         "ValidatingAdmissionPolicy", namespaced=False)
HOOK = "sidecar-target.eddy.io"
EDDY_URL = "https://eddy-webhook.eddy-system.svc:443/mutate?timeout=5s"
NOT_INJECTED = (
    "pod asks for the Eddy sidecar and mounts the PVC of Dataset serverless-data but was not injected (is "
    "the eddy-webhook in eddy-system ready?); retry once it is"
)


@dataclass
class Cluster:
    api: KubeApiServer
    client: kube.Kube
    mutating: MutatingWebhooks
    policies: ValidatingPolicies
    endpoints: dict[tuple[str, str, int], tuple[str, int]] = field(default_factory=dict)

    async def resolve(self, namespace: str, name: str, port: int) -> tuple[str, int]:
        """What ClusterDns.resolve_service answers: a ready endpoint of the Service port."""
        try:
            return self.endpoints[(namespace, name, port)]
        except KeyError:
            raise LookupError(f'no endpoints available for service "{name}"') from None

    async def create_pod(self, pod: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        return await self.client.create(kube.PODS, pod, namespace)

    async def denied(self, pod: dict[str, Any], namespace: str = "default") -> kube.KubeError:
        with pytest.raises(kube.KubeError) as caught:
            await self.create_pod(pod, namespace)
        assert self.api.get_object("pods", namespace, pod["metadata"]["name"]) is None
        return caught.value


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    api = await KubeApiServer().start()
    client = await kube.Kube.connect(url=api.url)
    box: list[Cluster] = []

    async def resolve(namespace: str, name: str, port: int) -> tuple[str, int]:
        return await box[0].resolve(namespace, name, port)

    mutating = MutatingWebhooks(api, resolve)
    policies = ValidatingPolicies(api)
    box.append(Cluster(api, client, mutating, policies))
    api.admission += [mutating, policies]
    try:
        yield box[0]
    finally:
        await client.close()
        await mutating.close()
        await api.stop()


def injected(pod: dict[str, Any]) -> bool:
    names = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
    labelled = pod["metadata"]["labels"].get("done.sidecar.fluid.io/inject") == "true"
    return labelled and "fluid-fuse-0" in names


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def policy_kinds_present() -> None:
    missing = [k for k in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
               if ("admissionregistration.k8s.io/v1", k) not in BY_KIND]
    assert not missing, f"sandbox/apiserver.py KINDS lacks {missing}"


async def test_eddy_webhook_good_and_wrong_ca_bundle(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.api
    api.put(manifest_mwc())
    put_seed_objects(api)
    async with eddy_webhook(api, tmp_path) as hook:
        cluster.endpoints[EDDY] = ("127.0.0.1", hook.port)
        # The caBundle the webhook wrote itself: the pod is stored injected.
        stored = await cluster.create_pod(seed_pod("model-serving-good1"))
        assert injected(stored), stored
        assert injected(api.get_object("pods", "default", "model-serving-good1") or {})
        assert cluster.mutating.calls[HOOK] == 1
        # Reinvocation: a later webhook changes the injected pod, but the pod now carries
        # done.sidecar.fluid.io/inject, so Eddy's objectSelector no longer selects it: not sent twice
        # although it is IfNeeded.
        async with small_webhook(tmp_path, "labeller", "hooks") as small:
            small.paths["/label"] = add_label_once("labelled")
            cluster.endpoints[("hooks", "labeller", 443)] = ("127.0.0.1", small.port)
            later = manifest_mwc()
            later["metadata"]["name"] = "z-labeller"
            labeller = {**later["webhooks"][0], "name": "labeller.test", "clientConfig": {
                "caBundle": small.ca_bundle, "service": {"name": "labeller", "namespace": "hooks",
                                                         "path": "/label"}}}
            del labeller["objectSelector"]
            later["webhooks"] = [labeller]
            api.put(later)
            stored = await cluster.create_pod(seed_pod("model-serving-good2"))
            api.remove("mutatingwebhookconfigurations", None, "z-labeller")
        assert injected(stored) and stored["metadata"]["labels"]["labelled"] == "done"
        assert (cluster.mutating.calls[HOOK], cluster.mutating.calls["labeller.test"]) == (2, 1)
        # A dry run reaches the webhook (sideEffects: None) and stores nothing.
        pod = seed_pod("model-serving-dry")
        attrs = AdmissionAttributes("CREATE", BY_KIND[("v1", "Pod")], "default", "model-serving-dry", pod,
                                    None, dry_run=True)
        assert injected(await cluster.mutating(attrs))
        set_webhooks(api, "eddy-webhook", sideEffects="Some")
        attrs.obj = seed_pod("model-serving-dry")
        with pytest.raises(ApiError) as caught:
            await cluster.mutating(attrs)
        assert (caught.value.code, caught.value.message) == (
            400, f'admission webhook "{HOOK}" does not support dry run')
        set_webhooks(api, "eddy-webhook", sideEffects="None")

        # Another CA in the caBundle: the handshake fails as in kube-apiserver.
        other_ca = base64.b64encode(new_bundle(["eddy-webhook.eddy-system.svc"]).ca_bundle).decode()
        set_webhooks(api, "eddy-webhook", caBundle=other_ca)
        calls = cluster.mutating.calls[HOOK]
        stored = await cluster.create_pod(seed_pod("model-serving-ignored"))  # failurePolicy: Ignore
        assert not injected(stored) and "initContainers" not in stored["spec"]
        assert cluster.mutating.calls[HOOK] == calls + 1
        reason = (f'failed calling webhook "{HOOK}": failed to call webhook: Post "{EDDY_URL}": '
                  "tls: failed to verify certificate: x509: certificate signed by unknown authority")
        assert cluster.mutating.failed_open[-1] == reason
        set_webhooks(api, "eddy-webhook", failurePolicy="Fail")
        error = await cluster.denied(seed_pod("model-serving-failed"))
        assert (error.status, error.reason) == (500, "InternalError")
        assert error.message == f"Internal error occurred: {reason}"
        # The right CA again: injected again.
        set_webhooks(api, "eddy-webhook", caBundle=base64.b64encode(
            (tmp_path / "eddy-webhook-tls" / "tls.crt").read_bytes()).decode())
        error = await cluster.denied(seed_pod("model-serving-leaf"))  # a leaf certificate is no CA
        assert "certificate signed by unknown authority" in error.message
    assert hook.proc.returncode == 0, b"".join(hook.output).decode()[-2000:]


async def test_eddy_webhook_local_mode_by_url(cluster: Cluster, tmp_path: Path) -> None:
    """DESIGN.md's local mode: the configuration names the webhook by `clientConfig.url` and trusts the
    CA it wrote to ca.crt; the certificate names 127.0.0.1, the URL's host."""
    api = cluster.api
    async with eddy_webhook(api, tmp_path, local=True) as hook:
        config = manifest_mwc()
        ca = base64.b64encode((tmp_path / "eddy-webhook-tls" / "ca.crt").read_bytes()).decode()
        for webhook in config["webhooks"]:
            webhook["clientConfig"] = {"url": f"https://127.0.0.1:{hook.port}/mutate", "caBundle": ca}
        api.put(config)
        stored = await cluster.create_pod(seed_pod("model-serving-local"))
        assert injected(stored)
    assert cluster.mutating.calls[HOOK] == 1


@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
async def test_webhook_down(cluster: Cluster, policy: str) -> None:
    api = cluster.api
    api.put(manifest_mwc())
    set_webhooks(api, "eddy-webhook", failurePolicy=policy,
                 caBundle=base64.b64encode(new_bundle(["x"]).ca_bundle).decode())
    port = closed_port()
    cluster.endpoints[EDDY] = ("127.0.0.1", port)
    refused = (f'failed calling webhook "{HOOK}": failed to call webhook: Post "{EDDY_URL}": '
               f"dial tcp 127.0.0.1:{port}: connect: connection refused")
    # No endpoint at all (no ready webhook pod) fails the same way, with the resolver's reason.
    api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}})
    if policy == "Ignore":
        stored = await cluster.create_pod(seed_pod("model-serving-a"))
        assert stored["metadata"]["name"] == "model-serving-a" and not injected(stored)
        assert cluster.mutating.failed_open == [refused]
        del cluster.endpoints[EDDY]
        await cluster.create_pod(seed_pod("model-serving-b"), "team-b")
        assert "no endpoints available" in cluster.mutating.failed_open[-1]
    else:
        error = await cluster.denied(seed_pod("model-serving-a"))
        assert (error.status, error.reason, error.message) == (500, "InternalError",
                                                              f"Internal error occurred: {refused}")
        del cluster.endpoints[EDDY]
        error = await cluster.denied(seed_pod("model-serving-b"), "team-b")
        assert error.message == (f'Internal error occurred: failed calling webhook "{HOOK}": failed to '
                                 f'call webhook: Post "{EDDY_URL}": no endpoints available for service '
                                 '"eddy-webhook"')
    assert cluster.mutating.calls[HOOK] == 2
    # Unlabelled pods and pods in eddy-system never reach it.
    plain = seed_pod("plain")
    del plain["metadata"]["labels"]["alibabacloud.com/fluid-sidecar-target"]
    await cluster.create_pod(plain)
    await cluster.create_pod(seed_pod("in-eddy-system"), "eddy-system")
    assert cluster.mutating.calls[HOOK] == 2


async def test_webhook_slower_than_timeout(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.api
    async with small_webhook(tmp_path, "slow", "hooks") as slow:
        slow.delay = 5.0
        config = manifest_mwc()
        config["metadata"]["name"] = "slow"
        del config["webhooks"][1]
        hook = config["webhooks"][0]
        hook.update(name="slow.test", timeoutSeconds=1)
        hook["clientConfig"] = {"caBundle": slow.ca_bundle, "service": {
            "name": "slow", "namespace": "hooks", "path": "/slow", "port": 443}}
        api.put(config)
        cluster.endpoints[("hooks", "slow", 443)] = ("127.0.0.1", slow.port)
        started = time.monotonic()
        stored = await cluster.create_pod(seed_pod("model-serving-late"))  # Ignore
        assert 0.9 < time.monotonic() - started < 4.0  # the answer would take 5 s
        assert not injected(stored)
        timed_out = ('failed calling webhook "slow.test": failed to call webhook: Post '
                     '"https://slow.hooks.svc:443/slow?timeout=1s": context deadline exceeded')
        assert cluster.mutating.failed_open == [timed_out]
        set_webhooks(api, "slow", failurePolicy="Fail")
        started = time.monotonic()
        error = await cluster.denied(seed_pod("model-serving-late2"))
        assert 0.9 < time.monotonic() - started < 4.0  # the answer would take 5 s
        assert (error.status, error.message) == (500, f"Internal error occurred: {timed_out}")
        # Fast enough: the same webhook is called, allows, and the pod is stored.
        slow.delay = 0.0
        await cluster.create_pod(seed_pod("model-serving-fast"))
        assert cluster.mutating.calls["slow.test"] == 3
        review = slow.reviews[-1]
        request = review["request"]
        assert (review["apiVersion"], review["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
        assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
        assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
        assert (request["namespace"], request["name"], request["operation"]) == (
            "default", "model-serving-fast", "CREATE")
        assert request["object"]["metadata"]["name"] == "model-serving-fast" and request["oldObject"] is None
        assert request["dryRun"] is False and request["options"]["kind"] == "CreateOptions"
        # The same server behind a Service whose name its certificate does not have: Go's host name error.
        set_webhooks(api, "slow", clientConfig={"caBundle": slow.ca_bundle, "service": {
            "name": "fast", "namespace": "hooks", "path": "/slow", "port": 8443}})
        cluster.endpoints[("hooks", "fast", 8443)] = ("127.0.0.1", slow.port)
        error = await cluster.denied(seed_pod("model-serving-misnamed"))
        assert error.message == (
            'Internal error occurred: failed calling webhook "slow.test": failed to call webhook: Post '
            '"https://fast.hooks.svc:8443/slow?timeout=1s": tls: failed to verify certificate: x509: '
            "certificate is valid for slow, slow.hooks, slow.hooks.svc, slow.hooks.svc.cluster.local, "
            "not fast.hooks.svc")
        assert len(slow.reviews) == 3


async def test_reinvocation_denial_and_match_conditions(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.api
    async with small_webhook(tmp_path, "hooks", "hooks") as small:
        small.paths["/first"] = add_label_once("first")
        small.paths["/second"] = add_label_once("second")
        cluster.endpoints[("hooks", "hooks", 443)] = ("127.0.0.1", small.port)

        def config(name: str, path: str, reinvocation: str, **extra: Any) -> dict[str, Any]:
            return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                    "metadata": {"name": name}, "webhooks": [{
                        "name": f"{name}.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                        "reinvocationPolicy": reinvocation, **extra,
                        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["*"],
                                   "resources": ["pods"], "scope": "Namespaced"}],
                        "clientConfig": {"caBundle": small.ca_bundle, "service": {
                            "name": "hooks", "namespace": "hooks", "path": path}}}]}

        # Configurations run by name: a-first adds a label, then b-second adds another, which changes
        # the object after a-first saw it: a-first (IfNeeded) is called once more; b-second (Never) not.
        api.put(config("a-first", "/first", "IfNeeded"))
        api.put(config("b-second", "/second", "Never"))
        stored = await cluster.create_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
                                           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        assert stored["metadata"]["labels"] == {"first": "done", "second": "done"}
        assert (cluster.mutating.calls["a-first.test"], cluster.mutating.calls["b-second.test"]) == (2, 1)
        # The second call saw what b-second made.
        assert small.reviews[-1]["request"]["object"]["metadata"]["labels"]["second"] == "done"
        # kube-apiserver's audit annotations for it: round 0 both mutated, round 1 a-first did not.
        audit = cluster.mutating.audit_annotations[-1]
        assert sorted(audit) == [f"{kind}.webhook.admission.k8s.io/round_{at}" for kind, at in (
            ("mutation", "0_index_0"), ("mutation", "0_index_1"), ("mutation", "1_index_0"),
            ("patch", "0_index_0"), ("patch", "0_index_1"))]
        assert json.loads(audit["mutation.webhook.admission.k8s.io/round_1_index_0"]) == {
            "configuration": "a-first", "webhook": "a-first.test", "mutated": False}
        # With reinvocationPolicy Never nobody is called twice.
        api.put(config("a-first", "/first", "Never"))
        await cluster.create_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p2"},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        assert (cluster.mutating.calls["a-first.test"], cluster.mutating.calls["b-second.test"]) == (3, 2)
        # UPDATE goes through the webhooks too (rules say "*"), with the old object.
        await cluster.client.patch(kube.PODS, "p2", {"metadata": {"labels": {"first": None}}}, "default")
        assert small.reviews[-2]["request"]["operation"] == "UPDATE"
        assert small.reviews[-2]["request"]["oldObject"]["metadata"]["labels"]["first"] == "done"
        assert api.get_object("pods", "default", "p2")["metadata"]["labels"]["first"] == "done"  # type: ignore[index]

        # matchConditions (CEL) select which requests are sent; a denial is final even with Ignore.
        def deny(request: dict[str, Any]) -> dict[str, Any]:
            return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                "uid": request["uid"], "allowed": False,
                "status": {"code": 403, "reason": "Forbidden", "message": "no pods named deny-*"}}}

        small.paths["/deny"] = deny
        api.remove("mutatingwebhookconfigurations", None, "a-first")
        api.remove("mutatingwebhookconfigurations", None, "b-second")
        condition = [{"name": "deny-names", "expression": "object.metadata.name.startsWith('deny-')"}]
        api.put(config("c-deny", "/deny", "Never", failurePolicy="Ignore", matchConditions=condition))
        await cluster.create_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "allowed"},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        assert cluster.mutating.calls["c-deny.test"] == 0
        error = await cluster.denied({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "deny-me"},
                                      "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        assert (error.status, error.reason, error.message) == (
            403, "Forbidden", 'admission webhook "c-deny.test" denied the request: no pods named deny-*')
        # A condition that cannot be evaluated: Ignore skips the webhook, Fail rejects.
        broken = [{"name": "broken", "expression": "object.metadata.annotations['x'] == 'y'"}]
        api.put(config("c-deny", "/deny", "Never", failurePolicy="Ignore", matchConditions=broken))
        await cluster.create_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "deny-2"},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        api.put(config("c-deny", "/deny", "Never", failurePolicy="Fail", matchConditions=broken))
        error = await cluster.denied({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "deny-3"},
                                      "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        assert error.status == 403
        assert error.message.startswith("pods \"deny-3\" is forbidden: expression "
                                        "'object.metadata.annotations['x'] == 'y'' resulted in error")
        assert cluster.mutating.calls["c-deny.test"] == 1

        # A response for another request is a failed call: failurePolicy decides.
        def wrong_uid(request: dict[str, Any]) -> dict[str, Any]:
            return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": "not-" + request["uid"], "allowed": True}}

        small.paths["/wrong"] = wrong_uid
        api.put(config("c-deny", "/wrong", "Never", failurePolicy="Ignore"))
        await cluster.create_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wrong-1"},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        uid = small.reviews[-1]["request"]["uid"]
        assert cluster.mutating.failed_open[-1] == (
            'failed calling webhook "c-deny.test": received invalid webhook response: '
            f'expected response.uid="{uid}", got "not-{uid}"')


async def test_validating_policy_from_manifests(cluster: Cluster, tmp_path: Path) -> None:
    policy_kinds_present()
    api = cluster.api
    api.put(manifest_mwc())
    put_seed_objects(api)
    for doc in manifest_policy():
        api.put(doc)
    async with eddy_webhook(api, tmp_path) as hook:
        cluster.endpoints[EDDY] = ("127.0.0.1", hook.port)
        # Injected: the claim is gone, the policy allows it.
        assert injected(await cluster.create_pod(seed_pod("model-serving-1")))
        # The webhook is down; failurePolicy: Ignore lets the pod through uninjected, and the policy
        # (one evaluation per Dataset in the namespace) denies it with its messageExpression.
        del cluster.endpoints[EDDY]
        error = await cluster.denied(seed_pod("model-serving-2"))
        assert cluster.mutating.failed_open, "the webhook was not called"
        assert (error.status, error.reason) == (422, "Invalid")
        assert error.message == (
            'pods "model-serving-2" is forbidden: ValidatingAdmissionPolicy \'eddy-sidecar-required\' '
            f"with binding 'eddy-sidecar-required' denied request: {NOT_INJECTED}")
        # A namespace without Datasets: no params, parameterNotFoundAction Allow.
        evaluations = cluster.policies.evaluations
        stored = await cluster.create_pod(seed_pod("model-serving-3"), "team-b")
        assert not injected(stored) and cluster.policies.evaluations == evaluations
        # Not asking for injection (opt-out label, or no trigger label): allowed with the claim.
        opted_out = seed_pod("model-serving-4")
        opted_out["metadata"]["labels"]["fluid.io/enable-injection"] = "false"
        await cluster.create_pod(opted_out)
        plain = seed_pod("model-serving-5")
        del plain["metadata"]["labels"]["alibabacloud.com/fluid-sidecar-target"]
        await cluster.create_pod(plain)
        # Another Dataset's claim in the namespace does not matter; the webhook is back: injected again.
        cluster.endpoints[EDDY] = ("127.0.0.1", hook.port)
        assert injected(await cluster.create_pod(seed_pod("model-serving-6")))
        # The Fluid open-source trigger label is held to the same rule.
        serverless = seed_pod("model-serving-7")
        labels = serverless["metadata"]["labels"]
        del labels["alibabacloud.com/fluid-sidecar-target"]
        labels["serverless.fluid.io/inject"] = "true"
        del cluster.endpoints[EDDY]
        error = await cluster.denied(serverless)
        assert error.message.endswith(NOT_INJECTED)


async def test_policy_params_actions_and_errors(cluster: Cluster) -> None:
    """The rest of ValidatingAdmissionPolicy on in-process creates: paramRef by name with Deny when
    missing, Warn and Audit actions, reason codes, message fallbacks, and failurePolicy for errors."""
    policy_kinds_present()
    api = cluster.api

    def policy(name: str, validations: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name}, "spec": {
                    "matchConstraints": {"resourceRules": [{
                        "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"]}]},
                    "validations": validations, **spec}}

    def binding(name: str, actions: list[str], **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {"policyName": name, "validationActions": actions, **spec}}

    def deployment(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                         "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}}}

    # Params by name from a ConfigMap; the limit comes from it.
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "limits", "namespace": "default"},
             "data": {"max": "3"}})
    api.put(policy("max-replicas", [{
        "expression": "object.spec.replicas <= int(params.data.max)",
        "messageExpression": "'replicas must be at most ' + params.data.max",
        "reason": "Forbidden"}], paramKind={"apiVersion": "v1", "kind": "ConfigMap"}))
    api.put(binding("max-replicas", ["Deny"], paramRef={"name": "limits", "parameterNotFoundAction": "Deny"}))
    await api.create(deployment("small", 2))
    with pytest.raises(ApiError) as caught:
        await api.create(deployment("big", 5))
    assert (caught.value.code, caught.value.reason, caught.value.message) == (
        403, "Forbidden", "deployments.apps \"big\" is forbidden: ValidatingAdmissionPolicy 'max-replicas' "
        "with binding 'max-replicas' denied request: replicas must be at most 3")
    api.remove("configmaps", "default", "limits")
    with pytest.raises(ApiError) as caught:
        await api.create(deployment("small-2", 1))
    assert caught.value.message.endswith(
        "denied request: failed to configure binding: no params found for policy binding with `Deny` "
        "parameterNotFoundAction")
    api.remove("validatingadmissionpolicybindings", None, "max-replicas")

    # Warn and Audit record instead of denying; the message, or the failed expression when there is none.
    team = "has(object.metadata.labels) && 'team' in object.metadata.labels"
    api.put(policy("labelled", [{"expression": team, "message": "a team label is required"},
                                {"expression": "object.spec.replicas > 0"}]))
    api.put(binding("labelled", ["Warn", "Audit"]))
    await api.create(deployment("no-team", 0))
    assert cluster.policies.warnings == [
        "Validation failed for ValidatingAdmissionPolicy 'labelled' with binding 'labelled': a team label is "
        "required",
        "Validation failed for ValidatingAdmissionPolicy 'labelled' with binding 'labelled': failed "
        "expression: object.spec.replicas > 0"]
    assert [a["message"] for a in cluster.policies.audit] == ["a team label is required",
                                                               "failed expression: object.spec.replicas > 0"]
    api.remove("validatingadmissionpolicybindings", None, "labelled")

    # An expression that errors: failurePolicy Fail denies (reason Invalid, 422), Ignore admits. Variables
    # and namespaceObject are there; the binding's matchResources narrows the policy.
    api.put({"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "default", "labels": {"env": "prod"}}})
    broken = "variables.env == 'prod' && object.metadata.annotations['x'] == 'y'"
    failing = policy("strict", [{"expression": broken}],
                     variables=[{"name": "env", "expression": "namespaceObject.metadata.labels.env"}])
    api.put(failing)
    strict = {"objectSelector": {"matchLabels": {"strict": "yes"}}}
    api.put(binding("strict", ["Deny"], matchResources=strict))
    await api.create(deployment("not-selected", 1))
    with pytest.raises(ApiError) as caught:
        await api.create(deployment("selected", 1, {"strict": "yes"}))
    assert (caught.value.code, caught.value.reason) == (422, "Invalid")
    assert f"denied request: expression '{broken}' resulted in error" in caught.value.message
    failing["spec"]["failurePolicy"] = "Ignore"
    api.put(failing)
    await api.create(deployment("selected-2", 1, {"strict": "yes"}))
    # Policies never judge their own kind (so a broken policy can always be fixed).
    api.put(policy("everything", [{"expression": "false"}], matchConstraints={"resourceRules": [{
        "apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*"]}]}))
    api.put(binding("everything", ["Deny"]))
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "a"}}
    with pytest.raises(ApiError) as caught:
        await api.create(config_map)
    assert caught.value.message == ("configmaps \"x\" is forbidden: ValidatingAdmissionPolicy 'everything' "
                                    "with binding 'everything' denied request: failed expression: false")
    fixed = policy("everything", [{"expression": "true"}])
    fixed["metadata"]["resourceVersion"] = api.get_object(
        "validatingadmissionpolicies", None, "everything")["metadata"]["resourceVersion"]  # type: ignore[index]
    await cluster.client.replace(POLICIES, "everything", fixed)
    await api.create(config_map)
