"""
Security of the mesh's own links: mutual TLS between nodes, node identities in
certificates, and the tooling that makes them (``edgemesh certs``).

See docs/security.md for the model: a private CA signs one certificate per node, whose
subjectAltName is the node name; both ends of every router↔edge tunnel and edge↔edge hub
link verify each other, and a peer's hello must name the node its certificate names.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._config import TLSConfig, TLSFileError
from ._options import TLSOptions
from ._plaintext import ANY_PEER, LinkSecurity, Plaintext, link_security

if TYPE_CHECKING:
    from ._certs import CertError, Issued, check_node_name, make_ca, make_node_cert
    from ._links import MutualTLS, peer_problem
    from ._material import (
        Identity,
        IdentityError,
        TLSMaterial,
        identity_of,
        load_material,
        quiet_pyopenssl,
    )

# The TLS names, imported on first use: a plaintext node never loads their modules (see
# _config; 0.4 MiB of an idle edge's RssAnon).
__getattr__ = lazy_names(__name__, {
    "._certs": ("CertError", "Issued", "check_node_name", "make_ca", "make_node_cert"),
    "._links": ("MutualTLS", "peer_problem"),
    "._material": ("Identity", "IdentityError", "TLSMaterial", "identity_of", "load_material",
                  "quiet_pyopenssl"),
}, globals())

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
