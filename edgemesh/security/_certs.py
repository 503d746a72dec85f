"""
Certificates for node identities: a private CA, and node certificates it signs.

A node's identity is one DNS name in its certificate's subjectAltName (also its CN):
the node name as in the catalog, or the router's name.  The subject's OU says the role
(``router`` or ``edge``).  Keys are ECDSA P-256.  Plain functions of bytes and times:
the ``edgemesh certs`` command and the tests call them; nothing here does I/O except the
two ``write_*`` helpers.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..catalog._model import is_dns1123_subdomain

ROLES = ("router", "edge")
ORGANIZATION = "edgemesh"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CA_DAYS = 3650
NODE_DAYS = 365
_BACKDATE = datetime.timedelta(minutes=5)
"""Certificates start a little in the past: clocks of freshly booted edge devices drift."""


class CertError(Exception):
    """A certificate cannot be made or written (the message says why, for operators)."""


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes


def check_node_name(name: str) -> str:
    """Node names are Kubernetes node names: DNS-1123 subdomains, which are also valid
    DNS names in a subjectAltName.  Returns the name; raises CertError."""
    if not is_dns1123_subdomain(name):
        raise CertError(
            f"{name!r} is not a valid node name (lowercase letters, digits, '-' and '.', "
            "at most 253 characters, starting and ending with a letter or digit)"
        )
    return name


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _window(
    valid_from: datetime.datetime | None, days: int
) -> tuple[datetime.datetime, datetime.datetime]:
    if days <= 0:
        raise CertError("--days must be positive")
    start = valid_from or datetime.datetime.now(datetime.timezone.utc) - _BACKDATE
    return start, start + _BACKDATE + datetime.timedelta(days=days)


def make_ca(
    name: str = "edgemesh CA", *, days: int = CA_DAYS, valid_from: datetime.datetime | None = None
) -> Issued:
    """A self-signed CA certificate (path length 0: it signs node certificates only)."""
    key = _new_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    start, end = _window(valid_from, days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def make_node_cert(
    ca: Issued,
    name: str,
    *,
    router: bool = False,
    days: int = NODE_DAYS,
    valid_from: datetime.datetime | None = None,
) -> Issued:
    """A node (or router) certificate and key signed by ``ca``: SAN DNS = ``name``,
    usable both as a TLS server and a TLS client (every node dials and listens)."""
    check_node_name(name)
    try:
        ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    except (ValueError, TypeError) as error:
        raise CertError(f"cannot read the CA: {error}") from None
    if not isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertError("the CA key must be an EC or RSA key")
    ca_public = ca_key.public_key()
    if _spki(ca_public) != _spki(ca_cert.public_key()):
        raise CertError("the CA key does not belong to the CA certificate")
    key = _new_key()
    public = key.public_key()
    start, end = _window(valid_from, days)
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "router" if router else "edge"),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- files ----------------------------------------------------------------------------


def write_file(path: str, data: bytes, *, private: bool, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same directory, then
    a rename): a node that reloads its files never reads half of one.  Private files are
    0600 from the moment they exist; others 0644.  Refuses to replace a file unless
    ``force``."""
    if os.path.lexists(path) and not force:
        raise CertError(f"{path} exists (use --force to replace it)")
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".edgemesh-", dir=directory)
    try:
        # mkstemp creates the file 0600; widen only what is public.
        if not private:
            os.fchmod(handle, 0o644)
        with os.fdopen(handle, "wb") as output:
            output.write(data)
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def make_directory(path: str) -> None:
    """Create ``path`` (0700) when missing."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as error:
        raise CertError(f"cannot create {path}: {error.strerror}") from None
    if not os.path.isdir(path):
        raise CertError(f"{path} is not a directory")


def init_ca_dir(directory: str, *, name: str = "edgemesh CA", days: int = CA_DAYS,
                force: bool = False) -> tuple[str, str]:
    """``edgemesh certs init``: DIR/ca.pem and DIR/ca.key (0600).  Returns both paths."""
    make_directory(directory)
    cert_path = os.path.join(directory, CA_FILE)
    key_path = os.path.join(directory, CA_KEY_FILE)
    if not force:
        for path in (cert_path, key_path):
            if os.path.lexists(path):
                raise CertError(f"{path} exists (use --force to replace the CA)")
    issued = make_ca(name, days=days)
    write_file(key_path, issued.key_pem, private=True, force=force)
    write_file(cert_path, issued.cert_pem, private=False, force=force)
    return cert_path, key_path


def read_ca_dir(directory: str) -> Issued:
    paths = [os.path.join(directory, CA_KEY_FILE), os.path.join(directory, CA_FILE)]
    contents = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                contents.append(handle.read())
        except OSError as error:
            raise CertError(
                f"cannot read {path}: {error.strerror} (make a CA with `edgemesh certs init`)"
            ) from None
    return Issued(contents[0], contents[1])


def issue_into_dir(
    directory: str,
    name: str,
    *,
    router: bool = False,
    days: int = NODE_DAYS,
    out: str | None = None,
    force: bool = False,
) -> tuple[str, str]:
    """``edgemesh certs issue``: OUT/NAME.pem and OUT/NAME.key (0600) signed by the CA in
    DIR (OUT defaults to DIR; when it differs, the CA certificate is copied there too, so
    that OUT is all a node needs: ``--tls-dir OUT``).  Returns the certificate and key paths."""
    check_node_name(name)
    ca = read_ca_dir(directory)
    target = out or directory
    make_directory(target)
    cert_path = os.path.join(target, f"{name}.pem")
    key_path = os.path.join(target, f"{name}.key")
    if not force:
        for path in (cert_path, key_path):
            if os.path.lexists(path):
                raise CertError(f"{path} exists (use --force to replace it)")
    issued = make_node_cert(ca, name, router=router, days=days)
    # Key first: a node watching these files never sees the new certificate with the old key
    # for long (and refuses such a pair until both are there).
    write_file(key_path, issued.key_pem, private=True, force=force)
    write_file(cert_path, issued.cert_pem, private=False, force=force)
    if os.path.abspath(target) != os.path.abspath(directory):
        write_file(os.path.join(target, CA_FILE), ca.cert_pem, private=False, force=True)
    return cert_path, key_path
