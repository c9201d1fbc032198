"""The webhook's CA and serving certificate: SANs, renewal, and reload into a live TLS server."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from eddy.manifests import Manifests
from webhook.certs import CertBundle, TlsReloader, needs_renewal, new_bundle, renew, service_names
from webhook.profiles import InjectorSettings
from webhook.server import FileResolver, bound_port, make_app, start_https

HOSTS = [*service_names("eddy-webhook", "eddy-system"), "127.0.0.1"]


def sans(bundle: CertBundle) -> set[str]:
    ext = bundle.serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        *ext.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress)),
    }


def test_bundle_covers_service_names_and_loopback() -> None:
    bundle = new_bundle(HOSTS)
    assert sans(bundle) == set(HOSTS)
    assert "eddy-webhook.eddy-system.svc" in sans(bundle)
    assert bundle.serving.issuer == bundle.ca.subject
    assert CertBundle.from_secret_data(bundle.to_secret_data()) == bundle
    assert not needs_renewal(bundle, HOSTS)
    assert needs_renewal(bundle, [*HOSTS, "other.example"])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
    assert needs_renewal(bundle, HOSTS, later)


def test_renew_keeps_ca_until_it_nears_its_end() -> None:
    bundle = new_bundle(HOSTS)
    fresh = renew(bundle, HOSTS)
    assert fresh.ca_cert == bundle.ca_cert and fresh.cert != bundle.cert
    short = new_bundle(HOSTS, ca_days=20, days=10)
    rotated = renew(short, HOSTS)
    assert rotated.ca_cert != short.ca_cert
    # During the rotation clients trust both CAs.
    assert rotated.ca_bundle == rotated.ca_cert + short.ca_cert


async def _serial_seen(port: int, cafile: Path) -> int:
    """Open a NEW TLS connection verifying with `cafile`; the serial of the certificate served."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


async def test_reload_without_restart(tmp_path: Path) -> None:
    reloader = TlsReloader(tmp_path / "keys")
    first = new_bundle(["127.0.0.1"], ca_days=20, days=10)
    reloader.load(first)
    app = make_app(FileResolver(Manifests()), InjectorSettings())
    runner = await start_https(app, reloader.context, "127.0.0.1", 0)
    try:
        port = bound_port(runner)
        old_ca = tmp_path / "old-ca.crt"
        old_ca.write_bytes(first.ca_bundle)
        assert await _serial_seen(port, old_ca) == first.serving.serial_number
        second = renew(first, ["127.0.0.1"])  # the CA is near its end: a new CA too
        await asyncio.to_thread(reloader.load, second)
        new_ca = tmp_path / "new-ca.crt"
        new_ca.write_bytes(second.ca_bundle)
        assert await _serial_seen(port, new_ca) == second.serving.serial_number
        with pytest.raises(ssl.SSLCertVerificationError):
            await _serial_seen(port, old_ca)
    finally:
        await runner.cleanup()
