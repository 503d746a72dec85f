"""
Security of the mesh's own links: mutual TLS between nodes, node identities in
certificates, and the tooling that makes them (``edgemesh certs``).

See docs/security.md for the model: a private CA signs one certificate per node, whose
subjectAltName is the node name; both ends of every router↔edge tunnel and edge↔edge hub
link verify each other, and a peer's hello must name the node its certificate names.
"""

from ._certs import CertError, Issued, check_node_name, make_ca, make_node_cert
from ._links import ANY_PEER, LinkSecurity, MutualTLS, Plaintext, link_security, peer_problem
from ._material import (
    Identity,
    IdentityError,
    TLSConfig,
    TLSFileError,
    TLSMaterial,
    identity_of,
    load_material,
    quiet_pyopenssl,
)
from ._options import TLSOptions

__all__ = [
    "ANY_PEER",
    "CertError",
    "Identity",
    "IdentityError",
    "Issued",
    "LinkSecurity",
    "MutualTLS",
    "Plaintext",
    "TLSConfig",
    "TLSFileError",
    "TLSMaterial",
    "TLSOptions",
    "check_node_name",
    "identity_of",
    "link_security",
    "load_material",
    "make_ca",
    "make_node_cert",
    "peer_problem",
    "quiet_pyopenssl",
]
