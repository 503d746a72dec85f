"""
A node's TLS material: the CA bundle, its certificate and key, read from files and
checked together, and the identity a certificate carries.

Plain Python over bytes and files: no reactor.  Errors are ``TLSFileError`` with a
message an operator can act on (which file, what is wrong).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns, verify_certificate_hostname
from service_identity.hazmat import DNSPattern
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    trustRootFromCertificates,
)

from ._certs import ROLES, describe_ca
from ._config import TLSConfig, TLSFileError

MAX_FILE_BYTES = 1 << 20
"""A CA bundle, certificate or key file larger than this is refused (never read whole)."""

CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    # TLS 1.2: forward secrecy and AEAD only.  TLS 1.3 suites are all modern and are
    # configured by OpenSSL apart from this list.
    "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"
)
MINIMUM_TLS = TLSVersion.TLSv1_2
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
"""OpenSSL's TLS 1.3 suites, AES-128-GCM first (OpenSSL puts AES-256 first): 10 AES rounds
instead of 14 (bench/tls_cost.py: the cipher 5.26 -> 4.61 M instructions per MiB, both
edges).  The server's order decides (Twisted sets OP_CIPHER_SERVER_PREFERENCE); the same
three suites stay acceptable."""


@contextlib.contextmanager
def quiet_pyopenssl() -> Iterator[None]:
    """Twisted's TLS options take pyOpenSSL X509/PKey objects, and pyOpenSSL warns that
    passing them is deprecated each time a context is made: not ours to fix, so not ours
    to log on every connection."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing pyOpenSSL", category=DeprecationWarning)
        yield


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is."""

    name: str
    """The one DNS name of its subjectAltName: a node name, or the router's name."""
    role: str | None
    """``router`` or ``edge`` (the subject's OU, as ``edgemesh certs issue`` writes it);
    None for a certificate from another tool, whose role is then not constrained."""
    serial: int
    not_after: datetime.datetime

    def describe(self) -> str:
        role = self.role or "any role"
        return (f"{self.name} ({role}, serial {self.serial:x}, "
                f"valid until {self.not_after:%Y-%m-%d %H:%M}Z)")


class IdentityError(Exception):
    """A certificate carries no usable node identity."""


def identity_of(cert: x509.Certificate) -> Identity:
    """The node identity of ``cert``: exactly one DNS subjectAltName, no wildcard (a
    wildcard names many nodes, an identity names one).  Raises IdentityError."""
    try:
        patterns = extract_patterns(cert)
    except CertificateError as error:
        raise IdentityError(f"unreadable subjectAltName: {error}") from None
    names = [p.pattern.decode("ascii", "replace") for p in patterns if isinstance(p, DNSPattern)]
    if not names:
        raise IdentityError("the certificate has no DNS name in its subjectAltName")
    if len(names) != 1:
        raise IdentityError(f"the certificate names several nodes: {', '.join(names)}")
    name = names[0].lower()
    if "*" in name:
        raise IdentityError(f"a wildcard certificate ({name}) is not a node identity")
    role = None
    for attribute in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = attribute.value if isinstance(attribute.value, str) else ""
        if value in ROLES:
            role = value
    return Identity(name, role, cert.serial_number, cert.not_valid_after_utc)


def names_match(cert: x509.Certificate, name: str) -> bool:
    """Does ``cert`` identify the node ``name``?  The name check is service_identity's
    (RFC 6125), on top of identity_of's rule of one exact name."""
    try:
        verify_certificate_hostname(cert, name)
    except (VerificationError, CertificateError, ValueError):
        return False
    return identity_of(cert).name == name.lower()


# --- reading the files ------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise TLSFileError(f"{what} {path}: {error.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TLSFileError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def file_signature(config: TLSConfig) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when any of the three files is replaced or rewritten (inode, size,
    mtime, ctime); missing files count as a change too."""
    signature = []
    for path in (config.ca, config.cert, config.key):
        try:
            st = os.stat(path)
        except OSError:
            signature.append((-1, -1, -1, -1))
        else:
            signature.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(signature)


def _certificates(data: bytes, path: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TLSFileError(f"{what} {path}: not a PEM certificate ({error})") from None
    if not certs:
        raise TLSFileError(f"{what} {path}: no certificate in it")
    return certs


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


_Key = (
    ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey)


@dataclass(frozen=True)
class TLSMaterial:
    """The three files, read and checked together, and what Twisted needs from them."""

    identity: Identity
    server_options: CertificateOptions
    """For accepted connections: our certificate, and a client certificate is required
    and verified against the CA bundle."""
    private_certificate: PrivateCertificate
    extra_chain: tuple[crypto.X509, ...]
    trust_root: object
    signature: tuple[tuple[int, int, int, int], ...]
    cas: tuple[str, ...] = ()
    """The CAs of the bundle, one line each (name, fingerprint, validity), for the logs."""

    def describe(self) -> str:
        """Who this node is, and which CAs it trusts (a CA rotation changes only those)."""
        count = len(self.cas)
        trusted = f"; trusting {count} CA{'' if count == 1 else 's'}: {', '.join(self.cas)}"
        return self.identity.describe() + (trusted if self.cas else "")


def load_material(config: TLSConfig, now: datetime.datetime | None = None) -> TLSMaterial:
    """Read and check the files of ``config``: the certificate is signed by the CA bundle,
    the key is its key, it is valid now, and it carries an identity.  Raises TLSFileError."""
    try:
        return _load_material(config, now)
    except TLSFileError:
        raise
    except Exception as error:  # noqa: BLE001 -- a malformed file may surprise the parsers
        raise TLSFileError(
            f"--ca {config.ca} / --cert {config.cert} / --key {config.key}: "
            f"{type(error).__name__}: {error}"
        ) from None


def _load_material(config: TLSConfig, now: datetime.datetime | None) -> TLSMaterial:
    signature = file_signature(config)
    cas = _certificates(_read(config.ca, "--ca"), config.ca, "--ca")
    for ca in cas:
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise TLSFileError(
                f"--ca {config.ca}: {ca.subject.rfc4514_string()} is not a CA certificate")
    chain = _certificates(_read(config.cert, "--cert"), config.cert, "--cert")
    leaf, extra = chain[0], chain[1:]
    key_data = _read(config.key, "--key")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise TLSFileError(
            f"--key {config.key}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, _Key):
        raise TLSFileError(f"--key {config.key}: unsupported key type")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TLSFileError(f"--key {config.key} is not the key of --cert {config.cert}")
    issuers = [*cas, *extra]
    if not any(_issued_by(leaf, issuer) for issuer in issuers):
        raise TLSFileError(f"--cert {config.cert} is not signed by the CA in --ca {config.ca}")
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    if moment < leaf.not_valid_before_utc:
        raise TLSFileError(
            f"--cert {config.cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
    if moment > leaf.not_valid_after_utc:
        raise TLSFileError(
            f"--cert {config.cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    try:
        identity = identity_of(leaf)
    except IdentityError as error:
        raise TLSFileError(f"--cert {config.cert}: {error}") from None

    with quiet_pyopenssl():
        return _twisted_material(identity, leaf, key, extra, cas, signature, config)


def _twisted_material(
    identity: Identity,
    leaf: x509.Certificate,
    key: _Key,
    extra: list[x509.Certificate],
    cas: list[x509.Certificate],
    signature: tuple[tuple[int, int, int, int], ...],
    config: TLSConfig,
) -> TLSMaterial:
    certificate = crypto.X509.from_cryptography(leaf)
    pkey = crypto.PKey.from_cryptography_key(key)
    extra_chain = tuple(crypto.X509.from_cryptography(c) for c in extra)
    trust_root = trustRootFromCertificates(
        [Certificate(crypto.X509.from_cryptography(c)) for c in cas])
    server_options = CertificateOptions(
        privateKey=pkey,
        certificate=certificate,
        extraCertChain=list(extra_chain),
        trustRoot=trust_root,
        raiseMinimumTo=MINIMUM_TLS,
        acceptableCiphers=CIPHERS,
    )
    try:
        # Builds the SSL context now: errors surface here, not per peer.
        server_options.getContext().set_tls13_ciphersuites(TLS13_SUITES)
    except Exception as error:  # noqa: BLE001 -- OpenSSL raises its own errors; name the files
        raise TLSFileError(
            f"--cert {config.cert} / --key {config.key}: OpenSSL refused them: {error}") from None
    private = PrivateCertificate.fromCertificateAndKeyPair(Certificate(certificate), KeyPair(pkey))
    return TLSMaterial(identity, server_options, private, extra_chain, trust_root, signature,
                       tuple(describe_ca(c) for c in cas))


def check_identity(material: TLSMaterial, config: TLSConfig, node: str | None,
                   role: str | None) -> TLSMaterial:
    """The certificate must be this node's: its name, and its role when it states one."""
    identity = material.identity
    if node is not None and identity.name != node.lower():
        raise TLSFileError(
            f"--cert {config.cert} is for {identity.name!r}, but this node is {node!r}")
    if role is not None and identity.role not in (None, role):
        hint = " (issue it with `edgemesh certs issue --router`)" if role == "router" else ""
        raise TLSFileError(
            f"--cert {config.cert} is {_a(identity.role)} certificate; "
            f"this node is {_a(role)}{hint}"
        )
    return material


def _a(role: str | None) -> str:
    return f"an {role}" if role == "edge" else f"a {role}"
