"""Where a node's TLS files are (``TLSConfig``), apart from reading them (``_material``):
a node started with ``--insecure`` builds its options and services from this module alone,
without the certificate code (cryptography's x509 API, service_identity's checks), whose
modules would hold 0.4 MiB of an idle edge's RssAnon for nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass


class TLSFileError(Exception):
    """The TLS files cannot be used (the message names the file and the problem)."""


@dataclass(frozen=True)
class TLSConfig:
    """Where a node's TLS files are, and how it treats them."""

    ca: str
    """PEM bundle of the CA certificate(s) that sign node certificates (several during a
    CA rotation)."""
    cert: str
    """This node's certificate (PEM), from ``edgemesh certs issue``."""
    key: str
    """This node's private key (PEM)."""
    handshake_timeout: float = 10.0
    """Seconds a peer has to complete the TLS handshake after connecting."""
    reload_interval: float = 60.0
    """Seconds between checks of the files for changes; 0: only on SIGHUP (or ``reload``)."""
    reload_on_sighup: bool = False
    """Reload on SIGHUP (the twistd plugins turn this on; an embedding application may
    have its own use for the signal)."""
    link_io: str = "memory"
    """How a link's TLS reaches its TCP socket: ``memory`` (Twisted's TLS over memory BIOs)
    or ``socket`` (OpenSSL reads and writes the socket itself: security/_sockettls.py)."""

    @classmethod
    def from_directory(cls, directory: str, node: str,
                       **settings: float | bool | str) -> TLSConfig:
        """``DIR/ca.pem``, ``DIR/NODE.pem``, ``DIR/NODE.key``: what ``edgemesh certs`` writes."""
        return cls(
            ca=os.path.join(directory, "ca.pem"),
            cert=os.path.join(directory, f"{node}.pem"),
            key=os.path.join(directory, f"{node}.key"),
            **settings,  # type: ignore[arg-type]
        )
