"""Admission matching and ValidatingAdmissionPolicy, evaluated as kube-apiserver does (CEL via cel-python).

Two parts. The first is what both admission steps share (`sandbox/admission.py` imports it): rule
matching (operations, apiGroups, apiVersions, resources with `*` and subresources, scope), label
selectors (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist), namespace labels (from the stored
Namespace, plus `kubernetes.io/metadata.name`, which kube-apiserver always sets), the AdmissionRequest
seen by webhooks and by CEL's `request`, and `Cel`, a compile-once evaluator of JSON activations.

The second is `ValidatingPolicies`, the step that runs after mutation: every stored
ValidatingAdmissionPolicyBinding whose policy and match resources select the write is evaluated once per
param object (`paramKind` + `paramRef` name/namespace/selector, `parameterNotFoundAction`) with
`object`, `oldObject`, `request`, `params`, `namespaceObject` and `variables`; a failed validation is
denied (validationActions Deny), warned (Warn) or recorded (Audit); evaluation and configuration errors
follow the policy's `failurePolicy`. The denial is kube-apiserver's Status: `<resource> "<name>" is
forbidden: ValidatingAdmissionPolicy '<p>' with binding '<b>' denied request: <message>`, code from the
validation's `reason` (Invalid 422, the default; Forbidden 403; Unauthorized 401; RequestEntityTooLarge
413).

Not modelled: `authorizer` (absent from the activation), `matchPolicy: Equivalent` across versions (one
version per resource here), type checking at policy creation (a bad expression fails at admission, under
`failurePolicy`), `auditAnnotations` (evaluated into `audit` only), and CEL's Kubernetes libraries beyond
a few string functions. A namespace that is not stored reads as one with only its name label: the
sandbox does not make clients create namespaces first (kube-apiserver's NamespaceLifecycle would).
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from sandbox.apiserver import BY_KIND, AdmissionAttributes, ApiError, Kind

if TYPE_CHECKING:
    from sandbox.apiserver import KubeApiServer

Obj = dict[str, Any]
log = logging.getLogger("sandbox.policy")
ADMISSION_GROUP = "admissionregistration.k8s.io"
# Never sent to webhooks nor policies, so that a bad configuration can always be fixed.
EXEMPT = {"mutatingwebhookconfigurations", "validatingwebhookconfigurations",
          "validatingadmissionpolicies", "validatingadmissionpolicybindings",
          "mutatingadmissionpolicies", "mutatingadmissionpolicybindings"}
REASON_CODES = {"Forbidden": 403, "Unauthorized": 401, "RequestEntityTooLarge": 413, "Invalid": 422}


# ------------------------------------------------------------------------------------------- matching
def kind_of(server: KubeApiServer, api_version: str, kind: str) -> Kind | None:
    """A kind the server serves: its own registry (built-ins and applied CRDs) where it has one."""
    registry = getattr(server, "kinds", None)
    if registry is not None:
        found: Kind | None = registry.by_kind(api_version, kind)
        return found
    return BY_KIND.get((api_version, kind))


def exempt(attrs: AdmissionAttributes) -> bool:
    return attrs.kind.group == ADMISSION_GROUP and attrs.kind.plural in EXEMPT


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector; an absent or empty selector matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        present = key in labels
        if op == "In":
            ok = present and labels[key] in values
        elif op == "NotIn":
            ok = not present or labels[key] not in values
        elif op == "Exists":
            ok = present
        elif op == "DoesNotExist":
            ok = not present
        else:
            raise ApiError(500, "InternalError", f'Internal error occurred: "{op}" is not a valid '
                           "label selector operator")
        if not ok:
            return False
    return True


def _exact_or_wildcard(items: list[str] | None, requested: str) -> bool:
    return any(item in ("*", requested) for item in items or [])


def rule_matches(rule: Obj, attrs: AdmissionAttributes) -> bool:
    """One RuleWithOperations (or NamedRuleWithOperations) against a write, as k8s' rules.Matcher."""
    scope = rule.get("scope") or "*"
    is_ns_object = attrs.kind.plural == "namespaces" and attrs.kind.group == ""
    if scope == "Namespaced" and (is_ns_object or not attrs.kind.namespaced):
        return False
    if scope == "Cluster" and attrs.kind.namespaced:
        return False
    if not _exact_or_wildcard(rule.get("operations"), attrs.operation):
        return False
    if not _exact_or_wildcard(rule.get("apiGroups"), attrs.kind.group):
        return False
    if not _exact_or_wildcard(rule.get("apiVersions"), attrs.kind.version):
        return False
    names = rule.get("resourceNames") or []
    if names and attrs.name not in names:
        return False
    for res in rule.get("resources") or []:
        name, _, sub = res.partition("/")
        if name in ("*", attrs.kind.plural) and sub in ("*", attrs.sub_resource):
            return True
    return False


def namespace_object(server: KubeApiServer, attrs: AdmissionAttributes) -> Obj | None:
    """The Namespace a namespaced write lands in (None for cluster-scoped writes). A Namespace being
    written is its own; one that is not stored reads as `{metadata: {name}}`."""
    if attrs.kind.group == "" and attrs.kind.plural == "namespaces":
        found: Obj | None = copy.deepcopy(attrs.obj)
    elif not attrs.kind.namespaced:
        return None
    else:
        found = server.get_object("namespaces", None, attrs.namespace)
    ns = found or {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": attrs.namespace}}
    meta = ns.setdefault("metadata", {})
    name = meta.get("name") or attrs.namespace or attrs.name
    meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": name}
    return ns


def namespace_selected(server: KubeApiServer, selector: Obj | None, attrs: AdmissionAttributes) -> bool:
    """A namespaceSelector: cluster-scoped writes (other than of a Namespace) always match."""
    if not selector:
        return True
    ns = namespace_object(server, attrs)
    return ns is None or selector_matches(selector, ns["metadata"]["labels"])


def object_selected(selector: Obj | None, attrs: AdmissionAttributes) -> bool:
    """An objectSelector matches when the new or the old object's labels match."""
    if not selector:
        return True
    return any(o is not None and selector_matches(selector, (o.get("metadata") or {}).get("labels") or {})
               for o in (attrs.obj, attrs.old))


def admission_request(attrs: AdmissionAttributes, uid: str | None = None, *,
                      objects: bool = True) -> Obj:
    """The AdmissionRequest (admission.k8s.io/v1) of a write: what webhooks get, and without `object`
    and `oldObject` (`objects=False`; CEL has them as variables of their own) CEL's `request`."""
    kind = attrs.kind
    gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
    gvr = {"group": kind.group, "version": kind.version, "resource": kind.plural}
    options = "CreateOptions" if attrs.operation == "CREATE" else "UpdateOptions"
    request: Obj = {
        "uid": uid or str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk,
        "requestResource": gvr, "name": attrs.name, "operation": attrs.operation,
        "userInfo": {"username": attrs.user, "groups": ["system:masters", "system:authenticated"]},
        "dryRun": attrs.dry_run, "options": {"kind": options, "apiVersion": "meta.k8s.io/v1"},
    }
    if objects:
        request["object"], request["oldObject"] = attrs.obj, attrs.old
    if kind.namespaced:
        request["namespace"] = attrs.namespace
    if attrs.sub_resource:
        request["subResource"] = request["requestSubResource"] = attrs.sub_resource
    return request


def forbidden(attrs: AdmissionAttributes, message: str, code: int = 403,
              reason: str = "Forbidden") -> ApiError:
    """admission.NewForbidden: `pods "x" is forbidden: ...` (`deployments.apps "x"` for named groups)."""
    resource = f"{attrs.kind.plural}.{attrs.kind.group}" if attrs.kind.group else attrs.kind.plural
    return ApiError(code, reason, f'{resource} "{attrs.name}" is forbidden: {message}')


# ------------------------------------------------------------------------------------------------ CEL
class CelError(Exception):
    """A CEL expression failed to compile or to evaluate; the text is kube-apiserver's wording."""


def _lower(s: Any) -> Any:
    return celtypes.StringType(str(s).lower())


def _upper(s: Any) -> Any:
    return celtypes.StringType(str(s).upper())


def _trim(s: Any) -> Any:
    return celtypes.StringType(str(s).strip())


def _split(s: Any, sep: Any) -> Any:
    return celtypes.ListType([celtypes.StringType(p) for p in str(s).split(str(sep))])


def _join(items: Any, sep: Any = "") -> Any:
    return celtypes.StringType(str(sep).join(str(i) for i in items))


# A few of Kubernetes' CEL string library functions (cel-python has the standard ones).
K8S_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lowerAscii": _lower, "upperAscii": _upper, "trim": _trim, "split": _split, "join": _join,
}


def _short(exc: BaseException) -> str:
    """cel-python's error text without the activation dump it appends to undeclared references."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.split(" (in activation", 1)[0][:500]


def to_cel(value: Any) -> Any:
    """JSON -> CEL values (None stays null)."""
    return None if value is None else json_to_cel(copy.deepcopy(value))


class Cel:
    """Compiles each expression once; evaluates it against a JSON activation."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}

    def program(self, expression: str) -> Any:
        if expression not in self._programs:
            try:
                ast = self._env.compile(expression)
            except Exception as exc:  # CELParseError and lark errors
                raise CelError(f"compilation failed: expression '{expression}': {_short(exc)}") from None
            self._programs[expression] = self._env.program(ast, functions=K8S_FUNCTIONS)
        return self._programs[expression]

    def evaluate(self, expression: str, activation: Mapping[str, Any]) -> Any:
        """The CEL value; CelError("expression '<e>' resulted in error: ...") when evaluation fails."""
        program = self.program(expression)
        try:
            result = program.evaluate(dict(activation))
        except Exception as exc:  # CELEvalError, and Python errors from the extension functions
            raise CelError(f"expression '{expression}' resulted in error: {_short(exc)}") from None
        if isinstance(result, CELEvalError):
            raise CelError(f"expression '{expression}' resulted in error: {_short(result)}")
        return result

    def condition(self, expression: str, activation: Mapping[str, Any]) -> bool:
        result = self.evaluate(expression, activation)
        if not isinstance(result, celtypes.BoolType):
            raise CelError(f"expression '{expression}' resulted in error: expected bool, got "
                           f"{type(result).__name__}")
        return bool(result)

    def match_conditions(self, conditions: list[Obj], activation: Mapping[str, Any]) -> tuple[bool, str]:
        """kube's matchconditions.Matcher: any false -> (False, ""); else errors -> (False, error text);
        else (True, "")."""
        errors: list[str] = []
        for cond in conditions:
            try:
                if not self.condition(str(cond.get("expression", "")), activation):
                    return False, ""
            except CelError as exc:
                errors.append(str(exc))
        if errors:
            return False, errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        return True, ""


# --------------------------------------------------------------------------------- the policy step
@dataclass
class PolicyDecision:
    action: str  # deny | admit
    message: str
    reason: str = "Invalid"


@dataclass
class ValidatingPolicies:
    """The ValidatingAdmissionPolicy admission step over the server's stored policies and bindings.

    `warnings` collects Warn results (kube-apiserver sends them as `Warning` headers), `audit` the Audit
    results and auditAnnotations (kube-apiserver writes them to the audit log)."""

    server: KubeApiServer
    cel: Cel = field(default_factory=Cel)
    warnings: list[str] = field(default_factory=list)
    audit: list[Obj] = field(default_factory=list)
    evaluations: int = 0  # policy evaluations (one per binding and param), for tests

    async def __call__(self, attrs: AdmissionAttributes) -> Obj:
        if exempt(attrs):
            return attrs.obj
        policies = {p["metadata"]["name"]: p for p in self.server.objects("validatingadmissionpolicies")}
        denied: list[tuple[Obj, Obj, PolicyDecision]] = []
        for binding in self.server.objects("validatingadmissionpolicybindings"):
            policy = policies.get((binding.get("spec") or {}).get("policyName", ""))
            if policy is None:
                continue
            denied.extend((policy, binding, d) for d in self._binding(policy, binding, attrs))
        if denied:
            policy, binding, decision = denied[0]
            message = (f"ValidatingAdmissionPolicy '{policy['metadata']['name']}' with binding "
                       f"'{binding['metadata']['name']}' denied request: {decision.message}")
            reason = decision.reason or "Invalid"
            raise forbidden(attrs, message, REASON_CODES.get(reason, 422), reason)
        return attrs.obj

    def _matches(self, resources: Obj | None, attrs: AdmissionAttributes) -> bool:
        if not resources:
            return True
        rules = resources.get("resourceRules")
        if rules is not None and not any(rule_matches(r, attrs) for r in rules):
            return False
        if any(rule_matches(r, attrs) for r in resources.get("excludeResourceRules") or []):
            return False
        return (namespace_selected(self.server, resources.get("namespaceSelector"), attrs)
                and object_selected(resources.get("objectSelector"), attrs))

    def _binding(self, policy: Obj, binding: Obj, attrs: AdmissionAttributes) -> list[PolicyDecision]:
        """The denials one binding yields (its Warn and Audit results are recorded on the way)."""
        spec, bspec = policy.get("spec") or {}, binding.get("spec") or {}
        constraints = spec.get("matchConstraints") or {}
        if not constraints.get("resourceRules") or not self._matches(constraints, attrs):
            return []
        if not self._matches(bspec.get("matchResources"), attrs):
            return []
        fail = (spec.get("failurePolicy") or "Fail") == "Fail"
        try:
            params = self._params(spec.get("paramKind"), bspec.get("paramRef"), attrs)
        except CelError as exc:
            return [PolicyDecision("deny", f"failed to configure binding: {exc}")] if fail else []
        actions = bspec.get("validationActions") or []
        denials: list[PolicyDecision] = []
        for param in params:
            self.evaluations += 1
            for decision in self._validate(spec, attrs, param, fail):
                if decision.action != "deny":
                    continue
                if "Deny" in actions:
                    denials.append(decision)
                if "Warn" in actions:
                    self.warnings.append(f"Validation failed for ValidatingAdmissionPolicy "
                                         f"'{policy['metadata']['name']}' with binding "
                                         f"'{binding['metadata']['name']}': {decision.message}")
                if "Audit" in actions:
                    self.audit.append({"policy": policy["metadata"]["name"],
                                       "binding": binding["metadata"]["name"], "message": decision.message,
                                       "validationActions": actions})
        return denials

    def _params(self, param_kind: Obj | None, ref: Obj | None,
                attrs: AdmissionAttributes) -> list[Obj | None]:
        if not param_kind:
            return [None]
        if not ref:
            raise CelError(f"paramKind kind `{param_kind.get('kind')}` is defined but paramRef is not set "
                           "for binding")
        kind = kind_of(self.server, str(param_kind.get("apiVersion", "")), str(param_kind.get("kind", "")))
        if kind is None:
            raise CelError(f"failed to find resource referenced by paramKind: "
                           f"'{param_kind.get('apiVersion')}, Kind={param_kind.get('kind')}'")
        namespace: str | None = None
        if kind.namespaced:
            namespace = ref.get("namespace") or (attrs.namespace if attrs.kind.namespaced else "")
            if not namespace:
                raise CelError("cannot use namespaced paramRef in policy binding that matches "
                               "cluster-scoped resources")
        found: list[Obj | None]
        key = kind.key
        if ref.get("name"):
            one = self.server.get_object(key, namespace, ref["name"])
            found = [one] if one is not None else []
        elif ref.get("selector") is not None:
            found = [o for o in self.server.objects(key, namespace)
                     if selector_matches(ref["selector"], o["metadata"].get("labels") or {})]
        else:
            found = []
        if not found and ref.get("parameterNotFoundAction") == "Deny":
            raise CelError("no params found for policy binding with `Deny` parameterNotFoundAction")
        return found

    def _validate(self, spec: Obj, attrs: AdmissionAttributes, param: Obj | None,
                  fail: bool) -> list[PolicyDecision]:
        # kube-apiserver leaves namespaceObject null for a write of a Namespace itself.
        is_namespace = attrs.kind.group == "" and attrs.kind.plural == "namespaces"
        ns = None if is_namespace else namespace_object(self.server, attrs)
        activation: dict[str, Any] = {
            "object": to_cel(attrs.obj), "oldObject": to_cel(attrs.old),
            "request": to_cel(admission_request(attrs, objects=False)), "params": to_cel(param),
            "namespaceObject": to_cel(ns),
        }
        on_error = "deny" if fail else "admit"
        matched, error = self.cel.match_conditions(spec.get("matchConditions") or [], activation)
        if error:
            return [PolicyDecision(on_error, error)]
        if not matched:
            return []
        variables: dict[Any, Any] = celtypes.MapType()
        activation["variables"] = variables
        for var in spec.get("variables") or []:
            name = celtypes.StringType(var.get("name", ""))
            try:
                variables[name] = self.cel.evaluate(str(var.get("expression", "")), activation)
            except CelError as exc:  # only an error where a validation uses it
                variables[name] = CELEvalError(f'composited variable "{name}" fails to evaluate: {exc}')
        decisions = [self._one(v, activation, on_error) for v in spec.get("validations") or []]
        for annotation in spec.get("auditAnnotations") or []:
            try:
                value = self.cel.evaluate(str(annotation.get("valueExpression", "")), activation)
            except CelError as exc:
                decisions.append(PolicyDecision(on_error, str(exc)))
                continue
            if value is not None:
                self.audit.append({"key": annotation.get("key"), "value": str(value)})
        return [d for d in decisions if d.action == "deny"]

    def _one(self, validation: Obj, activation: Mapping[str, Any], on_error: str) -> PolicyDecision:
        expression = str(validation.get("expression", ""))
        try:
            if self.cel.condition(expression, activation):
                return PolicyDecision("admit", "")
        except CelError as exc:
            return PolicyDecision(on_error, str(exc))
        message = ""
        if validation.get("messageExpression"):
            try:
                value = self.cel.evaluate(str(validation["messageExpression"]), activation)
                if isinstance(value, str) and value.strip() and "\n" not in value and len(value) <= 5000:
                    message = value.strip()
            except CelError as exc:
                log.warning("messageExpression failed, using message: %s", exc)
        if not message and validation.get("message"):
            message = str(validation["message"]).strip()
        if not message:
            message = f"failed expression: {expression.strip()}"
        return PolicyDecision("deny", message, str(validation.get("reason") or "Invalid"))
