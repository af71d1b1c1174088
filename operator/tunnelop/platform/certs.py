"""Certificates the operator manages itself for its admission webhook: a private CA (its PEM
goes into the webhook configurations' caBundle) and a serving certificate it signs for the
webhook's host names and addresses.

Two uses: a throw-away pair for local runs (issue_webhook_certificate, for 127.0.0.1), and
a long-lived pair kept in a Secret when running in a cluster behind a Service (WebhookPair,
with the pure renewal decision the leader applies).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_NAME = "tunnelop webhook CA"
SERVING_DAYS = 365
CA_DAYS = 3650
# The leader renews the serving certificate when it has less than this left.
RENEW_BEFORE = datetime.timedelta(days=30)
# Keys of the webhook Secret: kubernetes.io/tls plus the CA, which signs the renewals.
CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"
SECRET_KEYS = (CA_CERT_KEY, CA_KEY_KEY, CERT_KEY, KEY_KEY)


@dataclass(frozen=True)
class WebhookCertificate:
    ca_pem: bytes
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class WebhookPair:
    """A CA and the serving certificate it signed, all PEM."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    def secret_data(self) -> dict[str, bytes]:
        return {
            CA_CERT_KEY: self.ca_cert,
            CA_KEY_KEY: self.ca_key,
            CERT_KEY: self.cert,
            KEY_KEY: self.key,
        }

    @classmethod
    def from_secret_data(cls, data: dict[str, bytes]) -> WebhookPair | None:
        """The pair in a Secret's (decoded) data; None when a key is missing or empty."""
        if not all(data.get(key) for key in SECRET_KEYS):
            return None
        return cls(data[CA_CERT_KEY], data[CA_KEY_KEY], data[CERT_KEY], data[KEY_KEY])


@dataclass(frozen=True)
class Renewal:
    """Why the pair must be reissued, and whether its CA goes too (a new caBundle)."""

    reason: str
    new_ca: bool


def service_host_names(namespace: str, service: str) -> list[str]:
    """The names the API server may check the webhook's certificate against; the first is
    the one it uses for a Service reference (service.namespace.svc)."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject(hosts: list[str]) -> x509.Name:
    """The first host short enough for a common name (64 characters); clients check the
    SubjectAlternativeName, so a long namespace may leave the subject empty."""
    fitting = [host for host in hosts if len(host) <= 64]
    return _name(fitting[0]) if fitting else x509.Name([])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue_ca(
    now: datetime.datetime, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, ca_key


def _issue_serving(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: list[str],
    now: datetime.datetime,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_subject(hosts))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue_pair(
    hosts: list[str],
    now: datetime.datetime,
    *,
    keep_ca: WebhookPair | None = None,
    days: int = SERVING_DAYS,
    ca_days: int = CA_DAYS,
) -> WebhookPair:
    """A serving certificate for `hosts`, signed by the CA of `keep_ca` (so that the
    caBundle stays as it is), or by a new CA."""
    if keep_ca is not None:
        ca_cert = x509.load_pem_x509_certificate(keep_ca.ca_cert)
        ca_key = serialization.load_pem_private_key(keep_ca.ca_key, password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError("the webhook CA key is not an EC key")
        ca_pem, ca_key_pem = keep_ca.ca_cert, keep_ca.ca_key
    else:
        ca_cert, ca_key = _issue_ca(now, ca_days)
        ca_pem, ca_key_pem = _pem(ca_cert), _key_pem(ca_key)
    cert, key = _issue_serving(ca_cert, ca_key, hosts, now, days)
    return WebhookPair(ca_pem, ca_key_pem, _pem(cert), _key_pem(key))


def renewal_due(
    pair: WebhookPair | None,
    hosts: list[str],
    now: datetime.datetime,
    *,
    renew_before: datetime.timedelta = RENEW_BEFORE,
    days: int = SERVING_DAYS,
) -> Renewal | None:
    """Whether `pair` must be reissued to serve `hosts` at `now`, and why; None when it is
    good. The CA is kept unless it is unusable or would expire before a new serving
    certificate does (a CA change means a new caBundle)."""
    if pair is None:
        return Renewal("no certificate yet", new_ca=True)
    try:
        ca_cert = x509.load_pem_x509_certificate(pair.ca_cert)
        ca_key = serialization.load_pem_private_key(pair.ca_key, password=None)
    except ValueError as exc:
        return Renewal(f"the CA cannot be read: {exc}", new_ca=True)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        return Renewal("ca.key is not an EC key (the operator signs with EC P-256)", new_ca=True)
    if ca_key.public_key() != ca_cert.public_key():
        return Renewal("ca.key does not belong to ca.crt", new_ca=True)
    ca_left = ca_cert.not_valid_after_utc - now
    if ca_left < datetime.timedelta(days=days) + renew_before:
        return Renewal(f"the CA expires in {ca_left.days} days", new_ca=True)
    try:
        cert = x509.load_pem_x509_certificate(pair.cert)
        key = serialization.load_pem_private_key(pair.key, password=None)
    except ValueError as exc:
        return Renewal(f"the serving certificate cannot be read: {exc}", new_ca=False)
    if key.public_key() != cert.public_key():
        return Renewal("tls.key does not belong to tls.crt", new_ca=False)
    if cert.issuer != ca_cert.subject or not _signed_by(cert, ca_cert):
        return Renewal("tls.crt is not signed by ca.crt", new_ca=False)
    names = certificate_names(cert)
    if names != set(hosts):
        return Renewal(
            f"tls.crt names {sorted(names)}, the Service needs {sorted(hosts)}", new_ca=False
        )
    left = cert.not_valid_after_utc - now
    if left < renew_before:
        return Renewal(f"tls.crt expires in {left.days} days", new_ca=False)
    return None


def certificate_names(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def write_pair(directory: Path, pair: WebhookPair) -> None:
    """The serving certificate and key as tls.crt and tls.key in `directory`, both switched
    at once (as the kubelet updates a Secret volume: the files link into a `..data`
    directory that is replaced atomically), since the webhook server rereads them when they
    change and must never find a key that does not belong to the certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    version = Path(tempfile.mkdtemp(prefix="..version-", dir=directory))
    for name, content in ((KEY_KEY, pair.key), (CERT_KEY, pair.cert)):
        (version / name).write_bytes(content)
        (version / name).chmod(0o600)
    data, swap = directory / "..data", directory / "..data.swap"
    swap.unlink(missing_ok=True)
    swap.symlink_to(version.name)
    swap.replace(data)
    for name in (CERT_KEY, KEY_KEY):
        link = directory / name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(Path("..data") / name)
    for old in directory.glob("..version-*"):
        if old != version:
            shutil.rmtree(old, ignore_errors=True)


def issue_webhook_certificate(
    directory: Path, hosts: list[str], days: int = SERVING_DAYS
) -> WebhookCertificate:
    """Write a fresh CA-signed server certificate for `hosts` into `directory` (local runs)."""
    pair = issue_pair(hosts, datetime.datetime.now(datetime.UTC), days=days, ca_days=days)
    write_pair(directory, pair)
    return WebhookCertificate(pair.ca_cert, directory / CERT_KEY, directory / KEY_KEY)
