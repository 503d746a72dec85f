"""Certificate tooling (``edgemesh certs``): the CA, node certificates, and the trust
bundle of a node's ``--tls-dir``.  The public face of ``_certs``, for the command line and
for operators' scripts."""

from ._certs import (
    CA_DAYS,
    CA_FILE,
    NODE_DAYS,
    SHORT_FINGERPRINT,
    CertError,
    Issued,
    TrustChange,
    change_trust,
    describe_ca,
    fingerprint,
    init_ca_dir,
    issue_into_dir,
    issue_node_files,
    make_ca,
    make_node_cert,
    node_certificates,
    parse_fingerprint,
    read_cas,
    signed_by,
    write_file,
)

__all__ = [
    "CA_DAYS",
    "CA_FILE",
    "NODE_DAYS",
    "SHORT_FINGERPRINT",
    "CertError",
    "Issued",
    "TrustChange",
    "change_trust",
    "describe_ca",
    "fingerprint",
    "init_ca_dir",
    "issue_into_dir",
    "issue_node_files",
    "make_ca",
    "make_node_cert",
    "node_certificates",
    "parse_fingerprint",
    "read_cas",
    "signed_by",
    "write_file",
]
