"""An edge's ``--router`` given as a name with several addresses (roles/_resolve.py): each dial
takes the next address, the name is resolved again once every address was dialled, and an edge
whose tunnel fails moves to the next address.  A fake IHostnameResolver stands in for DNS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgemesh.roles import EdgeConfig, build_edge
from edgemesh.roles._resolve import ResolvingEndpoint, resolvable


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers ``name`` with the addresses the test sets, and counts the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str,
                        portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> IResolutionReceiver:
        self.asked.append(hostName)
        resolutionReceiver.resolutionBegan(None)  # type: ignore[arg-type]
        for host in self.answers.get(hostName, []):
            kind = IPv6Address if ":" in host else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", host, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolutionReceiver


@pytest.mark.parametrize(("description", "expected"), [
    ("tcp:routers.edgemesh.svc:7700", ("routers.edgemesh.svc", 7700, 30)),
    ("tcp:routers:7700:timeout=5", ("routers", 7700, 5.0)),
    ("tcp:127.0.0.1:7700", None),
    ("tcp6:\\:\\:1:7700", None),
    ("tcp:host=routers:port=7700", None),
    ("tcp:routers:7700:bindAddress=10.0.0.1", None),
    ("unix:/run/router.sock", None),
    ("tcp:routers:0", None),
])
def test_which_router_endpoints_are_resolved(description: str, expected: object) -> None:
    assert resolvable(description) == expected


def test_each_dial_takes_the_next_address_then_resolves_again() -> None:
    reactor = MemoryReactorClock()
    resolver = FakeResolver({"routers": ["10.0.0.1", "10.0.0.2", "fd00::3"]})
    endpoint = ResolvingEndpoint(reactor, "routers", 7700, 5, resolver=resolver)
    verifyObject(IHostnameResolver, resolver)
    factory = Factory.forProtocol(Protocol)
    for _ in range(3):
        endpoint.connect(factory)
    assert [(c[0], c[1], c[3]) for c in reactor.tcpClients] == [
        ("10.0.0.1", 7700, 5), ("10.0.0.2", 7700, 5), ("fd00::3", 7700, 5)]
    assert resolver.asked == ["routers"], "one answer serves every address"
    # Every address dialled: the name is resolved again (a rolling update moved a replica);
    # the address dialled last goes last.
    resolver.answers["routers"] = ["fd00::3", "10.0.0.4"]
    endpoint.connect(factory)
    endpoint.connect(factory)
    assert resolver.asked == ["routers", "routers"]
    assert [c[0] for c in reactor.tcpClients[3:]] == ["10.0.0.4", "fd00::3"]


def test_a_name_without_addresses_is_a_failed_dial() -> None:
    reactor = MemoryReactorClock()
    endpoint = ResolvingEndpoint(reactor, "nowhere", 7700, resolver=FakeResolver({}))
    failures: list[Any] = []
    endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
    assert failures and failures[0].check(DNSLookupError)
    assert reactor.tcpClients == []


def test_an_edge_fails_over_through_every_address(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    resolver = FakeResolver({"routers.example": ["127.0.0.11", "127.0.0.12", "::1"]})
    reactor.installNameResolver(resolver)
    edge = build_edge(reactor, EdgeConfig(node="edge-1", state_dir=str(tmp_path),
                                          router="tcp:routers.example:7700", hub=None,
                                          proxy=None))
    edge.privilegedStartService()
    edge.startService()
    assert edge.mover is not None, "a name of several replicas: the edge can move"
    dialled: list[str] = []
    for _ in range(40):  # bounded: each failed dial is retried after the tunnel's backoff
        while len(reactor.tcpClients) > len(dialled):
            host, port, factory, _, _ = reactor.tcpClients[len(dialled)]
            dialled.append(host)
            assert port == 7700
            connector = reactor.connectors[len(dialled) - 1]
            factory.clientConnectionFailed(connector, ConnectionRefusedError("down"))
        if len(dialled) >= 5:
            break
        reactor.advance(1)
    assert dialled[:5] == ["127.0.0.11", "127.0.0.12", "::1", "127.0.0.11", "127.0.0.12"]
    assert resolver.asked == ["routers.example", "routers.example"]
    edge.stopService()
