"""The transparent listener and what it stands on: SO_ORIGINAL_DST parsing, virtual IPs for
headless services, routing by original destination, refusals; wiring into ``build_edge``.
StringTransport and MemoryReactorClock only; the kernel side is in the netns tests."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from capturekit import FakeNat
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs

from edgemesh.capture import (
    VIRTUAL_IPS_FILE,
    CaptureConfig,
    CapturedConnection,
    CaptureRules,
    CaptureRulesService,
    Iptables,
    IptablesError,
    ServiceAddresses,
    TransparentFrontFactory,
    VirtualIPs,
    assign_virtual_ips,
    expected,
    home_offset,
    original_destination,
    parse_sockaddr_in,
)
from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import (
    IRequestBody,
    IResponder,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    SourceKind,
)
from edgemesh.roles import EdgeConfig, build_edge
from edgemesh.testing import RecordingBody

NET = ipaddress.IPv4Network("240.240.0.0/16")
HOST = IPv4Address("TCP", "127.0.0.1", 15001)
PEER = IPv4Address("TCP", "10.96.0.1", 40000)


def sockaddr_in(host: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host) \
        + bytes(8)


def catalog(revision: int = 1, extra: tuple[Service, ...] = ()) -> Catalog:
    http = ServicePort("http", 80, 8080)
    admin = ServicePort("admin", 9090, 9090)
    services = [
        Service("default", "web", "10.96.0.11", (http, admin),
                {"http": (Endpoint("127.0.0.1", 18001, "edge-1"),)}),
        Service("shop", "cart", "10.96.0.40", (http,)),
        Service("shop", "db", None, (ServicePort("", 5432, 5432), http)),
        Service("shop", "ledger", None, (http,)),
        *extra,
    ]
    return Catalog(services, [Node("edge-1", True, "127.0.0.1", 7701)], revision)


# -- SO_ORIGINAL_DST ---------------------------------------------------------------------


@given(st.ip_addresses(v=4), st.integers(1, 65535))
def test_sockaddr_in_round_trip(address: ipaddress.IPv4Address, port: int) -> None:
    assert parse_sockaddr_in(sockaddr_in(str(address), port)) == (str(address), port)


def test_sockaddr_in_known_bytes() -> None:
    # What the kernel returned in a namespace for a connection to 10.96.0.11:80.
    raw = bytes.fromhex("020000500a60000b0000000000000000")
    assert parse_sockaddr_in(raw, "little") == ("10.96.0.11", 80)
    swapped = bytes.fromhex("000200500a60000b0000000000000000")
    assert parse_sockaddr_in(swapped, "big") == ("10.96.0.11", 80)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "at least 8 bytes"),
        (b"\x02\x00\x00", "at least 8 bytes"),
        (struct.pack("=H", 10) + bytes(14), "address family 10"),
        (struct.pack("=H", socket.AF_INET) + bytes(14), "port 0"),
    ],
)
def test_sockaddr_in_refuses(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_sockaddr_in(raw, sys.byteorder)


class FakeSocket:
    def __init__(self, answer: bytes | OSError) -> None:
        self.answer = answer
        self.asked: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked.append((level, option, size))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def test_original_destination_asks_sol_ip_80_for_16_bytes() -> None:
    sock = FakeSocket(sockaddr_in("10.96.0.40", 8080))
    assert original_destination(sock) == ("10.96.0.40", 8080)
    assert sock.asked == [(socket.SOL_IP, 80, 16)]
    assert original_destination(FakeSocket(OSError(2, "No such file or directory"))) is None
    assert original_destination(FakeSocket(bytes(16))) is None
    assert original_destination(object()) is None


# -- virtual IPs -----------------------------------------------------------------------------


def test_assignment_is_deterministic_and_order_free() -> None:
    keys = [f"ns{i}/svc{i}" for i in range(50)]
    first = assign_virtual_ips(keys, NET)
    assert first == assign_virtual_ips(reversed(keys), NET)
    assert len(set(first.values())) == 50
    assert all(address in NET for address in first.values())
    # Without collisions each one sits at its home.
    assert first["ns0/svc0"] == NET.network_address + home_offset("ns0/svc0", NET)


def test_collisions_probe_upwards_and_existing_addresses_stay() -> None:
    tiny = ipaddress.IPv4Network("240.240.0.0/29")  # 6 usable: .1 to .6
    keys = [f"default/s{i}" for i in range(6)]
    full = assign_virtual_ips(keys, tiny)
    assert sorted(int(a) & 7 for a in full.values()) == [1, 2, 3, 4, 5, 6]
    assert tiny.network_address not in full.values()
    assert tiny.broadcast_address not in full.values()
    # A seventh does not fit; nobody moves.
    more = assign_virtual_ips([*keys, "default/late"], tiny, full)
    assert "default/late" not in more
    assert {k: more[k] for k in keys} == full
    # Delete one: the newcomer gets the free address, the others keep theirs.
    fewer = {k: v for k, v in full.items() if k != "default/s3"}
    again = assign_virtual_ips([*fewer, "default/late"], tiny, fewer)
    assert again["default/late"] == full["default/s3"]
    assert {k: again[k] for k in fewer} == fewer


def test_previous_assignments_outside_the_range_or_shared_are_dropped() -> None:
    previous = {
        "a/x": ipaddress.IPv4Address("10.0.0.1"),
        "a/y": ipaddress.IPv4Address("240.240.0.9"),
        "a/z": ipaddress.IPv4Address("240.240.0.9"),
        "a/w": NET.network_address,
    }
    result = assign_virtual_ips(["a/x", "a/y", "a/z", "a/w"], NET, previous)
    assert result["a/y"] == ipaddress.IPv4Address("240.240.0.9")  # first in sorted order keeps it
    assert result["a/z"] != result["a/y"]
    assert result["a/x"] in NET and result["a/w"] != NET.network_address


def test_virtual_ips_persist_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / VIRTUAL_IPS_FILE
    tiny = ipaddress.IPv4Network("240.240.0.0/29")
    first = VirtualIPs(tiny, str(path))
    # Collide on purpose: the later-created service probes past the first one's address.
    keys = [f"default/s{i}" for i in range(5)]
    services = [Service(*key.split("/"), None, (ServicePort("", 80, 80),)) for key in keys]
    first_catalog = Catalog(services[:4])
    before = first.assignments(first_catalog)
    assert json.loads(path.read_text())["assignments"] == {k: str(v) for k, v in before.items()}
    # Restart with one more service: the four keep their addresses whatever the hashes say.
    second = VirtualIPs(tiny, str(path))
    after = second.assignments(Catalog(services))
    assert {k: after[k] for k in before} == before
    assert second.service_key(Catalog(services), after["default/s4"]) == "default/s4"


@pytest.mark.parametrize("content", ["{not json", '{"format": "other"}', ('{"format": '
                                     '"edgemesh.virtual-ips", "network": "240.240.0.0/16", '
                                     '"assignments": ["x"]}'), '\x00\x01'])
def test_a_bad_file_is_ignored_with_a_warning(tmp_path: Path, content: str) -> None:
    path = tmp_path / VIRTUAL_IPS_FILE
    path.write_text(content)
    with capturedLogs() as events:
        virtual = VirtualIPs(NET, str(path))
    assert any(e["log_level"] == LogLevel.warn for e in events)
    assigned = virtual.assignments(catalog())
    assert set(assigned) == {"shop/db", "shop/ledger"}
    assert json.loads(path.read_text())["format"] == "edgemesh.virtual-ips"


def test_a_changed_range_reassigns(tmp_path: Path) -> None:
    path = str(tmp_path / VIRTUAL_IPS_FILE)
    VirtualIPs(NET, path).assignments(catalog())
    other = ipaddress.IPv4Network("198.18.0.0/16")
    assert all(a in other for a in VirtualIPs(other, path).assignments(catalog()).values())


def test_service_addresses() -> None:
    current = [catalog()]
    addresses = ServiceAddresses(lambda: current[0], VirtualIPs(NET))
    web = current[0].service("default/web")
    db = current[0].service("shop/db")
    assert web is not None and db is not None
    assert addresses.address_of(web) == "10.96.0.11"
    vip = addresses.address_of(db)
    assert vip is not None and ipaddress.IPv4Address(vip) in NET
    service, port = addresses.destination("10.96.0.11", 9090)
    assert (service.key, port.name) == ("default/web", "admin")
    service, port = addresses.destination(vip, 5432)
    assert (service.key, port.port) == ("shop/db", 5432)
    with pytest.raises(MeshError, match="no TCP port 81") as caught:
        addresses.destination(vip, 81)
    assert caught.value.reason is Reason.unknown_service
    with pytest.raises(MeshError, match="no headless service has virtual IP"):
        addresses.destination("240.240.255.254", 80)
    with pytest.raises(MeshError, match="clusterIP 10.96.0.99"):
        addresses.destination("10.96.0.99", 80)
    # A new catalog revision is picked up on the next lookup.
    current[0] = catalog(2, (Service("shop", "late", None, (ServicePort("", 80, 80),)),))
    late = current[0].service("shop/late")
    assert late is not None and addresses.address_of(late) is not None
    assert addresses.address_of(db) == vip
    assert ServiceAddresses(lambda: current[0]).address_of(db) is None


# -- the transparent front -----------------------------------------------------------------------


@dataclass
class Routed:
    """A fake ``Pipeline.dispatch_resolved``: records and answers 200 with the service key."""

    calls: list[tuple[SourceKind, RequestHead, str, int]] = field(default_factory=list)

    def __call__(self, source: SourceKind, head: RequestHead, responder: IResponder,
                 key: str, port: int, hint: tuple[str, int] | None) -> IRequestBody:
        self.calls.append((source, head, key, port))
        body = b"%s:%d" % (key.encode(), port)
        responder.head(ResponseHead(200, b"OK", (), len(body)))
        responder.write(body)
        responder.end()
        return RecordingBody()


def connect(original: tuple[str, int] | None, routed: Routed | None = None,
            addresses: ServiceAddresses | None = None) -> tuple[StringTransport, Routed]:
    routed = routed or Routed()
    addresses = addresses or ServiceAddresses(lambda: catalog(), VirtualIPs(NET))
    factory = TransparentFrontFactory(MemoryReactorClock(), addresses, routed,
                                      lookup=lambda transport: original)
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    transport.protocol = protocol  # type: ignore[attr-defined]  # for the tests to feed
    protocol.makeConnection(transport)
    return transport, routed


def test_routes_by_original_destination_not_by_host() -> None:
    transport, routed = connect(("10.96.0.11", 9090))
    # Host says another service (virtual hosting): the app connected to web's admin port.
    transport.protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: cart.shop\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.value().endswith(b"default/web:9090")
    source, head, key, port = routed.calls[0]
    assert (source, key, port) == (SourceKind.service_bus, "default/web", 9090)
    assert head.authority == b"cart.shop"
    assert (b"Host", b"cart.shop") in head.headers, "the Host header travels unchanged"


def test_a_short_name_from_another_namespace_reaches_the_right_service() -> None:
    # A pod in namespace shop asked for http://cart/: its resolver found cart.shop's IP.
    transport, routed = connect(("10.96.0.40", 80))
    transport.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: cart\r\n\r\n")
    assert routed.calls[0][2] == "shop/cart"


def test_a_headless_service_by_its_virtual_ip_and_keep_alive() -> None:
    addresses = ServiceAddresses(lambda: catalog(), VirtualIPs(NET))
    db = catalog().service("shop/db")
    assert db is not None
    vip = addresses.address_of(db)
    assert vip is not None
    transport, routed = connect((vip, 5432), addresses=addresses)
    transport.protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: db.shop\r\n\r\n"
                                    b"GET /2 HTTP/1.1\r\nHost: db.shop\r\n\r\n")
    assert [(c[2], c[3], c[1].path) for c in routed.calls] == [
        ("shop/db", 5432, b"/1"), ("shop/db", 5432, b"/2")]


def test_http10_without_host_gets_the_original_destination_as_authority() -> None:
    transport, routed = connect(("10.96.0.11", 80))
    transport.protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    head = routed.calls[0][1]
    assert head.authority == b"10.96.0.11:80"
    assert not any(name.lower() == b"host" for name, _ in head.headers)


@pytest.mark.parametrize(
    ("original", "status", "code", "detail"),
    [
        (("10.96.0.99", 80), 404, b"unknown-service", b"no service has clusterIP 10.96.0.99"),
        (("10.96.0.11", 81), 404, b"unknown-service", b"no TCP port 81"),
        (None, 403, b"forbidden-route", b"redirected by the capture rules only"),
        (("127.0.0.1", 15001), 403, b"forbidden-route", b"redirected by the capture rules only"),
    ],
    ids=["unknown-ip", "unknown-port", "no-original", "not-redirected"],
)
def test_refusals(original: tuple[str, int] | None, status: int, code: bytes,
                  detail: bytes) -> None:
    transport, routed = connect(original)
    transport.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"X-Edgemesh-Error: " + code in answer
    assert detail in answer
    assert routed.calls == []


@pytest.mark.parametrize(
    ("first", "shown"),
    [
        (b"\x16\x03\x01\x02\x00\x01", b"0x16, a TLS handshake"),
        (b"\x05\x01\x00", b"0x05, a SOCKS handshake"),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"0x00"),
        (b"get / HTTP/1.1\r\n\r\n", b"'g'"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", b"200 OK"),  # starts like a method: the parser decides
    ],
)
def test_a_non_http_first_byte_is_refused_clearly_and_logged(first: bytes, shown: bytes) -> None:
    with capturedLogs() as events:
        transport, routed = connect(("10.96.0.11", 80))
        transport.protocol.dataReceived(first)
    answer = transport.value()
    if shown == b"200 OK":
        assert answer.startswith(b"HTTP/1.1 400 "), "not an HTTP request line: a parse error"
        return
    assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
    assert b"X-Edgemesh-Error: not-implemented" in answer
    assert b"not HTTP: captured connection to 10.96.0.11:80 starts with " + shown in answer
    assert b"Connection: close" in answer
    assert transport.disconnecting
    assert routed.calls == []
    logged = [e for e in events if "not HTTP" in str(e.get("detail", ""))]
    assert len(logged) == 1


def test_leading_empty_lines_are_http() -> None:
    transport, _routed = connect(("10.96.0.11", 80))
    transport.protocol.dataReceived(b"\r\nGET / HTTP/1.1\r\nHost: web\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")


def test_a_failing_lookup_costs_the_connection_only() -> None:
    def broken(transport: Any) -> tuple[str, int] | None:
        raise RuntimeError("boom")

    factory = TransparentFrontFactory(MemoryReactorClock(), ServiceAddresses(lambda: catalog()),
                                      Routed(), lookup=broken)
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    with capturedLogs() as events:
        protocol.makeConnection(transport)
    assert isinstance(protocol.hook, CapturedConnection) and protocol.hook.original is None
    assert any(e.get("log_failure") is not None for e in events)


# -- wiring ------------------------------------------------------------------------------------


class FailingIptables(Iptables):
    def install(self, rules: CaptureRules) -> Any:
        raise IptablesError("iptables-restore: Permission denied (you must be root)")


def test_build_edge_with_capture(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    rules = CaptureRules(port=15001)
    config = EdgeConfig(
        node="edge-1", state_dir=str(tmp_path), catalog=catalog(), router=None,
        capture=CaptureConfig(transparent="tcp:15001:interface=127.0.0.1", rules=rules),
    )
    with capturedLogs() as built:
        node = build_edge(reactor, config)
    assert any("is on loopback" in str(e.get("log_format")) for e in built), "PREROUTING warning"
    assert "transparent" in node.listeners
    assert node.listeners["transparent"].kind is SourceKind.service_bus
    assert any(s.description == "tcp:15001:interface=127.0.0.1" for s in node.pipeline.sources)
    children = list(node)
    rules_service = next(s for s in children if isinstance(s, CaptureRulesService))
    # The listener binds before the rules send traffic to it, and is stopped after.
    assert children.index(node.listeners["transparent"]) < children.index(rules_service)
    nat = FakeNat()
    rules_service.iptables = Iptables(run=nat)
    with capturedLogs() as events:
        node.privilegedStartService()
        node.startService()
    assert any(p[0] == 15001 for p in reactor.tcpServers)
    assert Iptables(run=nat).show() == expected(rules)
    assert any("capture rules" in str(e.get("log_format")) for e in events)
    node.stopService()
    assert Iptables(run=nat).show() == []
    # Headless services get virtual IPs on first use, persisted beside the catalog.
    assert not (tmp_path / VIRTUAL_IPS_FILE).exists()
    node.listeners["transparent"].factory.addresses.address_of(  # type: ignore[attr-defined]
        catalog().services["shop/db"])
    assert (tmp_path / VIRTUAL_IPS_FILE).exists()


def test_a_failed_install_stops_the_start(tmp_path: Path) -> None:
    service = CaptureRulesService(FailingIptables(run=FakeNat()), CaptureRules())
    with pytest.raises(IptablesError, match="root"):
        service.privilegedStartService()
    assert not service.installed
    service.stopService()  # nothing installed: nothing removed, no error


def test_a_failed_removal_is_logged_not_raised() -> None:
    nat = FakeNat()
    service = CaptureRulesService(Iptables(run=nat), CaptureRules())
    service.startService()
    nat.fail_restore = "iptables-restore: Permission denied"
    with capturedLogs() as events:
        service.stopService()
    assert any(e["log_level"] == LogLevel.error for e in events)
