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
from edgemesh.security._certs import init_ca_dir, issue_into_dir, write_file

UTC = datetime.timezone.utc


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def cert_of(path: Path | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


# --- the command ------------------------------------------------------------------------


def test_certs_is_an_edgemesh_command() -> None:
    assert "certs" in _COMMANDS


def test_init_makes_a_ca_with_a_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
        load_material(files(tmp_path / "a", ca, make_node_cert(ca, "edge-1", days=10, valid_from=old)))
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
                                                 names: list[x509.GeneralName], problem: str) -> None:
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
