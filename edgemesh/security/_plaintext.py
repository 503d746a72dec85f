"""
The plaintext side of link security (``--insecure``) and ``link_security``, which chooses:
a plaintext node never imports the TLS modules (``_links``, ``_material``, ``_certs``,
``_sockettls``: 0.4 MiB of an idle edge's RssAnon); a node given TLS files imports them
at start, when ``link_security`` builds its ``MutualTLS``.  See ``_links`` for the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger

from ..transports import EnvelopeLink

if TYPE_CHECKING:
    from ._config import TLSConfig

log = Logger(namespace="edgemesh.security")

ANY_PEER = "*"
"""A client endpoint's peer name that accepts any certificate of the CA (names unknown
before the dial: the router replicas behind a headless Service)."""


class LinkSecurity(Protocol):
    """What the roles use to listen, dial and accept links (see the module docstring)."""

    service: Service

    def server_factory(self, factory: IProtocolFactory) -> IProtocolFactory: ...

    def client_endpoint(self, endpoint: IStreamClientEndpoint,
                        peer: str) -> IStreamClientEndpoint: ...

    def guard(
        self,
        link: EnvelopeLink,
        *,
        role: str,
        expect: str | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> EnvelopeLink: ...


def _hello_problem(
    link: EnvelopeLink, role: str, expect: str | None, known: Callable[[str], bool] | None
) -> str | None:
    """The checks that need no certificate: the role, the expected name, the catalog."""
    hello = link.peer
    if hello is None:
        return "no hello"
    if hello.role != role:
        return f"peer {hello.node!r} says its role is {hello.role!r}, expected {role!r}"
    if expect is not None and hello.node != expect:
        return f"peer says it is {hello.node!r}, expected {expect!r}"
    if known is not None and not known(hello.node):
        return f"{hello.node!r} is not an edge node of the catalog"
    return None


def _fail_closed(
        check: Callable[[EnvelopeLink], str | None]) -> Callable[[EnvelopeLink], str | None]:
    """A check that raises refuses the peer (the link would otherwise log and go on)."""

    def guarded(link: EnvelopeLink) -> str | None:
        try:
            return check(link)
        except Exception:  # noqa: BLE001 -- whatever went wrong, the peer is not trusted
            log.failure("checking the identity of {peer} raised", peer=link.peer_name)
            return "identity check failed"

    return guarded


# --- plaintext ------------------------------------------------------------------------------


class _PlaintextWarning(Service):
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        log.warn(
            "links between nodes are PLAINTEXT (--insecure): no encryption, and a peer's "
            "name is whatever its hello says.  Use --ca/--cert/--key (or --tls-dir) outside tests."
        )


class Plaintext:
    """``--insecure``: no TLS; the hello is checked against the catalog only."""

    def __init__(self) -> None:
        self.service: Service = _PlaintextWarning()
        self.service.setName("tls")  # type: ignore[no-untyped-call]

    def server_factory(self, factory: IProtocolFactory) -> IProtocolFactory:
        return factory

    def client_endpoint(self, endpoint: IStreamClientEndpoint, peer: str) -> IStreamClientEndpoint:
        return endpoint

    def guard(
        self,
        link: EnvelopeLink,
        *,
        role: str,
        expect: str | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> EnvelopeLink:
        if known is not None:
            link.identity_check = _fail_closed(lambda link: _hello_problem(link, role, None, known))
        return link


def link_security(reactor: Any, tls: TLSConfig | None, *, node: str | None = None,
                  role: str | None = None) -> LinkSecurity:
    """Mutual TLS from ``tls``, or explicit plaintext when it is None.  Raises
    TLSFileError when the files are unusable or name another node or role."""
    if tls is None:
        return Plaintext()
    from ._links import MutualTLS

    return MutualTLS(reactor, tls, node=node, role=role)
