"""``edgemesh certs``: the CA and node certificates, their files and permissions, and the
checks a node makes when it loads its TLS files (``load_material``)."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgemesh.cli import _COMMANDS
from edgemesh.cli import main as edgemesh_main
from edgemesh.cli._certs import main as certs_main
from edgemesh.security import (
    CertError,
    IdentityError,
    Issued,
    TLSConfig,
    TLSFileError,
    identity_of,
    load_material,
    make_ca,
    make_node_cert,
)
from edgemesh.security._certs import (
    change_trust,
    fingerprint,
    init_ca_dir,
    issue_into_dir,
    write_file,
)

UTC = datetime.timezone.utc


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def cert_of(path: Path | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


# --- the command ------------------------------------------------------------------------


def test_certs_is_an_edgemesh_command() -> None:
    assert "certs" in _COMMANDS


def test_init_makes_a_ca_with_a_private_key(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "ca"
    assert edgemesh_main(["certs", "init", "--dir", str(directory)]) == 0
    assert mode(directory) == 0o700
    assert mode(directory / "ca.key") == 0o600
    assert mode(directory / "ca.pem") == 0o644
    ca = cert_of(directory / "ca.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)  # self-signed
    assert "ca.key" in capsys.readouterr().out
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in directory.iterdir()) == ["ca.key", "ca.pem"]


def test_init_refuses_to_replace_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(["init", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "ca.pem").read_bytes()
    assert certs_main(["init", "--dir", str(tmp_path)]) == 1
    assert "exists (use --force" in capsys.readouterr().err
    assert (tmp_path / "ca.pem").read_bytes() == before
    assert certs_main(["init", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_issue_a_node_certificate(tmp_path: Path) -> None:
    assert certs_main(["init", "--dir", str(tmp_path)]) == 0
    assert certs_main(["issue", "--dir", str(tmp_path), "--name", "edge-1", "--days", "30"]) == 0
    assert mode(tmp_path / "edge-1.key") == 0o600
    cert = cert_of(tmp_path / "edge-1.pem")
    cert.verify_directly_issued_by(cert_of(tmp_path / "ca.pem"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge-1"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=30) <= lifetime <= datetime.timedelta(days=30, minutes=11)
    identity = identity_of(cert)
    assert (identity.name, identity.role) == ("edge-1", "edge")
    key = serialization.load_pem_private_key((tmp_path / "edge-1.key").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def test_issue_a_router_certificate_elsewhere(tmp_path: Path) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "router-files"
    assert certs_main(["init", "--dir", str(ca_dir)]) == 0
    assert certs_main(["issue", "--dir", str(ca_dir), "--name", "router", "--router",
                       "--out", str(out)]) == 0
    assert identity_of(cert_of(out / "router.pem")).role == "router"
    # Everything a node needs, and not the CA's key.
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "router.key", "router.pem"]
    assert (out / "ca.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()
    assert mode(out / "router.key") == 0o600
    material = load_material(TLSConfig.from_directory(str(out), "router"))
    assert material.identity.name == "router"


@pytest.mark.parametrize("name", ["Edge-1", "edge_1", "-edge", "edge-", "", "a" * 254, "*.edges",
                                  "edge 1", "éd"])
def test_issue_refuses_names_that_are_not_node_names(tmp_path: Path, name: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(["init", "--dir", str(tmp_path)]) == 0
    assert certs_main(["issue", "--dir", str(tmp_path), f"--name={name}"]) == 1
    assert "not a valid node name" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.key"))[1:], "only ca.key"


def test_issue_without_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(["issue", "--dir", str(tmp_path / "none"), "--name", "edge-1"]) == 1
    assert "edgemesh certs init" in capsys.readouterr().err


def test_issue_refuses_to_replace_unless_forced(tmp_path: Path) -> None:
    init_ca_dir(str(tmp_path))
    issue_into_dir(str(tmp_path), "edge-1")
    with pytest.raises(CertError, match="exists"):
        issue_into_dir(str(tmp_path), "edge-1")
    before = cert_of(tmp_path / "edge-1.pem").serial_number
    issue_into_dir(str(tmp_path), "edge-1", force=True)
    assert cert_of(tmp_path / "edge-1.pem").serial_number != before


def test_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_ca_dir(str(tmp_path))
    issue_into_dir(str(tmp_path), "edge-7")
    assert certs_main(["show", str(tmp_path / "edge-7.pem")]) == 0
    assert "identity:  edge-7 (edge)" in capsys.readouterr().out
    assert certs_main(["show", str(tmp_path / "ca.pem")]) == 0
    assert "identity:  none" in capsys.readouterr().out
    assert certs_main(["show", str(tmp_path / "missing.pem")]) == 1


def test_write_file_is_private_from_the_start_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    write_file(str(path), b"one", private=True)
    assert mode(path) == 0o600 and path.read_bytes() == b"one"
    with pytest.raises(CertError):
        write_file(str(path), b"two", private=True)
    write_file(str(path), b"two", private=True, force=True)
    assert mode(path) == 0o600 and path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_bad_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(["init", "--dir", str(tmp_path), "--days", "0"]) == 1
    assert "--days must be positive" in capsys.readouterr().err


# --- loading a node's files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


def files(directory: Path, ca: Issued, node: Issued, name: str = "n") -> TLSConfig:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / f"{name}.pem").write_bytes(node.cert_pem)
    (directory / f"{name}.key").write_bytes(node.key_pem)
    return TLSConfig.from_directory(str(directory), name)


def test_load_material(tmp_path: Path, ca: Issued) -> None:
    material = load_material(files(tmp_path, ca, make_node_cert(ca, "edge-1"), "edge-1"))
    assert material.identity.name == "edge-1"
    assert material.identity.role == "edge"
    assert "edge-1 (edge, serial" in material.identity.describe()


def test_load_material_key_of_another_certificate(tmp_path: Path, ca: Issued) -> None:
    config = files(tmp_path, ca, make_node_cert(ca, "edge-1"))
    Path(config.key).write_bytes(make_node_cert(ca, "edge-1").key_pem)
    with pytest.raises(TLSFileError, match="is not the key of --cert"):
        load_material(config)


def test_load_material_certificate_of_another_ca(tmp_path: Path, ca: Issued) -> None:
    other = make_ca("another CA")
    with pytest.raises(TLSFileError, match="is not signed by the CA"):
        load_material(files(tmp_path, ca, make_node_cert(other, "edge-1")))


def test_load_material_expired_and_not_yet_valid(tmp_path: Path, ca: Issued) -> None:
    old = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    with pytest.raises(TLSFileError, match="expired on 2020-01-11"):
        load_material(
            files(tmp_path / "a", ca, make_node_cert(ca, "edge-1", days=10, valid_from=old)))
    future = datetime.datetime.now(UTC) + datetime.timedelta(days=3)
    with pytest.raises(TLSFileError, match="is not valid before"):
        load_material(files(tmp_path / "b", ca, make_node_cert(ca, "edge-1", valid_from=future)))
    # The same files are fine at a time inside their window.
    config = files(tmp_path / "c", ca, make_node_cert(ca, "edge-1", days=10, valid_from=old))
    assert load_material(config, now=old + datetime.timedelta(days=1)).identity.name == "edge-1"


def test_load_material_missing_or_garbage_files(tmp_path: Path, ca: Issued) -> None:
    config = files(tmp_path, ca, make_node_cert(ca, "edge-1"))
    os.unlink(config.cert)
    with pytest.raises(TLSFileError, match=r"--cert .*No such file"):
        load_material(config)
    Path(config.cert).write_bytes(b"garbage")
    with pytest.raises(TLSFileError, match="no certificate|not a PEM"):
        load_material(config)
    Path(config.cert).write_bytes(b"x" * (2 << 20))
    with pytest.raises(TLSFileError, match="larger than"):
        load_material(config)
    Path(config.cert).write_bytes(make_node_cert(ca, "edge-1").cert_pem)
    Path(config.key).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TLSFileError, match="--key"):
        load_material(config)


def test_load_material_ca_must_be_a_ca(tmp_path: Path, ca: Issued) -> None:
    node = make_node_cert(ca, "edge-1")
    config = files(tmp_path, ca, node)
    Path(config.ca).write_bytes(node.cert_pem)
    with pytest.raises(TLSFileError, match="is not a CA certificate"):
        load_material(config)


def test_load_material_accepts_a_bundle_of_cas(tmp_path: Path, ca: Issued) -> None:
    """During a CA rotation the bundle holds the old and the new CA."""
    new = make_ca("new CA")
    config = files(tmp_path, ca, make_node_cert(new, "edge-1"))
    Path(config.ca).write_bytes(ca.cert_pem + new.cert_pem)
    assert load_material(config).identity.name == "edge-1"


def _foreign_cert(ca: Issued, names: list[x509.GeneralName], tmp_path: Path) -> TLSConfig:
    """A certificate made by another tool: whatever subjectAltName it likes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    issued = Issued(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    )
    return files(tmp_path, ca, issued)


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ([], "no DNS name"),
        ([x509.DNSName("*.edges.example")], "wildcard"),
        ([x509.DNSName("edge-1"), x509.DNSName("edge-2")], "several nodes"),
    ],
    ids=["no-san", "wildcard", "two-names"],
)
def test_certificates_without_one_exact_identity(tmp_path: Path, ca: Issued,
                                                 names: list[x509.GeneralName],
                                                 problem: str) -> None:
    config = _foreign_cert(ca, names, tmp_path)
    with pytest.raises(TLSFileError, match=problem):
        load_material(config)
    with pytest.raises(IdentityError, match=problem):
        identity_of(x509.load_pem_x509_certificate(Path(config.cert).read_bytes()))


def test_a_foreign_certificate_with_one_name_has_no_role(tmp_path: Path, ca: Issued) -> None:
    config = _foreign_cert(ca, [x509.DNSName("edge-1")], tmp_path)
    identity = load_material(config).identity
    assert (identity.name, identity.role) == ("edge-1", None)


def test_make_node_cert_checks_its_ca() -> None:
    ca, other = make_ca(), make_ca()
    with pytest.raises(CertError, match="does not belong"):
        make_node_cert(Issued(other.key_pem, ca.cert_pem), "edge-1")
    with pytest.raises(CertError, match="cannot read the CA"):
        make_node_cert(Issued(b"junk", ca.cert_pem), "edge-1")


# --- CA bundles: issue --out keeps them, trust adds and removes ----------------------------


def bundle_of(path: Path) -> list[str]:
    """The fingerprints of the CAs in a bundle, in its order."""
    return [fingerprint(c) for c in x509.load_pem_x509_certificates(path.read_bytes())]


def ca_fingerprint(directory: Path) -> str:
    return fingerprint(cert_of(directory / "ca.pem"))


@pytest.fixture
def two_cas(tmp_path: Path) -> tuple[Path, Path]:
    """An old and a new CA, both with the default name (as `certs init` twice makes them)."""
    old, new = tmp_path / "old-ca", tmp_path / "new-ca"
    init_ca_dir(str(old))
    init_ca_dir(str(new))
    assert cert_of(old / "ca.pem").subject == cert_of(new / "ca.pem").subject
    return old, new


def test_issue_force_keeps_the_bundle_docs_say_to_make(tmp_path: Path) -> None:
    """Issue 11 item 13, as docs/security.md told it before `certs trust`: the operator puts
    the old and the new CA in the node's ca.pem by hand, then re-issues the node from the
    new CA with --force.  That used to replace ca.pem with the new CA alone."""
    old, new, node = tmp_path / "old", tmp_path / "new", tmp_path / "edge-1-tls"
    init_ca_dir(str(old))
    init_ca_dir(str(new))
    issue_into_dir(str(old), "edge-1", out=str(node))
    (node / "ca.pem").write_bytes((old / "ca.pem").read_bytes() + (new / "ca.pem").read_bytes())
    assert certs_main(["issue", "--dir", str(new), "--name", "edge-1", "--out", str(node),
                       "--force"]) == 0
    trusted = x509.load_pem_x509_certificates((node / "ca.pem").read_bytes())
    assert trusted == [cert_of(old / "ca.pem"), cert_of(new / "ca.pem")]


def test_issue_force_from_a_new_ca_keeps_the_old_one_in_the_bundle(
    tmp_path: Path, two_cas: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11 item 13: re-issuing a node from the new CA mid-rotation used to replace its
    ca.pem with the new CA alone, so the node refused every peer still on the old CA."""
    old, new = two_cas
    node = tmp_path / "edge-1-tls"
    assert certs_main(["issue", "--dir", str(old), "--name", "edge-1", "--out", str(node)]) == 0
    # Step 1 of the rotation: the new CA joins the bundle.
    assert certs_main(["trust", "--dir", str(node), "--add", str(new / "ca.pem")]) == 0
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(old), ca_fingerprint(new)]
    # Step 2: the node's certificate from the new CA.
    assert certs_main(["issue", "--dir", str(new), "--name", "edge-1", "--out", str(node),
                       "--force"]) == 0
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(old), ca_fingerprint(new)]
    assert "already has" in capsys.readouterr().out
    cert_of(node / "edge-1.pem").verify_directly_issued_by(cert_of(new / "ca.pem"))
    # The node still accepts a peer of the old CA, and loads its own new certificate.
    material = load_material(TLSConfig.from_directory(str(node), "edge-1"))
    assert material.identity.name == "edge-1" and len(material.cas) == 2


def test_issue_force_adds_a_missing_ca_and_never_drops_one(tmp_path: Path,
                                                          two_cas: tuple[Path, Path]) -> None:
    """Without step 1 done by hand, issue adds the new CA itself; whatever else the bundle
    held (another CA, comments) stays byte for byte, and no CA appears twice."""
    old, new = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(old), "edge-1", out=str(node))
    other = make_ca("partner CA").cert_pem
    before = b"# kept by the operator\n" + (node / "ca.pem").read_bytes() + other.rstrip(b"\n")
    (node / "ca.pem").write_bytes(before)
    issue_into_dir(str(new), "edge-1", out=str(node), force=True)
    after = (node / "ca.pem").read_bytes()
    assert after.startswith(before)
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(old), fingerprint(
        x509.load_pem_x509_certificate(other)), ca_fingerprint(new)]
    # Again, and from the old CA again: nothing to add, the file is not even rewritten (a
    # rewrite would make a watching node reload for nothing).
    inode = os.stat(node / "ca.pem").st_ino
    issue_into_dir(str(new), "edge-1", out=str(node), force=True)
    issue_into_dir(str(old), "edge-2", out=str(node))
    assert (node / "ca.pem").read_bytes() == after
    assert os.stat(node / "ca.pem").st_ino == inode
    assert sorted(p.name for p in node.iterdir()) == [
        "ca.pem", "edge-1.key", "edge-1.pem", "edge-2.key", "edge-2.pem"]


def test_issue_refuses_a_bundle_it_cannot_read_and_writes_nothing(
    tmp_path: Path, two_cas: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(old), "edge-1", out=str(node))
    (node / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    key = (node / "edge-1.key").read_bytes()
    assert certs_main(["issue", "--dir", str(new), "--name", "edge-1", "--out", str(node),
                       "--force"]) == 1
    assert "is not a PEM CA bundle" in capsys.readouterr().err
    assert (node / "edge-1.key").read_bytes() == key
    assert (node / "ca.pem").read_bytes() == b"-----BEGIN CERTIFICATE-----\ngarbage\n"


def test_trust_add_dedups_keeps_the_mode_and_leaves_no_temporary_file(
    tmp_path: Path, two_cas: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(old), "edge-1", out=str(node))
    os.chmod(node / "ca.pem", 0o640)
    both = tmp_path / "both.pem"
    both.write_bytes((new / "ca.pem").read_bytes() * 2 + (old / "ca.pem").read_bytes())
    # A directory names its ca.pem; a file holding the same CA twice adds it once.
    assert certs_main(["trust", "--dir", str(node), "--add", str(new), "--add", str(both)]) == 0
    out = capsys.readouterr().out
    assert out.count("added") == 1 and "now trusts 2 CAs" in out and "kill -HUP" in out
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(old), ca_fingerprint(new)]
    assert mode(node / "ca.pem") == 0o640
    assert sorted(p.name for p in node.iterdir()) == ["ca.pem", "edge-1.key", "edge-1.pem"]
    # --bundle names the file itself (a node started with --ca FILE).
    assert certs_main(["trust", "--bundle", str(node / "ca.pem"), "--add", str(new)]) == 0
    assert "unchanged (2 CAs)" in capsys.readouterr().out


def test_trust_add_refuses_what_is_not_a_usable_ca(tmp_path: Path, two_cas: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    old, _ = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(old), "edge-1", out=str(node))
    before = (node / "ca.pem").read_bytes()
    assert certs_main(["trust", "--dir", str(node), "--add", str(node / "edge-1.pem")]) == 1
    assert "is not a CA certificate" in capsys.readouterr().err
    expired = tmp_path / "expired.pem"
    expired.write_bytes(
        make_ca(days=1, valid_from=datetime.datetime(2020, 1, 1, tzinfo=UTC)).cert_pem)
    assert certs_main(["trust", "--dir", str(node), "--add", str(expired)]) == 1
    assert "expired on 2020-01-02" in capsys.readouterr().err
    assert certs_main(["trust", "--dir", str(node), "--add", str(tmp_path / "missing.pem")]) == 1
    assert "No such file" in capsys.readouterr().err
    assert (node / "ca.pem").read_bytes() == before


def test_trust_remove_the_old_ca_after_reissuing(tmp_path: Path, two_cas: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Step 3 of the rotation.  Refused while the node's own certificate still needs the
    old CA (and nothing changes); done once it is re-issued; a second run is a no-op."""
    old, new = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(old), "router", router=True, out=str(node))
    change_trust(str(node / "ca.pem"), add=[cert_of(new / "ca.pem")])
    before = (node / "ca.pem").read_bytes()
    assert certs_main(["trust", "--dir", str(node), "--remove", str(old / "ca.pem")]) == 1
    err = capsys.readouterr().err
    assert "router.pem is signed by CN=edgemesh CA" in err
    assert "--name router --router --out" in err and "nothing was changed" in err
    assert (node / "ca.pem").read_bytes() == before

    issue_into_dir(str(new), "router", router=True, out=str(node), force=True)
    assert certs_main(["trust", "--dir", str(node), "--remove", str(old / "ca.pem")]) == 0
    assert "removed" in capsys.readouterr().out
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(new)]
    assert load_material(TLSConfig.from_directory(str(node), "router")).identity.name == "router"
    assert certs_main(["trust", "--dir", str(node), "--remove", str(old / "ca.pem")]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    # The last CA never goes.
    assert certs_main(
        ["trust", "--dir", str(node), "--remove", str(new / "ca.pem"), "--force"]) == 1
    assert "without any CA" in capsys.readouterr().err
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(new)]


def test_trust_remove_by_fingerprint_and_force(tmp_path: Path, two_cas: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    old, new = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(old), "edge-1", out=str(node))
    issue_into_dir(str(new), "edge-2", out=str(node))
    assert certs_main(["trust", "--dir", str(node)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("sha256 ") == 2 and "signs  edge-1.pem" in listing
    assert "signs  edge-2.pem" in listing
    # As `openssl x509 -fingerprint -sha256` prints it: upper case, colons.
    fp = ca_fingerprint(old).upper()
    colons = "SHA256 Fingerprint=" + ":".join(fp[i:i + 2] for i in range(0, 64, 2))
    assert certs_main(["trust", "--dir", str(node), "--remove", colons]) == 1
    assert "edge-1.pem is signed by" in capsys.readouterr().err
    assert certs_main(["trust", "--dir", str(node), "--remove", colons, "--force"]) == 0
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(new)]
    assert certs_main(["trust", "--dir", str(node), "--remove", "not-a-fingerprint"]) == 1
    assert "neither a PEM file nor a SHA-256 fingerprint" in capsys.readouterr().err
    assert certs_main(["trust", "--dir", str(node), "--add", str(new), "--remove",
                       str(new / "ca.pem")]) == 1
    assert "both added and removed" in capsys.readouterr().err


def test_trust_remove_by_the_short_fingerprint_it_prints(
        tmp_path: Path, two_cas: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`certs trust --add` prints 16 hex digits of each CA's fingerprint: --remove takes them
    (or more, with colons and in any case) as well as the whole one."""
    old, new = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(new), "edge-1", out=str(node))
    assert certs_main(["trust", "--dir", str(node), "--add", str(old)]) == 0
    printed = capsys.readouterr().out.split("sha256 ")[1][:16]
    assert printed == ca_fingerprint(old)[:16]
    before = (node / "ca.pem").read_bytes()
    assert certs_main(["trust", "--dir", str(node), "--remove", printed]) == 0
    assert "removed" in capsys.readouterr().out
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(new)]
    (node / "ca.pem").write_bytes(before)
    longer = ca_fingerprint(old)[:20].upper()
    colons = ":".join(longer[i:i + 2] for i in range(0, 20, 2))
    assert certs_main(["trust", "--dir", str(node), "--remove", colons]) == 0
    assert bundle_of(node / "ca.pem") == [ca_fingerprint(new)]
    # Fewer than 16 digits could name a CA by chance: refused, and nothing changes.
    assert certs_main(["trust", "--dir", str(node), "--remove", printed[:15]]) == 1
    assert "the first 16 or more" in capsys.readouterr().err
    assert certs_main(["trust", "--dir", str(node), "--remove", "0" * 16]) == 0
    assert "does not hold sha256 0000000000000000 (nothing to remove)" in capsys.readouterr().out


def test_trust_refuses_a_prefix_that_names_several_cas(
        tmp_path: Path, two_cas: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two CAs whose fingerprints share the prefix given (made so here: 64 bits never
    collide by chance): neither is removed, and the message names both."""
    import edgemesh.security._certs as certs_module

    old, new = two_cas
    node = tmp_path / "node"
    issue_into_dir(str(new), "edge-1", out=str(node))
    change_trust(str(node / "ca.pem"), add=[cert_of(old / "ca.pem")])
    before = (node / "ca.pem").read_bytes()
    monkeypatch.setattr(certs_module, "fingerprint",
                        lambda cert: "ab" * 8 + fingerprint(cert)[16:])
    assert certs_main(["trust", "--dir", str(node), "--remove", "ab" * 8]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names 2 CAs" in err and "nothing was changed" in err
    for directory in (old, new):
        assert "ab" * 8 + ca_fingerprint(directory)[16:] in err
    assert (node / "ca.pem").read_bytes() == before
    with pytest.raises(CertError, match="both added and removed"):
        change_trust(str(node / "ca.pem"), add=[cert_of(old / "ca.pem")], remove=["ab" * 8])


def test_a_ca_directory_that_trusts_another_ca_still_issues(two_cas: tuple[Path, Path]) -> None:
    """A CA directory used as a node's --tls-dir (as `edgemesh demo` does) may hold a
    bundle: issue signs with the certificate of ca.key, and that one cannot be removed."""
    old, new = two_cas
    change_trust(str(old / "ca.pem"), add=[cert_of(new / "ca.pem")])
    issue_into_dir(str(old), "edge-1")
    cert_of(old / "edge-1.pem").verify_directly_issued_by(cert_of(old / "ca.pem"))
    with pytest.raises(CertError, match="is the directory of the CA"):
        change_trust(str(old / "ca.pem"), remove=[cert_of(old / "ca.pem")], force=True)
    change_trust(str(old / "ca.pem"), remove=[fingerprint(cert_of(new / "ca.pem"))])
    assert bundle_of(old / "ca.pem") == [ca_fingerprint(old)]


def test_concurrent_bundle_updates_lose_no_ca(tmp_path: Path) -> None:
    """Two tools adding CAs to one bundle at the same time: each read-add-rename holds the
    directory's lock, so neither drops the other's CA."""
    import threading

    node = tmp_path / "node"
    node.mkdir()
    cas = [x509.load_pem_x509_certificate(make_ca(f"CA {i}").cert_pem) for i in range(8)]
    start = threading.Barrier(len(cas))

    def add(cert: x509.Certificate) -> None:
        start.wait(10)
        change_trust(str(node / "ca.pem"), add=[cert])

    threads = [threading.Thread(target=add, args=(c,)) for c in cas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(bundle_of(node / "ca.pem")) == sorted(fingerprint(c) for c in cas)


def test_trust_updates_a_symlinked_bundle_where_it_points(tmp_path: Path,
                                                          two_cas: tuple[Path, Path]) -> None:
    old, new = two_cas
    shared = tmp_path / "shared" / "bundle.pem"
    shared.parent.mkdir()
    shared.write_bytes((old / "ca.pem").read_bytes())
    node = tmp_path / "node"
    node.mkdir()
    (node / "ca.pem").symlink_to(shared)
    change_trust(str(node / "ca.pem"), add=[cert_of(new / "ca.pem")])
    assert (node / "ca.pem").is_symlink()
    assert bundle_of(shared) == [ca_fingerprint(old), ca_fingerprint(new)]


def test_a_file_system_error_is_one_line(tmp_path: Path, two_cas: tuple[Path, Path],
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only mount (a Kubernetes Secret) refuses the write: say so, no traceback."""
    _, new = two_cas

    def read_only(path: str, *args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system", path)

    monkeypatch.setattr("edgemesh.security._certs.write_file", read_only)
    assert certs_main(["trust", "--dir", str(tmp_path / "node"), "--add", str(new)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ca.pem: Read-only file system" in err
