"""One Prometheus counter of Kubernetes API requests for every part:
`eddy_<part>_api_requests_total{verb,resource}`, fed by the `Kube` request hook.

`verb` is the Kubernetes verb (`get list watch create update patch delete`, as in an audit log) and
`resource` the plural with its subresource (`dataloads/status`), or the path for non-resource calls
(`version`). Lists and watches are counted too: `sum without(resource)(...{verb!~"list|watch"})` is
the per-object work, the rest the informers' upkeep.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from eddy.kube.hooks import ApiRequest, RequestHook


def api_request_counter(part: str, registry: CollectorRegistry = REGISTRY) -> RequestHook:
    """A request hook counting `part`'s API requests; install it with `kube.add_request_hook(...)`."""
    requests = Counter(f"eddy_{part}_api_requests", "Kubernetes API requests, by verb and resource",
                       ["verb", "resource"], registry=registry)

    def count(request: ApiRequest) -> None:
        requests.labels(request.verb, request.resource or request.path.strip("/")).inc()

    return count
