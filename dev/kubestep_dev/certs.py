"""Certificates and keys for the local control plane.

A real API server only talks TLS and authenticates clients by certificate, and
service-account tokens need a signing key pair. Generating them here (with
`cryptography`, no openssl/cfssl binaries) keeps `kubestep dev up` self-contained.

Everything is generated once into the state directory and reused, so restarts
keep the same CA and existing kubeconfigs stay valid. A certificate is only
re-issued when it is missing, close to expiry, no longer matches what we would
issue (names), or was not signed by the current CA.

`cryptography` is imported lazily: it is in the optional `dev` extra, and the
`kubestep` CLI must load without it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

CA_NAME = "kubestep-dev-ca"
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IPS = ("127.0.0.1", "10.0.0.1")

_CA_DAYS = 3650
_LEAF_DAYS = 1825
# Re-issue a leaf certificate when it has less than this left.
_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class LeafSpec:
    """What one leaf certificate must say."""

    name: str
    common_name: str
    organizations: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


_CLIENTS_AND_CONTROLLER_MANAGER: tuple[LeafSpec, ...] = (
    LeafSpec("admin", "kubestep-admin", ("system:masters",), client=True),
    LeafSpec("controller-manager", "system:kube-controller-manager", client=True),
    LeafSpec(
        "controller-manager-serving",
        "kube-controller-manager",
        server=True,
        dns_names=("localhost",),
        ips=("127.0.0.1",),
    ),
)


def leaves(apiserver_ips: tuple[str, ...] = ()) -> tuple[LeafSpec, ...]:
    """The leaf certificates; `apiserver_ips` adds addresses the API server is reached at (a node's)."""
    apiserver = LeafSpec(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns_names=APISERVER_DNS_NAMES,
        ips=APISERVER_IPS + tuple(ip for ip in apiserver_ips if ip not in APISERVER_IPS),
    )
    return (apiserver, *_CLIENTS_AND_CONTROLLER_MANAGER)


#: A plane without a node.
LEAVES: tuple[LeafSpec, ...] = leaves()


@dataclass(frozen=True)
class Pki:
    """File layout of the generated certificates (paths only; no I/O)."""

    dir: Path
    leaves: tuple[LeafSpec, ...] = field(default=LEAVES, repr=False)

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def ca_cert(self) -> Path:
        return self.cert("ca")

    @property
    def ca_key(self) -> Path:
        return self.key("ca")

    @property
    def sa_key(self) -> Path:
        """Private RSA key that signs service-account tokens."""
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        """Public half of `sa_key`, used by the API server to verify tokens."""
        return self.dir / "sa.pub"


def ensure_pki(directory: Path, specs: tuple[LeafSpec, ...] = LEAVES) -> Pki:
    """Create (or complete, or repair) the PKI in `directory`; return its layout."""
    pki = Pki(directory, specs)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_cert, ca_key, ca_new = _ensure_ca(pki)
    for spec in pki.leaves:
        _ensure_leaf(pki, spec, ca_cert, ca_key, force=ca_new)
    _ensure_sa_keys(pki)
    return pki


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _new_ec_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: EllipticCurvePrivateKey | RSAPrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_cert(path: Path) -> x509.Certificate | None:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_ec_key(path: Path) -> EllipticCurvePrivateKey | None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _ensure_ca(pki: Pki) -> tuple[x509.Certificate, EllipticCurvePrivateKey, bool]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    cert, key = _load_cert(pki.ca_cert), _load_ec_key(pki.ca_key)
    if (
        cert is not None
        and key is not None
        and cert.not_valid_after_utc - _now() > dt.timedelta(days=365)
        and cert.public_key() == key.public_key()
    ):
        return cert, key, False
    key = _new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    _write(pki.ca_key, _key_pem(key), private=True)
    _write(pki.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, key, True


def _leaf_is_current(cert: x509.Certificate, spec: LeafSpec, ca_cert: x509.Certificate) -> bool:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # InvalidSignature, ValueError, TypeError: all mean "re-issue"
        return False
    if cert.not_valid_after_utc - _now() < _RENEW_BEFORE:
        return False
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if cns != [spec.common_name] or sorted(orgs) != sorted(spec.organizations):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = set(san.get_values_for_type(x509.DNSName))
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        dns, ips = set(), set()
    return dns == set(spec.dns_names) and ips == set(spec.ips)


def _ensure_leaf(
    pki: Pki,
    spec: LeafSpec,
    ca_cert: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    *,
    force: bool,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_path, key_path = pki.cert(spec.name), pki.key(spec.name)
    if not force:
        cert, key = _load_cert(cert_path), _load_ec_key(key_path)
        if (
            cert is not None
            and key is not None
            and cert.public_key() == key.public_key()
            and _leaf_is_current(cert, spec, ca_cert)
        ):
            return
    key = _new_ec_key()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in spec.organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name))
    usages = []
    if spec.server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if spec.client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if spec.dns_names or spec.ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _ensure_sa_keys(pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key: object
    try:
        key = serialization.load_pem_private_key(pki.sa_key.read_bytes(), password=None)
    except (OSError, ValueError):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(pki.sa_key, _key_pem(key), private=True)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        current = pki.sa_pub.read_bytes()
    except OSError:
        current = b""
    if current != pub:
        _write(pki.sa_pub, pub, private=False)
