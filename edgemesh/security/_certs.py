"""
Certificates for node identities: a private CA, and node certificates it signs.

A node's identity is one DNS name in its certificate's subjectAltName (also its CN):
the node name as in the catalog, or the router's name.  The subject's OU says the role
(``router`` or ``edge``).  Keys are ECDSA P-256.  Plain functions of bytes and times:
the ``edgemesh certs`` command and the tests call them; nothing here does I/O except the
file helpers at the end (``init_ca_dir``, ``issue_node_files``, ``change_trust``).

A node's ``ca.pem`` is a *bundle*: every CA whose node certificates it accepts.  During a CA
rotation it holds the old and the new CA, so the tools that write it add and remove CAs one
by one and never replace the bundle wholesale (see docs/security.md, "Rotating the CA").
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..catalog import is_dns1123_subdomain

ROLES = ("router", "edge")
ORGANIZATION = "edgemesh"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CA_DAYS = 3650
NODE_DAYS = 365
SHORT_FINGERPRINT = 16
"""Hex digits of a CA's fingerprint that ``describe_ca`` prints, and the fewest that
``certs trust --remove`` takes (64 bits: no two CAs of one bundle share them by chance)."""
MAX_FILE_BYTES = 1 << 20
"""A bundle or certificate larger than this is refused (nodes refuse it too)."""
_SCAN_LIMIT = 4096
"""Files looked at in a node's directory when checking that a removal strands no certificate."""
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
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
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


def write_file(path: str, data: bytes, *, private: bool, force: bool = False,
               mode: int | None = None, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same directory, then
    a rename): a node that reloads its files never reads half of one.  Private files are
    0600 from the moment they exist; others 0644, or ``mode`` (a replaced bundle keeps its
    own), and ``owner`` (uid, gid) when the caller may set it.  Refuses to replace a file
    unless ``force``."""
    if os.path.lexists(path) and not force:
        raise CertError(f"{path} exists (use --force to replace it)")
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".edgemesh-", dir=directory)
    try:
        # mkstemp creates the file 0600; widen only what is public.
        if not private:
            os.fchmod(handle, 0o644 if mode is None else mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):  # only root may give files away
                os.fchown(handle, *owner)
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
    """The CA of ``directory``: its key, and the certificate of that key from ``ca.pem``
    (which may be a bundle when the directory is also a node's ``--tls-dir``)."""
    paths = [os.path.join(directory, CA_KEY_FILE), os.path.join(directory, CA_FILE)]
    contents = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                contents.append(handle.read(MAX_FILE_BYTES + 1))
        except OSError as error:
            raise CertError(
                f"cannot read {path}: {error.strerror} (make a CA with `edgemesh certs init`)"
            ) from None
    key_pem, bundle_pem = contents
    return Issued(key_pem, _certificate_of_key(key_pem, bundle_pem))


def _certificate_of_key(key_pem: bytes, bundle_pem: bytes) -> bytes:
    """The PEM of the certificate in ``bundle_pem`` whose public key is ``key_pem``'s; the
    bundle unchanged when there is no such certificate or the files cannot be read (the
    signing step then says what is wrong)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        certs = x509.load_pem_x509_certificates(bundle_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return bundle_pem
    if len(certs) < 2 or not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return bundle_pem
    for cert in certs:
        if _spki(cert.public_key()) == _spki(key.public_key()):
            return cert.public_bytes(serialization.Encoding.PEM)
    return bundle_pem


@dataclass(frozen=True)
class IssuedFiles:
    """What ``issue_node_files`` wrote."""

    cert: str
    key: str
    bundle: TrustChange | None
    """The node directory's CA bundle, when it is not the CA's own directory."""


def issue_into_dir(
    directory: str,
    name: str,
    *,
    router: bool = False,
    days: int = NODE_DAYS,
    out: str | None = None,
    force: bool = False,
) -> tuple[str, str]:
    """``issue_node_files``; returns the certificate and key paths."""
    issued = issue_node_files(directory, name, router=router, days=days, out=out, force=force)
    return issued.cert, issued.key


def issue_node_files(
    directory: str,
    name: str,
    *,
    router: bool = False,
    days: int = NODE_DAYS,
    out: str | None = None,
    force: bool = False,
) -> IssuedFiles:
    """``edgemesh certs issue``: OUT/NAME.pem and OUT/NAME.key (0600) signed by the CA in
    DIR.  OUT defaults to DIR; when it differs, the CA's certificate is added to OUT/ca.pem,
    so that OUT is all a node needs (``--tls-dir OUT``).  An existing OUT/ca.pem keeps every
    CA it holds: re-issuing a node from a new CA during a CA rotation must not make the node
    refuse the peers that still carry certificates of the old one."""
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
    bundle = None
    if os.path.abspath(target) != os.path.abspath(directory):
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
        # The bundle first: trusting one more CA is harmless, and a node that reloads
        # between two of these writes never holds a certificate its bundle does not sign.
        bundle = change_trust(os.path.join(target, CA_FILE), add=[ca_cert])
    # Key before certificate: a node watching these files never sees the new certificate
    # with the old key for long (and refuses such a pair until both are there).
    write_file(key_path, issued.key_pem, private=True, force=force)
    write_file(cert_path, issued.cert_pem, private=False, force=force)
    return IssuedFiles(cert_path, key_path, bundle)


# --- CA bundles -------------------------------------------------------------------------


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate (DER), lowercase hex: how a bundle's CAs are told apart
    (the old and the new CA may well have the same name)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def describe_ca(cert: x509.Certificate) -> str:
    """One line for operators: name, fingerprint (prefix), validity."""
    return (
        f"{cert.subject.rfc4514_string()} (sha256 {fingerprint(cert)[:SHORT_FINGERPRINT]}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d}Z)"
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _read_limited(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise CertError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CertError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def read_cas(path: str) -> list[x509.Certificate]:
    """The CA certificates in the PEM file ``path`` (or ``path/ca.pem`` for a directory):
    at least one, each a CA.  Raises CertError."""
    if os.path.isdir(path):
        path = os.path.join(path, CA_FILE)
    try:
        certs = x509.load_pem_x509_certificates(_read_limited(path))
    except ValueError as error:
        raise CertError(f"{path} is not a PEM certificate bundle ({error})") from None
    if not certs:
        raise CertError(f"{path} holds no certificate")
    for cert in certs:
        if not _is_ca(cert):
            raise CertError(f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate")
    return certs


@dataclass(frozen=True)
class TrustChange:
    """What ``change_trust`` did to a bundle."""

    path: str
    bundle: tuple[x509.Certificate, ...]
    """The CAs the bundle holds now, in its order."""
    added: tuple[x509.Certificate, ...] = ()
    removed: tuple[x509.Certificate, ...] = ()
    already: tuple[x509.Certificate, ...] = ()
    """Asked to add, but already there."""
    absent: tuple[str, ...] = ()
    """Fingerprints asked to remove, but not there."""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


@contextlib.contextmanager
def _directory_lock(directory: str) -> Iterator[None]:
    """Two tools updating the same bundle at once (say, two ``issue`` runs) would each
    read it, add their CA and rename: the second would drop the first's.  An advisory
    lock on the directory itself leaves no file behind."""
    try:
        handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without flock: go on unlocked
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def parse_fingerprint(text: str) -> str | None:
    """A SHA-256 fingerprint as ``edgemesh certs trust`` (listing) or ``openssl x509
    -fingerprint -sha256`` print it (colons and case do not matter), whole or its first
    ``SHORT_FINGERPRINT`` hex digits or more (as ``describe_ca`` prints it); None when
    ``text`` is not one.  ``change_trust`` resolves a prefix against the bundle."""
    value = text.strip().lower().removeprefix("sha256:").removeprefix("sha256 fingerprint=")
    value = value.replace(":", "")
    if SHORT_FINGERPRINT <= len(value) <= 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def _whole_fingerprint(wanted: str, present: Sequence[str]) -> str:
    """``wanted`` (a fingerprint or a prefix) as the one fingerprint of ``present`` it
    names; itself when none does (nothing to remove).  Raises CertError when a prefix names
    several CAs: removing all of them is not what the user asked for."""
    matches = sorted({value for value in present if value.startswith(wanted)})
    if len(matches) > 1:
        raise CertError(f"sha256 {wanted} names {len(matches)} CAs ({', '.join(matches)}): "
                        "give more of the fingerprint; nothing was changed")
    return matches[0] if matches else wanted


def change_trust(
    path: str,
    *,
    add: Sequence[x509.Certificate] = (),
    remove: Sequence[x509.Certificate | str] = (),
    force: bool = False,
) -> TrustChange:
    """Add CAs to, or remove them (certificates, or fingerprints: whole, or a prefix that
    names one CA of the bundle, see ``parse_fingerprint``) from, the bundle at
    ``path``, written atomically and only when it changes (an unchanged file does not make
    a watching node reload).  Adding keeps everything the file holds and appends what is
    missing; a missing file is created (0644).  A removal that would leave the bundle empty
    is refused, and so is one that would leave a certificate of the directory (NODE.pem
    beside NODE.key, the node's own) without a CA that signs it, unless ``force``: the node
    would refuse its own certificate at its next reload or start.  Raises CertError."""
    for cert in add:
        if not _is_ca(cert):
            raise CertError(f"{cert.subject.rfc4514_string()} is not a CA certificate")
        if cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
            raise CertError(
                f"{describe_ca(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
            )
    adding = {fingerprint(c) for c in add}
    for wanted in remove:
        key = wanted if isinstance(wanted, str) else fingerprint(wanted)
        if any(value.startswith(key) for value in adding):  # a fingerprint may be a prefix
            raise CertError("the same CA cannot be both added and removed")
    # A symlinked bundle (one file shared by several nodes' directories) is updated where
    # it points, and stays a link.
    target = os.path.realpath(path) if os.path.islink(path) else path
    make_directory(os.path.dirname(os.path.abspath(path)))
    make_directory(os.path.dirname(os.path.abspath(target)))
    with _directory_lock(os.path.dirname(os.path.abspath(target))):
        return _change_trust(path, target, add, remove, force)


def _change_trust(
    path: str,
    target: str,
    add: Sequence[x509.Certificate],
    remove: Sequence[x509.Certificate | str],
    force: bool,
) -> TrustChange:
    exists = os.path.lexists(target)
    original = _read_limited(target) if exists else b""
    if exists:
        try:
            current = x509.load_pem_x509_certificates(original)
        except ValueError as error:
            raise CertError(
                f"{path} is not a PEM CA bundle ({error}): fix or remove it first; "
                "nothing was changed"
            ) from None
    else:
        current = []
    added: list[x509.Certificate] = []
    already: list[x509.Certificate] = []
    known = {fingerprint(c) for c in current}
    for cert in add:
        if fingerprint(cert) in known:
            already.append(cert)
        else:
            known.add(fingerprint(cert))  # the same CA twice in --add: once in the bundle
            added.append(cert)
    present = [fingerprint(c) for c in current]
    # Prefixes resolved under the lock: against the bundle as it is written.
    unwanted = {_whole_fingerprint(w, present) if isinstance(w, str) else fingerprint(w)
                for w in remove}
    # Duplicates already in the file go too: a removed CA leaves no copy behind.
    kept = [c for c in current if fingerprint(c) not in unwanted]
    removed = [c for c in current if fingerprint(c) in unwanted]
    absent = tuple(sorted(unwanted - set(present)))
    bundle = [*kept, *added]
    if removed:
        _check_removal(path, os.path.dirname(os.path.abspath(path)), removed, bundle, force)
    change = TrustChange(path, tuple(bundle), tuple(added), tuple(removed), tuple(already), absent)
    if not change.changed:
        return change
    pem = serialization.Encoding.PEM
    if removed:
        data = b"".join(c.public_bytes(pem) for c in bundle)
    else:
        # Only additions: what the file held stays byte for byte (comments included).
        if original and not original.endswith(b"\n"):
            original += b"\n"
        data = original + b"".join(c.public_bytes(pem) for c in added)
    mode, owner = None, None
    if exists:
        st = os.stat(target)
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    write_file(target, data, private=False, force=True, mode=mode, owner=owner)
    return change


def _check_removal(path: str, directory: str, removed: list[x509.Certificate],
                   bundle: list[x509.Certificate], force: bool) -> None:
    if not bundle:
        raise CertError(f"removing that would leave {path} without any CA: add the new CA first")
    key_path = os.path.join(directory, CA_KEY_FILE)
    if os.path.exists(key_path):
        own = _certificate_of_key(_read_limited(key_path), b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in [*removed, *bundle]))
        mine = [c for c in removed if c.public_bytes(serialization.Encoding.PEM) == own]
        if mine:
            raise CertError(
                f"{directory} is the directory of the CA {describe_ca(mine[0])} (its ca.key is "
                "there): its certificate stays in its ca.pem"
            )
    if force:
        return
    shown = os.path.dirname(path) or "."
    for cert_path, cert in node_certificates(shown, path):
        issuer = next((ca for ca in removed if signed_by(cert, ca)), None)
        # A certificate no CA of the bundle signed before is not this removal's doing.
        if issuer is not None and not any(signed_by(cert, ca) for ca in bundle):
            name = os.path.splitext(os.path.basename(cert_path))[0]
            router = any(a.value == "router" for a in
                         cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
            raise CertError(
                f"{cert_path} is signed by {describe_ca(issuer)}: "
                "without that CA the node would refuse its own certificate. "
                f"Re-issue it from the new CA first (`edgemesh certs issue --dir NEW-CA-DIR "
                f"--name {name}{' --router' if router else ''} --out {shown} --force`, then "
                "reload), or use --force; nothing was changed"
            )


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def node_certificates(directory: str, bundle: str) -> Iterator[tuple[str, x509.Certificate]]:
    """The node certificates in ``directory``: NAME.pem beside NAME.key, not a CA."""
    try:
        names = sorted(os.listdir(directory))[:_SCAN_LIMIT]
    except OSError:
        return
    for entry in names:
        stem, extension = os.path.splitext(entry)
        cert_path = os.path.join(directory, entry)
        if extension != ".pem" or os.path.abspath(cert_path) == os.path.abspath(bundle):
            continue
        if not os.path.exists(os.path.join(directory, stem + ".key")):
            continue
        try:
            cert = x509.load_pem_x509_certificates(_read_limited(cert_path))[0]
        except (CertError, ValueError, IndexError):
            continue  # not a certificate this check understands; the node's load will say
        if not _is_ca(cert):
            yield cert_path, cert
