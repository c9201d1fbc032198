"""Mutating admission webhooks, dispatched as kube-apiserver's mutating webhook plugin does.

`MutatingWebhooks(server, resolve_service)` is an `AdmissionStep` for `server.admission`. On every
CREATE/UPDATE it reads the stored MutatingWebhookConfigurations (sorted by name, webhooks in order) and
calls each webhook whose `rules`, `namespaceSelector`, `objectSelector` and `matchConditions` select the
write: an AdmissionReview v1 POSTed over HTTPS to `clientConfig.url`, or to `clientConfig.service`
resolved with `resolve_service(namespace, name, port) -> (host, port)` (the cluster passes
`ClusterDns.resolve_service`), verified against the configuration's `caBundle` for the host name
`<svc>.<ns>.svc`. kube-apiserver's rules, point by point:

- `timeoutSeconds` (default 10) bounds the call; the URL carries `?timeout=<n>s`.
- A failed call (refused, wrong CA, timeout, bad response) is an `ErrCallingWebhook`: `failurePolicy:
  Ignore` logs it and goes on ("failing open"); `Fail` (the default) answers 500 `Internal error
  occurred: failed calling webhook "<name>": failed to call webhook: Post "<url>": <Go's error text>`.
- `allowed: false` denies with the response's status (`admission webhook "<name>" denied the request:
  <message>`, code raised to at least 400), whatever the failurePolicy.
- dryRun requests reach only webhooks with `sideEffects: None|NoneOnDryRun`; others answer 400
  `admission webhook "<name>" does not support dry run`.
- `patchType: JSONPatch` patches are applied (jsonpatch) to the object the next webhook sees.
- `reinvocationPolicy: IfNeeded`: when a webhook changes the object, the IfNeeded webhooks called
  before it are called once more, in a second round that calls no other webhook.
- Writes of the admissionregistration objects themselves never reach webhooks.

Error texts are Go's (`dial tcp ...: connect: connection refused`, `tls: failed to verify certificate:
x509: certificate signed by unknown authority` / `certificate is valid for a, b, not c`, `context deadline
exceeded`). Audit annotations are collected in `audit_annotations`, the responses' warnings in
`warnings` (kube-apiserver returns them as `Warning` headers; the AdmissionStep interface has no way to).
Not modelled: `matchPolicy: Equivalent` across versions (one version per resource here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import ipaddress
import json
import logging
import ssl
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import jsonpatch
from yarl import URL

from sandbox.apiserver import AdmissionAttributes, ApiError
from sandbox.policy import (
    Cel,
    admission_request,
    exempt,
    forbidden,
    namespace_selected,
    object_selected,
    rule_matches,
    to_cel,
)

if TYPE_CHECKING:
    from sandbox.apiserver import KubeApiServer

Obj = dict[str, Any]
ServiceResolver = Callable[[str, str, int], Awaitable[tuple[str, int]]]
log = logging.getLogger("sandbox.admission")
REVIEW = "admission.k8s.io/v1"
X509_HOSTNAME_MISMATCH = 62


class CallError(Exception):
    """kube-apiserver's ErrCallingWebhook: the one kind of failure `failurePolicy` applies to."""

    def __init__(self, webhook: str, reason: str) -> None:
        super().__init__(f'failed calling webhook "{webhook}": {reason}')


@dataclass(frozen=True)
class Hook:
    config: str
    index: int
    spec: Obj
    ca_bundle: str

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def uid(self) -> str:  # kube-apiserver's webhook accessor UID
        return f"{self.config}/{self.name}/{self.index}"

    @property
    def ignore(self) -> bool:
        return self.spec.get("failurePolicy") == "Ignore"


@dataclass
class _Reinvocation:
    """kube-apiserver's webhookReinvokeContext."""

    previously_invoked: set[str] = field(default_factory=set)
    reinvoke: set[str] = field(default_factory=set)
    should_reinvoke: bool = False

    def require(self) -> None:
        self.reinvoke |= self.previously_invoked
        self.previously_invoked = set()


def _go_duration(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _status_text(status: int, body: bytes) -> str:
    """What Go's REST client says about a non-2xx answer that carries no Status object."""
    if status == 404:
        return "the server could not find the requested resource"
    if status == 500:
        return f'an error on the server ("{body.decode("utf-8", "replace")[:200]}") has prevented the ' \
               "request from succeeding"
    return f"the server responded with the status code {status} but did not return more information"


def _hostname_error(cert: Obj, wanted: str) -> str:
    """Go's x509.HostnameError text for a verified certificate (`getpeercert()`) without `wanted`."""
    sans = cert.get("subjectAltName") or ()
    try:
        ipaddress.ip_address(wanted)
    except ValueError:
        valid = ", ".join(value for kind, value in sans if kind == "DNS")
    else:
        ips = [value.strip() for kind, value in sans if kind == "IP Address"]
        if not ips:
            return f"x509: cannot validate certificate for {wanted} because it doesn't contain any IP SANs"
        valid = ", ".join(ips)
    if not valid:
        return f"x509: certificate is not valid for any names, but wanted to match {wanted}"
    return f"x509: certificate is valid for {valid}, not {wanted}"


async def _peer_names(host: str, port: int, ca_pem: str, server_name: str) -> str:
    """After a host name mismatch: which names the (otherwise trusted) certificate has, as Go says it."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.check_hostname = False
    try:
        async with asyncio.timeout(2):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_name)
    except (OSError, TimeoutError):
        return f"x509: certificate is not valid for {server_name}"
    try:
        cert = writer.get_extra_info("peercert") or {}
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return _hostname_error(cert, server_name)


def _transport_text(exc: BaseException, host: str, port: int) -> str:
    """Go's net/http + crypto/tls wording for what went wrong on the wire."""
    if isinstance(exc, TimeoutError):
        return "context deadline exceeded"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return f"dial tcp {host}:{port}: connect: connection refused"
        return f"dial tcp {host}:{port}: {os_error.strerror or os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "EOF"
    return str(exc) or type(exc).__name__


class MutatingWebhooks:
    """The mutating webhook admission step. `calls[name]` counts HTTP calls per webhook name;
    `warnings` collects the responses' warnings and `failed_open` the errors Ignore let through."""

    def __init__(self, server: KubeApiServer, resolve_service: ServiceResolver | None = None, *,
                 cel: Cel | None = None) -> None:
        self.server = server
        self.resolve_service = resolve_service
        self.cel = cel or Cel()
        self.calls: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.failed_open: list[str] = []
        # Per admitted write, the audit annotations kube-apiserver records (mutation.webhook.admission.
        # k8s.io/round_<r>_index_<i>, patch..., failed-open...): audit log entries, not object fields.
        self.audit_annotations: list[dict[str, str]] = []
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _hooks(self) -> list[Hook]:
        hooks: list[Hook] = []
        configs = sorted(self.server.objects("mutatingwebhookconfigurations"),
                         key=lambda c: str(c["metadata"]["name"]))
        for config in configs:
            for index, spec in enumerate(config.get("webhooks") or []):
                ca = str((spec.get("clientConfig") or {}).get("caBundle") or "")
                hooks.append(Hook(config["metadata"]["name"], index, spec, ca))
        return hooks

    async def __call__(self, attrs: AdmissionAttributes) -> Obj:
        if attrs.operation not in ("CREATE", "UPDATE") or exempt(attrs):
            return attrs.obj
        hooks = self._hooks()
        if not hooks:
            return attrs.obj
        state = _Reinvocation()
        annotations: dict[str, str] = {}
        try:
            await self._round(hooks, attrs, state, annotations, reinvoking=False)
            if state.should_reinvoke:
                await self._round(hooks, attrs, state, annotations, reinvoking=True)
        finally:
            if annotations:
                self.audit_annotations.append(annotations)
        return attrs.obj

    async def _round(self, hooks: list[Hook], attrs: AdmissionAttributes, state: _Reinvocation,
                     annotations: dict[str, str], *, reinvoking: bool) -> None:
        for index, hook in enumerate(hooks):
            if not self._should_call(hook, attrs):
                continue
            if reinvoking and hook.uid not in state.reinvoke:
                continue  # a second round calls no webhook for the first time
            changed = False
            suffix = f"round_{int(reinvoking)}_index_{index}"
            try:
                changed, patch = await self._call(hook, attrs)
                if patch:
                    annotations[f"patch.webhook.admission.k8s.io/{suffix}"] = json.dumps(
                        {"configuration": hook.config, "webhook": hook.name, "patch": patch,
                         "patchType": "JSONPatch"}, separators=(",", ":"))
            except CallError as exc:
                if not hook.ignore:
                    log.warning("Failed calling webhook, failing closed %s: %s", hook.name, exc)
                    raise ApiError(500, "InternalError", f"Internal error occurred: {exc}") from None
                log.warning("Failed calling webhook, failing open %s: %s", hook.name, exc)
                self.failed_open.append(str(exc))
                annotations[f"failed-open.mutation.webhook.admission.k8s.io/{suffix}"] = hook.name
            finally:
                annotations[f"mutation.webhook.admission.k8s.io/{suffix}"] = json.dumps(
                    {"configuration": hook.config, "webhook": hook.name, "mutated": changed},
                    separators=(",", ":"))
            if changed:
                state.require()
                state.should_reinvoke = True
            if hook.spec.get("reinvocationPolicy") == "IfNeeded":
                state.previously_invoked.add(hook.uid)

    def _should_call(self, hook: Hook, attrs: AdmissionAttributes) -> bool:
        spec = hook.spec
        if not any(rule_matches(r, attrs) for r in spec.get("rules") or []):
            return False
        if not namespace_selected(self.server, spec.get("namespaceSelector"), attrs):
            return False
        if not object_selected(spec.get("objectSelector"), attrs):
            return False
        conditions = spec.get("matchConditions") or []
        if not conditions:
            return True
        activation = {"object": to_cel(attrs.obj), "oldObject": to_cel(attrs.old),
                      "request": to_cel(admission_request(attrs, objects=False))}
        matched, error = self.cel.match_conditions(conditions, activation)
        if error and not hook.ignore:
            log.warning("Failed evaluating match conditions, failing closed %s: %s", hook.name, error)
            raise forbidden(attrs, error)
        return matched

    def _context(self, hook: Hook) -> ssl.SSLContext:
        if hook.ca_bundle not in self._contexts:
            if not hook.ca_bundle:
                self._contexts[hook.ca_bundle] = ssl.create_default_context()  # the system's roots
            else:
                try:
                    pem = base64.b64decode(hook.ca_bundle, validate=True).decode()
                    context = ssl.create_default_context(cadata=pem)
                except (binascii.Error, UnicodeDecodeError, ssl.SSLError, ValueError):
                    raise CallError(hook.name, "could not get REST client: unable to load root "
                                    "certificates: unable to parse bytes as PEM block") from None
                self._contexts[hook.ca_bundle] = context
        return self._contexts[hook.ca_bundle]

    async def _call(self, hook: Hook, attrs: AdmissionAttributes) -> tuple[bool, list[Any]]:
        """POST the review; apply a patch to attrs.obj. Whether the object changed, and the patch."""
        spec = hook.spec
        if attrs.dry_run:
            effects = spec.get("sideEffects")
            if effects is None:
                raise CallError(hook.name, "Webhook SideEffects is nil")
            if effects not in ("None", "NoneOnDryRun"):
                raise ApiError(400, "BadRequest", f'admission webhook "{hook.name}" does not support dry run')
        version = next((v for v in spec.get("admissionReviewVersions") or [] if v in ("v1", "v1beta1")), "")
        if not version:
            raise CallError(hook.name, "could not create admission objects: webhook does not accept known "
                            "AdmissionReview versions (v1, v1beta1)")
        uid = str(uuid.uuid4())
        obj = copy.deepcopy(attrs.obj)
        obj.setdefault("apiVersion", attrs.kind.api_version)
        obj.setdefault("kind", attrs.kind.kind)
        request = admission_request(attrs, uid)
        request["object"] = obj  # oldObject stays, null on CREATE, as Go's RawExtension marshals it
        if not request["name"]:
            del request["name"]
        review = {"apiVersion": f"admission.k8s.io/{version}", "kind": "AdmissionReview", "request": request}
        self.calls[hook.name] += 1
        response = await self._post(hook, review)
        result = self._verify(hook, response, uid, version)
        for warning in result.get("warnings") or []:
            self.warnings.append(str(warning))
        if not result.get("allowed"):
            raise self._rejection(hook, result.get("status") or {})
        raw = result.get("patch")
        if not raw:
            return False, []
        try:
            patch = json.loads(base64.b64decode(raw, validate=True))
        except (ValueError, TypeError) as exc:
            raise CallError(hook.name, f"received undecodable patch in webhook response: {exc}") from None
        if not patch:
            return False, []
        if result.get("patchType", "JSONPatch") != "JSONPatch":
            raise CallError(hook.name, f'unsupported patch type "{result["patchType"]}"')
        try:
            patched = jsonpatch.apply_patch(attrs.obj, patch)
        except (ValueError, TypeError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(500, "InternalError", f"Internal error occurred: {exc}") from None
        if not isinstance(patched, dict):
            raise ApiError(500, "InternalError", "Internal error occurred: the patch did not yield an object")
        changed = patched != attrs.obj
        attrs.obj = patched
        return changed, patch

    async def _post(self, hook: Hook, review: Obj) -> Obj:
        client = hook.spec.get("clientConfig") or {}
        timeout = int(hook.spec.get("timeoutSeconds") or 10)
        query = f"?timeout={_go_duration(timeout)}"
        service = client.get("service")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if service:
            svc, ns = str(service.get("name", "")), str(service.get("namespace", ""))
            port = int(service.get("port") or 443)
            server_name = f"{svc}.{ns}.svc"
            path = str(service.get("path") or "/")
            url = f"https://{server_name}:{port}{path}{query}"
        else:
            url = str(client.get("url", "")) + query  # API validation forbids a query in clientConfig.url
            parsed = URL(url)
            server_name, port = str(parsed.host or ""), int(parsed.port or 443)
        context = self._context(hook)
        host, dial_port = server_name, port
        try:
            async with asyncio.timeout(timeout):
                if service:
                    if self.resolve_service is None:
                        raise CallError(hook.name, "could not get REST client: no service resolver")
                    try:
                        host, dial_port = await self.resolve_service(ns, svc, port)
                    except CallError:
                        raise
                    except Exception as exc:  # no such Service, no ready endpoint
                        raise CallError(hook.name, f'failed to call webhook: Post "{url}": {exc}') from None
                    target = f"https://{host}:{dial_port}{path}{query}"
                    headers["Host"] = f"{server_name}:{port}"
                else:
                    target = url
                status, body = await self._send(target, review, headers, context, server_name)
        except CallError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            text = _transport_text(exc, host, dial_port)
            if isinstance(exc, aiohttp.ClientConnectorCertificateError) and getattr(
                exc.certificate_error, "verify_code", 0
            ) == X509_HOSTNAME_MISMATCH:
                pem = base64.b64decode(hook.ca_bundle).decode() if hook.ca_bundle else ""
                text = "tls: failed to verify certificate: " + await _peer_names(host, dial_port, pem,
                                                                                  server_name)
            raise CallError(hook.name, f'failed to call webhook: Post "{url}": {text}') from None
        if status != 200:
            raise CallError(hook.name, f"failed to call webhook: {_status_text(status, body)}")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise CallError(hook.name, f"received invalid webhook response: {exc}") from None
        if not isinstance(doc, dict):
            raise CallError(hook.name, "received invalid webhook response: not an AdmissionReview")
        return doc

    async def _send(self, url: str, review: Obj, headers: dict[str, str], context: ssl.SSLContext,
                    server_name: str) -> tuple[int, bytes]:
        if self._session is None:
            # No keep-alive: every call does its own handshake against the caBundle of the moment.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        async with self._session.post(url, data=json.dumps(review).encode(), headers=headers, ssl=context,
                                      server_hostname=server_name) as response:
            return response.status, await response.read()

    @staticmethod
    def _verify(hook: Hook, doc: Obj, uid: str, version: str) -> Obj:
        """webhookrequest.VerifyAdmissionResponse (v1 is checked strictly, v1beta1 was never)."""
        def invalid(why: str) -> CallError:
            return CallError(hook.name, f"received invalid webhook response: {why}")

        result = doc.get("response")
        if not isinstance(result, dict):
            raise invalid("webhook response was absent")
        if version == "v1beta1":
            return {**result, "patchType": "JSONPatch"} if result.get("patch") else result
        if result.get("uid") != uid:
            raise invalid(f'expected response.uid="{uid}", got "{result.get("uid") or ""}"')
        if doc.get("apiVersion") != REVIEW or doc.get("kind") != "AdmissionReview":
            raise invalid(f"expected webhook response of {REVIEW}, Kind=AdmissionReview, got "
                          f"{doc.get('apiVersion') or '/'}, Kind={doc.get('kind') or ''}")
        patch_type = result.get("patchType")
        if result.get("patch") and patch_type is None:
            raise invalid("webhook returned response.patch but not response.patchType")
        if not result.get("patch") and patch_type is not None:
            raise invalid("webhook returned response.patchType but not response.patch")
        if patch_type == "":
            raise invalid('webhook returned invalid response.patchType of ""')
        return result

    @staticmethod
    def _rejection(hook: Hook, status: Obj) -> ApiError:
        """webhookerrors.ToStatusErr."""
        denied_by = f'admission webhook "{hook.name}" denied the request'
        code = int(status.get("code") or 0)
        if status.get("message"):
            message = f"{denied_by}: {status['message']}"
        elif status.get("reason"):
            message = f"{denied_by}: {status['reason']}"
        else:
            message = f"{denied_by} without explanation"
        return ApiError(max(code, 400), str(status.get("reason") or ""), message)
