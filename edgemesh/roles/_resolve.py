"""
An edge's ``--router`` given as a DNS name that resolves to several addresses (a headless
Service of router replicas): every address is a router to dial in turn.

``ResolvingEndpoint`` resolves the name through a Twisted ``IHostnameResolver`` (the
reactor's ``nameResolver``: IPv4 and IPv6), then each ``connect`` dials the next address of
that answer; once every address was dialled, the next ``connect`` resolves the name again
(replicas come and go: a rolling update gives them new addresses).  Twisted's own
``HostnameEndpoint`` races the addresses of one answer and always ends up on the first that
answers, so edges would crowd on one replica and a dead one would be tried first every time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from zope.interface import implementer

from ..security import ANY_PEER

ANY_ROUTER = ANY_PEER
"""``--router *=ENDPOINT``: any router certificate of the CA (its name is not known before,
e.g. the replicas behind a headless Service); the hello must still match the certificate."""
MAX_ADDRESSES = 64
"""Addresses kept from one answer (a bound: a headless Service lists its ready pods)."""
DEFAULT_CONNECT_TIMEOUT = 30


def resolvable(description: str) -> tuple[str, int, float] | None:
    """(host, port, timeout) when ``description`` is ``tcp:HOST:PORT`` (optionally
    ``:timeout=SECONDS``) with HOST a DNS name, not an address; else None (dialled as is)."""
    parts = description.split(":")
    if len(parts) < 3 or parts[0] != "tcp" or "\\" in description:
        return None
    host, port_text, options = parts[1], parts[2], parts[3:]
    if "=" in host or "=" in port_text or not host or not port_text.isdigit():
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    timeout: float = DEFAULT_CONNECT_TIMEOUT
    for option in options:
        key, _, value = option.partition("=")
        if key != "timeout":
            return None  # bindAddress and the like: leave it to Twisted's HostnameEndpoint
        try:
            timeout = float(value)
        except ValueError:
            return None
    port = int(port_text)
    return (host, port, timeout) if 0 < port < 65536 else None


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)) and address.host not in self.hosts \
                and len(self.hosts) < MAX_ADDRESSES:
            self.hosts.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.hosts)


def resolve(resolver: IHostnameResolver, host: str, port: int) -> Deferred[list[str]]:
    """The addresses of ``host`` (IPv4 and IPv6, in the resolver's order, no duplicates)."""
    receiver = _Addresses()
    resolver.resolveHostName(receiver, host, port, None, "TCP")
    return receiver.done


@implementer(IStreamClientEndpoint)
class ResolvingEndpoint:
    """Dials the addresses of a name in turn, resolving it again once all were dialled."""

    def __init__(self, reactor: Any, host: str, port: int, timeout: float = 30,
                 secure: Callable[[IStreamClientEndpoint], IStreamClientEndpoint] = lambda e: e,
                 resolver: IHostnameResolver | None = None) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self.secure = secure
        self.resolver = resolver
        self.addresses: list[str] = []
        """The last answer."""
        self.queue: list[str] = []
        """Addresses of the last answer not dialled yet."""
        self.current: str | None = None
        self.resolutions = 0

    def _resolver(self) -> IHostnameResolver:
        resolver = self.resolver if self.resolver is not None else self.reactor.nameResolver
        assert IHostnameResolver.providedBy(resolver)
        return resolver

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.queue:
            return self._dial(protocolFactory)
        self.resolutions += 1
        try:
            answer = resolve(self._resolver(), self.host, self.port)
        except Exception as error:  # noqa: BLE001 - a resolver's bug is a failed dial
            return fail(DNSLookupError(f"{self.host}: {error}"))
        dialled: Deferred[IProtocol] = answer.addCallback(self._resolved, protocolFactory)
        return dialled

    def _resolved(self, hosts: list[str], factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.current in hosts and len(hosts) > 1:
            # The address dialled last (its replica just failed or drains) goes last.
            hosts = [h for h in hosts if h != self.current] + [self.current]
        self.addresses = list(hosts)
        self.queue = list(hosts)
        if not hosts:
            raise DNSLookupError(f"{self.host}: no address")
        return self._dial(factory)

    def _dial(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        host = self.queue.pop(0)
        self.current = host
        endpoint: IStreamClientEndpoint
        if ":" in host:
            endpoint = TCP6ClientEndpoint(self.reactor, host, self.port, self.timeout)
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, host, self.port, self.timeout)
        connected: Deferred[IProtocol] = self.secure(endpoint).connect(factory)
        return connected

    def __repr__(self) -> str:
        return f"<ResolvingEndpoint {self.host}:{self.port} {self.addresses}>"
