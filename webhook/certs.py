"""The webhook's own CA and serving certificate (made with `cryptography`), and hot reload.

Pure parts: `new_bundle`, `renew_serving`, `needs_renewal`, `CertBundle.to_secret_data/from_secret_data`.
`TlsReloader` owns ONE `ssl.SSLContext` that the server keeps using; `load(bundle)` calls
`load_cert_chain` on it again, which new connections pick up without a restart.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use to reach the Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


@dataclass(frozen=True)
class CertBundle:
    ca_cert: bytes  # PEM
    ca_key: bytes = field(repr=False)  # private keys never show in a repr, a log line or a traceback
    cert: bytes
    key: bytes = field(repr=False)
    ca_bundle: bytes  # PEM of the CAs clients should trust (current first, then a previous one)

    def to_secret_data(self) -> dict[str, str]:
        raw = {
            "ca.crt": self.ca_cert,
            "ca.key": self.ca_key,
            "tls.crt": self.cert,
            "tls.key": self.key,
            "ca-bundle.crt": self.ca_bundle,
        }
        return {k: base64.b64encode(v).decode() for k, v in raw.items()}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> CertBundle:
        """From a Secret's `data`; KeyError/ValueError if a key is missing or not base64."""
        get = {
            k: base64.b64decode(data[k], validate=True) for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")
        }
        bundle = base64.b64decode(data["ca-bundle.crt"]) if "ca-bundle.crt" in data else get["ca.crt"]
        return cls(get["ca.crt"], get["ca.key"], get["tls.crt"], get["tls.key"], bundle)

    @property
    def serving(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert)

    @property
    def ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_cert)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(now: dt.datetime, days: int) -> tuple[bytes, bytes]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"eddy-webhook-ca-{int(now.timestamp())}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _make_serving(
    ca_cert_pem: bytes, ca_key_pem: bytes, hosts: Sequence[str], now: dt.datetime, days: int
) -> tuple[bytes, bytes]:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_bundle(
    hosts: Sequence[str], now: dt.datetime | None = None, *, ca_days: int = CA_DAYS, days: int = SERVING_DAYS
) -> CertBundle:
    """A fresh CA and a serving certificate for `hosts` (DNS names and IP addresses)."""
    now = now or dt.datetime.now(dt.UTC)
    ca_cert, ca_key = _make_ca(now, ca_days)
    cert, key = _make_serving(ca_cert, ca_key, hosts, now, days)
    return CertBundle(ca_cert, ca_key, cert, key, ca_cert)


def renew(
    old: CertBundle,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    *,
    ca_days: int = CA_DAYS,
    days: int = SERVING_DAYS,
    before: dt.timedelta = RENEW_BEFORE,
) -> CertBundle:
    """A new serving certificate; a new CA too if the old one is near its end (then trusted alongside)."""
    now = now or dt.datetime.now(dt.UTC)
    if old.ca.not_valid_after_utc - now > before + dt.timedelta(days=days) / 10:
        cert, key = _make_serving(old.ca_cert, old.ca_key, hosts, now, days)
        return CertBundle(old.ca_cert, old.ca_key, cert, key, old.ca_bundle)
    ca_cert, ca_key = _make_ca(now, ca_days)
    cert, key = _make_serving(ca_cert, ca_key, hosts, now, days)
    trusted = ca_cert + (old.ca_cert if old.ca.not_valid_after_utc > now else b"")
    return CertBundle(ca_cert, ca_key, cert, key, trusted)


def needs_renewal(
    bundle: CertBundle,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    before: dt.timedelta = RENEW_BEFORE,
) -> bool:
    """True when the serving cert ends within `before`, or does not cover every host."""
    now = now or dt.datetime.now(dt.UTC)
    cert = bundle.serving
    if cert.not_valid_after_utc - now <= before:
        return True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    covered = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return not set(hosts) <= covered


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write atomically (rename) so a reader never sees half a PEM file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TlsReloader:
    """One server SSLContext whose certificate can be swapped while serving."""

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = key_dir
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.bundle: CertBundle | None = None

    def load(self, bundle: CertBundle) -> None:
        """(Re)load the chain; blocking file I/O of a few KB (call via asyncio.to_thread if serving)."""
        cert_path, key_path = self.key_dir / "tls.crt", self.key_dir / "tls.key"
        write_private(cert_path, bundle.cert, 0o644)
        write_private(key_path, bundle.key)
        self.context.load_cert_chain(cert_path, key_path)
        self.bundle = bundle
