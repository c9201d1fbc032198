"""Names and labels that several parts must agree on (Fluid's where Fluid has one; DESIGN.md "Contracts")."""

from __future__ import annotations

# Pod labels that ask for injection, the opt-out, and the mark left after injection.
LABEL_SIDECAR_TARGET = "alibabacloud.com/fluid-sidecar-target"
SIDECAR_TARGETS = ("eci", "acs")
LABEL_SERVERLESS_INJECT = "serverless.fluid.io/inject"
LABEL_ENABLE_INJECTION = "fluid.io/enable-injection"
LABEL_INJECT_DONE = "done.sidecar.fluid.io/inject"

LABEL_DATASET_ID = "fluid.io/dataset-id"

# Where the parts find their configuration inside a container.
CONFIG_MOUNT_DIR = "/etc/eddy/config"
CONFIG_FILE_KEY = "eddy.yaml"
SECRETS_MOUNT_DIR = "/etc/eddy/secrets"
WORKER_PORT = 8080
SIDECAR_HEALTH_PORT = 8701

# Classic sidecars leave when the controller sets this pod annotation; they see it through a downwardAPI
# volume of the pod's annotations (see controller/podfinish.py for why this mechanism).
STOP_ANNOTATION = "eddy.fluid.io/sidecar-stop"
PODINFO_DIR = "/etc/eddy/podinfo"
PODINFO_ANNOTATIONS = f"{PODINFO_DIR}/annotations"


LABEL_MAX = 63  # a label value, or the name part of a label key


def namespaced_value(prefix: str, namespace: str, name: str, uid: str = "") -> str:
    """`<prefix><ns>-<name>`, or `<prefix><uid>` when that reaches 63 characters (Fluid's
    GetNamespacedNameValueWithPrefix: a long namespace/name falls back to the Dataset's UID)."""
    value = f"{prefix}{namespace}-{name}"
    if len(value) < LABEL_MAX or not uid:
        return value
    return f"{prefix}{uid}"


def dataset_id(namespace: str, name: str, uid: str = "") -> str:
    """The `fluid.io/dataset-id` label value: `<ns>-<name>`, or the Dataset's UID when too long."""
    return namespaced_value("", namespace, name, uid)


def dataset_label(namespace: str, name: str, uid: str = "") -> str:
    """The label Fluid puts on a Dataset's PVC: `fluid.io/s-<ns>-<name>: "true"` (UID when too long)."""
    return namespaced_value("fluid.io/s-", namespace, name, uid)


def pvc_name(dataset: str) -> str:
    return dataset


def pv_name(namespace: str, dataset: str) -> str:
    return f"{namespace}-{dataset}"


def worker_name(dataset: str) -> str:
    """Name of the worker StatefulSet and of its headless Service."""
    return f"{dataset}-eddy-worker"


def config_map_name(dataset: str) -> str:
    return f"{dataset}-eddy-config"


def worker_url(dataset: str, namespace: str, ordinal: int, port: int = WORKER_PORT) -> str:
    """The stable in-cluster URL of one worker (StatefulSet pod behind the headless Service)."""
    name = worker_name(dataset)
    return f"http://{name}-{ordinal}.{name}.{namespace}.svc:{port}"
