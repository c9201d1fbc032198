"""Cluster mode certificates: the TLS Secret replicas share, and the caBundle of the webhook config.

`CertKeeper.sync()` is run at start and every `--renew-check` seconds by every replica:
- no Secret: create one (a 409 means another replica won the race: adopt theirs);
- a Secret that is malformed, near its end or missing a name: renew it (update with its
  resourceVersion; a 409 means another replica renewed first: adopt theirs);
- load the Secret's certificate into the live SSLContext when it differs from what is served;
- write the CA bundle into every webhook entry's `clientConfig.caBundle` where it differs.
The API side goes through `SecretStore`, a four-call protocol the cluster wiring implements.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from webhook.certs import RENEW_BEFORE, CertBundle, TlsReloader, needs_renewal, new_bundle, renew

log = logging.getLogger("eddy.webhook.tls")


class Conflict(Exception):
    """The API answered 409: someone else created or changed the object first."""


class SecretStore(Protocol):
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def get_webhook_config(self, name: str) -> dict[str, Any] | None: ...

    async def patch_webhook_config(self, name: str, patch: list[dict[str, Any]]) -> None: ...


def secret_body(namespace: str, name: str, bundle: CertBundle, resource_version: str = "") -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/name": "eddy-webhook", "app.kubernetes.io/part-of": "eddy"},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": bundle.to_secret_data(),
    }


def _bundle_of(secret: dict[str, Any]) -> CertBundle | None:
    try:
        return CertBundle.from_secret_data(secret.get("data") or {})
    except (KeyError, ValueError, binascii.Error):
        return None


def ca_bundle_patch(config: dict[str, Any], ca_pem: bytes) -> list[dict[str, Any]]:
    """JSON patch ops setting `caBundle` on every webhook entry where it differs (pure)."""
    encoded = base64.b64encode(ca_pem).decode()
    ops: list[dict[str, Any]] = []
    for index, hook in enumerate(config.get("webhooks") or []):
        client = hook.get("clientConfig") or {}
        if client.get("caBundle") != encoded:
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded})
    return ops


class CertKeeper:
    def __init__(
        self,
        store: SecretStore,
        reloader: TlsReloader,
        *,
        namespace: str,
        secret: str,
        webhook_config: str,
        hosts: Sequence[str],
        days: int = 365,
        ca_days: int = 3650,
        before: dt.timedelta = RENEW_BEFORE,
    ) -> None:
        self.store = store
        self.reloader = reloader
        self.namespace = namespace
        self.secret = secret
        self.webhook_config = webhook_config
        self.hosts = list(hosts)
        self.days = days
        self.ca_days = ca_days
        self.before = before

    def _fresh(self, old: CertBundle | None, now: dt.datetime) -> CertBundle:
        if old is None:
            return new_bundle(self.hosts, now, ca_days=self.ca_days, days=self.days)
        return renew(old, self.hosts, now, ca_days=self.ca_days, days=self.days, before=self.before)

    async def sync(self, now: dt.datetime | None = None) -> str:
        """One round; returns what happened to the Secret: created, adopted, renewed or kept."""
        now = now or dt.datetime.now(dt.UTC)
        action = "kept"
        secret = await self.store.get_secret(self.namespace, self.secret)
        if secret is None:
            bundle = await asyncio.to_thread(self._fresh, None, now)
            try:
                secret = await self.store.create_secret(
                    self.namespace, secret_body(self.namespace, self.secret, bundle)
                )
                action = "created"
            except Conflict:
                secret = await self.store.get_secret(self.namespace, self.secret)
                action = "adopted"
            if secret is None:
                raise RuntimeError(f"Secret {self.namespace}/{self.secret} vanished while being created")
        bundle_or_none = _bundle_of(secret)
        if bundle_or_none is None or needs_renewal(bundle_or_none, self.hosts, now, self.before):
            fresh = await asyncio.to_thread(self._fresh, bundle_or_none, now)
            version = str((secret.get("metadata") or {}).get("resourceVersion") or "")
            try:
                secret = await self.store.replace_secret(
                    self.namespace, self.secret, secret_body(self.namespace, self.secret, fresh, version)
                )
                action = "renewed"
            except Conflict:
                secret = await self.store.get_secret(self.namespace, self.secret) or secret
                action = "adopted"
            bundle_or_none = _bundle_of(secret)
            if bundle_or_none is None:
                raise RuntimeError(f"Secret {self.namespace}/{self.secret} holds no usable certificate")
        bundle = bundle_or_none
        if self.reloader.bundle != bundle:
            await asyncio.to_thread(self.reloader.load, bundle)
            log.info(
                "serving certificate loaded (%s; valid until %s)", action, bundle.serving.not_valid_after_utc
            )
        await self.ensure_ca_bundle(bundle.ca_bundle)
        return action

    async def ensure_ca_bundle(self, ca_pem: bytes) -> bool:
        """Write the CA into the webhook config; False if the config does not exist (yet)."""
        config = await self.store.get_webhook_config(self.webhook_config)
        if config is None:
            log.warning(
                "MutatingWebhookConfiguration %s not found; caBundle not written", self.webhook_config
            )
            return False
        ops = ca_bundle_patch(config, ca_pem)
        if ops:
            await self.store.patch_webhook_config(self.webhook_config, ops)
            log.info("caBundle written into %d webhook(s) of %s", len(ops), self.webhook_config)
        return True
