"""The edge's DNS server: which names are the mesh's, the answers from the live catalog,
search domains as pods use them, forwarding, the bounded cache and the in-flight bound
(fake upstream, Clock); then once over real UDP and TCP sockets on 127.0.0.1 with a fake
upstream DNS server there too."""

from __future__ import annotations

import gc
import ipaddress
import struct
from collections.abc import Callable
from typing import Any

import pytest
from capturekit import UDPMemoryReactor
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.names import client, common, dns
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSNameError,
    DNSQueryRefusedError,
    DNSServerError,
    DomainError,
)
from twisted.python.failure import Failure

from edgemesh.capture import ServiceAddresses, VirtualIPs
from edgemesh.catalog import Catalog, Endpoint, Service, ServicePort
from edgemesh.dns import (
    BoundedCache,
    DNSConfig,
    DNSConfigError,
    DNSService,
    Forwarder,
    MeshDNSServerFactory,
    MeshResolver,
    build_dns_factory,
    classify,
    parse_host_port,
    reverse_address,
    search_expansions,
)
from edgemesh.dns._server import fit_records

POD_SEARCH = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
VNET = ipaddress.IPv4Network("240.240.0.0/16")


def catalog() -> Catalog:
    http = ServicePort("http", 80, 8080)
    return Catalog([
        Service("default", "web", "10.96.0.11", (http,)),
        Service("shop", "cart", "10.96.0.40", (http,)),
        Service("shop", "db", None, (http,)),
        Service("default", "six", "fd00::11", (http,)),
        Service("com", "example", "10.96.0.50", (http,)),
    ])


def addresses(virtual: bool = True) -> ServiceAddresses:
    current = catalog()
    return ServiceAddresses(lambda: current, VirtualIPs(VNET) if virtual else None)


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key", "in_zone"),
    [
        ("web", "default/web", False),
        ("web.", "default/web", False),
        ("WEB.Default", "default/web", False),
        ("cart.shop", "shop/cart", False),
        ("cart.shop.svc", "shop/cart", True),
        ("cart.shop.svc.cluster.local", "shop/cart", True),
        ("cart.shop.svc.cluster.local.", "shop/cart", True),
        ("cart.shop.default.svc.cluster.local", None, True),
        ("pod-0.db.shop.svc.cluster.local", None, True),
        ("cluster.local", None, True),
        ("a.b.svc", None, False),
        ("x.y.z.svc", None, True),
        ("example.com", "com/example", False),
        ("www.example.com", None, False),
        ("", None, False),
        ("a..b", None, False),
        ("x" * 254, None, False),
    ],
)
def test_classify(name: str, key: str | None, in_zone: bool) -> None:
    kind = classify(name)
    if name == "a.b.svc":
        # Three labels ending in .svc: name.namespace.svc, inside the zone.
        assert (kind.key, kind.in_zone) == ("b/a", True)
        return
    assert (kind.key, kind.in_zone) == (key, in_zone)


def test_search_expansions_as_glibc_does() -> None:
    assert search_expansions("web", POD_SEARCH) == [
        "web.default.svc.cluster.local", "web.svc.cluster.local", "web.cluster.local", "web"]
    assert search_expansions("a.b.c.d.e.f", POD_SEARCH)[0] == "a.b.c.d.e.f"  # ndots:5
    assert search_expansions("web.default.svc.cluster.local.", POD_SEARCH) == [
        "web.default.svc.cluster.local"]


# -- the mesh's answers ------------------------------------------------------------------------


def outcome(deferred: Deferred[Any]) -> Any:
    """The result or the failure of an already-fired Deferred."""
    box: list[Any] = []
    deferred.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def ask(resolver: Any, name: str, kind: int = dns.A) -> Any:
    return outcome(resolver.query(dns.Query(name.encode(), kind, dns.IN)))


def addresses_in(result: Any) -> list[str]:
    answers, _, _ = result
    return [record.payload.dottedQuad() if record.type == dns.A
            else record.payload._address for record in answers]


def test_a_records_for_every_name_form() -> None:
    mesh = MeshResolver(addresses())
    for name in ["web", "web.default", "web.default.svc", "web.default.svc.cluster.local",
                 "Web.Default.SVC.cluster.local."]:
        answers, _authority, _additional = ask(mesh, name)
        assert [a.payload.dottedQuad() for a in answers] == ["10.96.0.11"], name
        assert answers[0].auth and answers[0].ttl == 5
        assert answers[0].name.name == name.encode(), "the name as asked (0x20 resolvers)"


def test_search_domains_as_a_pod_walks_them() -> None:
    """A pod in namespace default asks for cart.shop: the first expansion is NXDOMAIN (an
    authoritative one: not forwarded), the second answers."""
    mesh = MeshResolver(addresses())
    tried = []
    for name in search_expansions("cart.shop", POD_SEARCH):
        result = ask(mesh, name)
        tried.append(name)
        if not isinstance(result, defer.Failure):
            assert addresses_in(result) == ["10.96.0.40"]
            break
        assert result.check(AuthoritativeDomainError)
    assert tried == ["cart.shop.default.svc.cluster.local", "cart.shop.svc.cluster.local"]


def no_data(result: Any) -> bool:
    """NOERROR with no record of the type asked, and the zone's SOA in the authority section
    (RFC 2308), authoritative: glibc took an empty answer without AA nor RA for a lame
    server (getaddrinfo's "Temporary failure in name resolution" for AAAA)."""
    answers, authority, additional = result
    return (answers == [] and additional == [] and [r.type for r in authority] == [dns.SOA]
            and authority[0].name.name == b"cluster.local" and authority[0].auth)


def test_headless_services_get_their_virtual_ip_or_no_data() -> None:
    answer = ask(MeshResolver(addresses()), "db.shop.svc.cluster.local")
    assert ipaddress.IPv4Address(addresses_in(answer)[0]) in VNET
    assert no_data(ask(MeshResolver(addresses(virtual=False)), "db.shop"))


def test_other_types_of_a_known_name_are_no_data_not_nxdomain() -> None:
    mesh = MeshResolver(addresses())
    assert no_data(ask(mesh, "web.default.svc.cluster.local", dns.AAAA))
    assert no_data(ask(mesh, "web", dns.MX))
    six = ask(mesh, "six", dns.AAAA)
    assert six[0][0].type == dns.AAAA
    assert no_data(ask(mesh, "six", dns.A))
    assert addresses_in(ask(mesh, "web", dns.ALL_RECORDS)) == ["10.96.0.11"]


def test_names_with_names_below_them_are_no_data_not_nxdomain() -> None:
    """RFC 8020: NXDOMAIN says nothing exists below a name.  The zone, its svc and a
    namespace of the catalog have services below them (CoreDNS answers NOERROR too); a
    namespace without services, or another name of the zone, is NXDOMAIN."""
    mesh = MeshResolver(addresses())
    for name in ("cluster.local", "svc.cluster.local", "default.svc.cluster.local",
                 "Shop.svc.cluster.local."):
        assert no_data(ask(mesh, name)), name
    for name in ("nope.svc.cluster.local", "x.cluster.local"):
        result = ask(mesh, name)
        assert isinstance(result, Failure) and result.check(AuthoritativeDomainError), name


def stateful() -> ServiceAddresses:
    """test_dns's catalog and a headless service ``pg`` of three pods: pg-0 and pg-1 ready,
    pg-2 not; a TCP port ``postgres`` and a UDP one ``stats``."""
    pods = tuple(Endpoint(f"10.244.0.{i}", 5432, "edge-1", ready=i < 2, hostname=f"pg-{i}")
                 for i in range(3))
    ports = (ServicePort("postgres", 5432, 5432), ServicePort("stats", 8125, 8125, "UDP"))
    current = Catalog([*catalog().services.values(),
                       Service("data", "pg", None, ports, {"postgres": pods})])
    return ServiceAddresses(lambda: current, VirtualIPs(VNET))


def srv_records(answer: Any) -> list[tuple[int, int, int, str]]:
    return [(r.payload.priority, r.payload.weight, r.payload.port, r.payload.target.name.decode())
            for r in answer[0] if r.type == dns.SRV]


def test_srv_records_of_named_ports_as_kubernetes_dns_has_them() -> None:
    book = stateful()
    mesh = MeshResolver(book)
    answer = ask(mesh, "_http._tcp.web.default.svc.cluster.local", dns.SRV)
    assert srv_records(answer) == [(0, 100, 80, "web.default.svc.cluster.local")]
    assert [r.payload.dottedQuad() for r in answer[2]] == ["10.96.0.11"]  # its address too
    # A headless service: one per ready pod, the pod's name and its own virtual IP.
    answer = ask(mesh, "_postgres._tcp.pg.data.svc.cluster.local", dns.SRV)
    assert srv_records(answer) == [(0, 50, 5432, "pg-0.pg.data.svc.cluster.local"),
                                   (0, 50, 5432, "pg-1.pg.data.svc.cluster.local")]
    assert [r.payload.dottedQuad() for r in answer[2]] == [
        book.pod_address_of("data/pg", "pg-0"), book.pod_address_of("data/pg", "pg-1")]
    # The name exists for other types (no data); a wrong port, protocol or service does not.
    assert no_data(ask(mesh, "_postgres._tcp.pg.data.svc.cluster.local", dns.A))
    # UDP is not the mesh's (docs/protocols.md): no SRV for the UDP port.
    for wrong in ("_postgres._udp.pg.data", "_stats._tcp.pg.data", "_stats._udp.pg.data",
                  "_nope._tcp.pg.data", "_postgres._tcp.nope.data"):
        result = ask(mesh, f"{wrong}.svc.cluster.local", dns.SRV)
        assert isinstance(result, Failure) and result.check(AuthoritativeDomainError), wrong
    assert mesh.claims(b"_http._tcp.web.default.svc.cluster.local")


def test_ptr_records_of_the_mesh_addresses() -> None:
    book = stateful()
    mesh = MeshResolver(book)

    def ptr(address: str) -> Any:
        name = ipaddress.ip_address(address).reverse_pointer
        answer = ask(mesh, name, dns.PTR)
        if isinstance(answer, Failure):
            return answer
        return [r.payload.name.name.decode() for r in answer[0] if r.type == dns.PTR]

    assert ptr("10.96.0.11") == ["web.default.svc.cluster.local"]
    assert ptr("fd00::11") == ["six.default.svc.cluster.local"]
    db = book.address_of(book.catalog.services["shop/db"])
    assert db is not None and ptr(db) == ["db.shop.svc.cluster.local"]
    pod = book.pod_address_of("data/pg", "pg-2")  # not ready: still its name
    assert pod is not None and ptr(pod) == ["pg-2.pg.data.svc.cluster.local"]
    assert mesh.claims(ipaddress.ip_address("10.96.0.11").reverse_pointer.encode())
    # Another address is not the mesh's: the upstream's to answer (not NXDOMAIN here).
    other = ptr("192.0.2.1")
    assert isinstance(other, Failure) and not other.check(AuthoritativeDomainError)
    assert not mesh.claims(b"1.2.0.192.in-addr.arpa")
    assert ask(mesh, "11.0.96.10.in-addr.arpa", dns.A).check(DomainError)


@pytest.mark.parametrize(("name", "address"), [
    ("11.0.96.10.in-addr.arpa", "10.96.0.11"),
    ("11.0.96.10.IN-ADDR.ARPA.", "10.96.0.11"),
    ("1." + "0." * 23 + "8.b.d.0.1.0.0.2.ip6.arpa", "2001:db8::1"),
    ("011.0.96.10.in-addr.arpa", None),
    ("0.96.10.in-addr.arpa", None),
    ("256.0.96.10.in-addr.arpa", None),
    ("1._." + "0." * 22 + "8.b.d.0.1.0.0.2.ip6.arpa", None),
    ("1.g." + "0." * 22 + "8.b.d.0.1.0.0.2.ip6.arpa", None),
    ("web.default.svc.cluster.local", None),
])
def test_reverse_address(name: str, address: str | None) -> None:
    assert reverse_address(name) == address


def test_unknown_names() -> None:
    mesh = MeshResolver(addresses())
    assert ask(mesh, "nope.default.svc.cluster.local").check(AuthoritativeDomainError)
    assert ask(mesh, "nope.shop.svc").check(AuthoritativeDomainError)
    outside = ask(mesh, "nope")
    assert outside.check(DomainError) and not outside.check(AuthoritativeDomainError)
    assert ask(mesh, "www.example.org").check(DomainError)
    # "example.com" is the service example of namespace com, because the catalog says so.
    assert addresses_in(ask(mesh, "example.com")) == ["10.96.0.50"]


# -- the server, with a fake upstream ----------------------------------------------------------


class FakeUpstream:
    """An upstream resolver: fixed answers, NXDOMAIN, SERVFAIL, or no answer yet."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []
        self.hanging: list[Deferred[Any]] = []

    def query(self, query: dns.Query, timeout: Any = None) -> Deferred[Any]:
        name = query.name.name
        self.asked.append(name)
        if name.startswith(b"nx."):
            return fail(DNSNameError(name))
        if name.startswith(b"servfail."):
            return fail(DNSServerError(name))
        if name.startswith(b"refused."):
            return fail(DNSQueryRefusedError(name))
        if name.startswith(b"timeout."):
            return fail(defer.TimeoutError(name))
        if name.startswith(b"hang."):
            hanging: Deferred[Any] = Deferred()
            self.hanging.append(hanging)
            return hanging
        if name.startswith(b"huge."):  # 80 texts of 1 000 bytes: over 65 535 bytes
            return succeed(([dns.RRHeader(name, dns.TXT, dns.IN, 60,
                                          dns.Record_TXT(*[b"%03d" % i + b"x" * 247] * 4))
                             for i in range(80)], [], []))
        if name.startswith(b"many."):  # 60 addresses: 989 bytes, too many for 512
            return succeed(([dns.RRHeader(name, dns.A, dns.IN, 60,
                                          dns.Record_A(f"192.0.2.{i + 1}", 60))
                             for i in range(60)], [], []))
        record = dns.Record_A("192.0.2.7", 60)
        return succeed(([dns.RRHeader(name, dns.A, dns.IN, 60, record)], [], []))


class FakeProtocol:
    def __init__(self) -> None:
        self.replies: list[dns.Message] = []
        self.sizes: list[int] = []

    def writeMessage(self, message: dns.Message, address: Any = None) -> None:
        # Through the wire format, as a client would see it.
        data = message.toStr()
        wire = dns.Message()
        wire.fromStr(data)
        self.replies.append(wire)
        self.sizes.append(len(data))


def server(clock: Clock | None = None, cache_size: int = 1024, max_pending: int = 256,
           upstream: FakeUpstream | None = None) -> tuple[MeshDNSServerFactory, FakeUpstream]:
    clock = clock or Clock()
    upstream = upstream or FakeUpstream()
    mesh = MeshResolver(addresses())
    cache = BoundedCache(clock, max_entries=cache_size, skip=mesh.claims)
    factory = MeshDNSServerFactory(clock, mesh, cache, Forwarder(upstream, max_pending))
    return factory, upstream


def query(factory: MeshDNSServerFactory, name: str, kind: int = dns.A) -> dns.Message:
    return sized_query(factory, name, kind)[0]


def sized_query(factory: MeshDNSServerFactory, name: str, kind: int = dns.A,
                edns: int | None = None, udp: bool = True) -> tuple[dns.Message, int]:
    """The reply and its size in bytes, to a query through the wire format as a client
    sends it (with an EDNS OPT record offering ``edns`` bytes, when given)."""
    sent = dns._EDNSMessage(id=7, recDes=True, ednsVersion=None if edns is None else 0,
                            maxSize=edns or 512)
    sent.queries = [dns.Query(name.encode(), kind, dns.IN)]
    message = dns.Message()
    message.fromStr(sent.toStr())
    protocol = FakeProtocol()
    factory.messageReceived(message, protocol, ("127.0.0.1", 5353) if udp else None)
    assert len(protocol.replies) == 1
    return protocol.replies[0], protocol.sizes[0]


def opt_sizes(message: dns.Message) -> list[int]:
    return [record.cls for record in message.additional if record.type == dns.OPT]


def a_records(message: dns.Message) -> list[str]:
    return [a.payload.dottedQuad() for a in message.answers if a.type == dns.A]


def test_server_answers_mesh_names_authoritatively() -> None:
    factory, upstream = server()
    reply = query(factory, "web.default.svc.cluster.local")
    assert (reply.rCode, reply.auth, a_records(reply)) == (dns.OK, True, ["10.96.0.11"])
    assert reply.recAv
    reply = query(factory, "nope.default.svc.cluster.local")
    assert reply.rCode == dns.ENAME
    assert upstream.asked == [], "names of the zone are never forwarded"


def test_server_forwards_other_names_and_keeps_response_codes() -> None:
    factory, _upstream = server()
    reply = query(factory, "www.example.org")
    assert (reply.rCode, reply.auth, a_records(reply)) == (dns.OK, False, ["192.0.2.7"])
    assert query(factory, "nx.example.org").rCode == dns.ENAME
    with capturedLogs() as events:
        assert query(factory, "servfail.example.org").rCode == dns.ESERVER
        assert query(factory, "refused.example.org").rCode == dns.EREFUSED
        assert query(factory, "timeout.example.org").rCode == dns.ESERVER
    assert len(events) == 3 and all("log_failure" not in e for e in events), "one line each"
    # A single label that is not a service goes upstream too (it may be a host there).
    assert a_records(query(factory, "intranet")) == ["192.0.2.7"]


def test_without_upstream_other_names_are_nxdomain() -> None:
    mesh = MeshResolver(addresses())
    factory = MeshDNSServerFactory(Clock(), mesh, BoundedCache(Clock()), None)
    assert query(factory, "www.example.org").rCode == dns.ENAME
    assert a_records(query(factory, "web")) == ["10.96.0.11"]
    assert not query(factory, "web").recAv


def test_forwarded_answers_are_cached_until_their_ttl() -> None:
    clock = Clock()
    factory, upstream = server(clock)
    query(factory, "www.example.org")
    clock.advance(59)
    cached = query(factory, "www.example.org")
    assert a_records(cached) == ["192.0.2.7"]
    assert cached.answers[0].ttl == 1, "the remaining TTL"
    assert upstream.asked == [b"www.example.org"]
    clock.advance(1)
    query(factory, "www.example.org")
    assert upstream.asked == [b"www.example.org"] * 2


def test_the_cache_is_bounded_lru() -> None:
    factory, upstream = server(cache_size=2)
    for name in ["a.example", "b.example", "a.example", "c.example", "a.example", "b.example"]:
        query(factory, name)
    # a was used again before c came, so b (least recently used) was evicted.
    assert upstream.asked == [b"a.example", b"b.example", b"c.example", b"b.example"]
    assert len(factory.cache) == 2


def test_mesh_answers_are_not_cached() -> None:
    factory, _ = server()
    query(factory, "web")
    query(factory, "web.default.svc.cluster.local")
    assert len(factory.cache) == 0


def test_forwarded_queries_in_flight_are_bounded() -> None:
    factory, upstream = server(max_pending=2)
    protocol = FakeProtocol()
    for name in ["hang.one.example", "hang.two.example"]:
        message = dns.Message(id=1)
        message.queries = [dns.Query(name.encode(), dns.A, dns.IN)]
        factory.messageReceived(message, protocol, ("127.0.0.1", 1))
    assert protocol.replies == []
    with capturedLogs():
        assert query(factory, "three.example").rCode == dns.ESERVER
    assert query(factory, "web").rCode == dns.OK, "the mesh's own names still answer"
    upstream.hanging[0].errback(defer.TimeoutError())
    assert a_records(query(factory, "four.example")) == ["192.0.2.7"]


def test_an_any_query_of_another_name_is_forwarded() -> None:
    """ANY (type 255) of a name outside the mesh goes upstream like any other type (the
    server's chain asks it with lookupAllRecords), not SERVFAIL with a failure logged."""
    factory, upstream = server()
    with capturedLogs() as events:
        reply = query(factory, "example.org", dns.ALL_RECORDS)
        gc.collect()  # a failed Deferred that nobody handled logs when it is collected
    assert (reply.rCode, a_records(reply)) == (dns.OK, ["192.0.2.7"])
    assert upstream.asked == [b"example.org"]
    assert [e for e in events if e.get("isError") or "log_failure" in e] == []


def test_a_response_is_never_answered() -> None:
    """A message with QR set is a response, not a query (Twisted's factory would answer it):
    no reply, whatever question it carries."""
    factory, upstream = server()
    protocol = FakeProtocol()
    for name in [b"web", b"example.org"]:
        message = dns.Message(id=9, answer=True)
        message.queries = [dns.Query(name, dns.A, dns.IN)]
        factory.messageReceived(message, protocol, ("127.0.0.1", 53))
    assert protocol.replies == [] and upstream.asked == []
    # Over TCP too (no address: the connection's peer is logged).
    stream = factory.buildProtocol(("127.0.0.1", 53))
    assert stream is not None
    transport = StringTransport()
    stream.makeConnection(transport)
    data = message.toStr()
    stream.dataReceived(struct.pack("!H", len(data)) + data)
    assert transport.value() == b"" and upstream.asked == []
    stream.connectionLost(Failure(ConnectionDone()))


def test_an_empty_query_is_refused_with_a_response() -> None:
    factory, _ = server()
    protocol = FakeProtocol()
    factory.messageReceived(dns.Message(id=3), protocol, ("127.0.0.1", 1))
    [reply] = protocol.replies
    assert (reply.id, reply.answer, reply.rCode) == (3, True, dns.EREFUSED)


class _Looped:
    """A UDP transport whose every datagram comes back to the protocol that sent it, as
    from the address it was sent to: a query spoofed from the server's own address."""

    def __init__(self, protocol: dns.DNSDatagramProtocol, limit: int) -> None:
        self.protocol = protocol
        self.sent = 0
        self.limit = limit

    def write(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        if self.sent < self.limit:
            self.protocol.datagramReceived(data, addr)


def test_a_query_spoofed_from_the_server_itself_gets_one_answer() -> None:
    """The server's answer to itself is a response: dropped, not answered again and again
    (before: a 55-byte datagram kept the edge at 100 % of a CPU)."""
    clock = Clock()
    factory, _ = server(clock)
    protocol = dns.DNSDatagramProtocol(factory, reactor=clock)
    transport = _Looped(protocol, limit=10)
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    message = dns.Message(id=4242, recDes=True)
    message.queries = [dns.Query(b"web.default.svc.cluster.local", dns.A, dns.IN)]
    protocol.datagramReceived(message.toStr(), ("127.0.0.1", 53))
    assert transport.sent == 1


def test_a_udp_reply_without_edns_is_whole_records_in_512_bytes_with_tc() -> None:
    """Twisted's server sent the whole answer (60 records, 989 bytes) over UDP, without TC,
    to a client that had offered 512 (musl 1.2.3 took 30 addresses from the cut read).  Now:
    the records that fit, whole, and TC, so that the client asks again over TCP."""
    factory, _ = server()
    reply, size = sized_query(factory, "many.example.org")
    assert size <= 512 and reply.trunc
    assert 0 < len(reply.answers) < 60
    assert a_records(reply) == [f"192.0.2.{i + 1}" for i in range(len(reply.answers))]
    assert opt_sizes(reply) == [], "no OPT record to a query without one"
    # Over TCP, the whole answer.
    reply, size = sized_query(factory, "many.example.org", udp=False)
    assert (len(reply.answers), reply.trunc, size > 512) == (60, False, True)
    # An answer that fits is untouched.
    reply, size = sized_query(factory, "www.example.org")
    assert (a_records(reply), reply.trunc, opt_sizes(reply)) == (["192.0.2.7"], False, [])


@pytest.mark.parametrize(("offered", "limit", "whole"), [
    (4096, 1232, True),  # more than ours: ours
    (1232, 1232, True),
    (600, 600, False),
    (100, 512, False),  # below 512 counts as 512 (RFC 6891 §6.2.5)
])
def test_an_edns_query_gets_our_opt_and_up_to_the_size_it_offered(
        offered: int, limit: int, whole: bool) -> None:
    factory, _ = server()
    reply, size = sized_query(factory, "many.example.org", edns=offered)
    assert size <= limit
    assert (len(reply.answers) == 60, bool(reply.trunc)) == (whole, not whole)
    assert opt_sizes(reply) == [1232]
    for name in ("web.default.svc.cluster.local", "nx.example.org"):  # the mesh's, an error
        reply, _ = sized_query(factory, name, edns=offered)
        assert opt_sizes(reply) == [1232]
    reply, _ = sized_query(factory, "many.example.org", edns=offered, udp=False)
    assert (len(reply.answers), reply.trunc, opt_sizes(reply)) == (60, False, [1232])


def test_a_query_of_many_questions_is_not_reflected_whole() -> None:
    """The reply copies the questions (a query is answered by its first): 300 of them are
    5 KiB, which went back whole to whatever address the datagram claimed."""
    factory, _ = server()
    message = dns.Message(id=12, recDes=True)
    message.queries = [dns.Query(b"q%d.example.org" % i, dns.A, dns.IN) for i in range(300)]
    protocol = FakeProtocol()
    factory.messageReceived(message, protocol, ("127.0.0.1", 5353))
    [reply], [size] = protocol.replies, protocol.sizes
    assert size <= 512 and reply.trunc and reply.id == 12
    assert [q.name.name for q in reply.queries] == [b"q0.example.org"]


def test_a_tcp_reply_over_65535_bytes_is_cut_to_whole_records_not_lost() -> None:
    """A TCP reply's length prefix is two bytes: Twisted raised on a longer one, and the
    client got SERVFAIL.  Now: the records that fit, and TC."""
    factory, _ = server()
    stream = factory.buildProtocol(("127.0.0.1", 53))
    assert stream is not None
    transport = StringTransport()
    stream.makeConnection(transport)
    message = dns.Message(id=11, recDes=True)
    message.queries = [dns.Query(b"huge.example.org", dns.TXT, dns.IN)]
    data = message.toStr()
    with capturedLogs() as events:
        stream.dataReceived(struct.pack("!H", len(data)) + data)
    out = transport.value()
    assert len(out) >= 2, [e.get("log_format") for e in events]
    (size,) = struct.unpack("!H", out[:2])
    assert size == len(out) - 2
    reply = dns.Message()
    reply.fromStr(out[2:])
    assert (reply.id, reply.rCode, reply.trunc) == (11, dns.OK, 1)
    assert 60 < len(reply.answers) < 80
    stream.connectionLost(Failure(ConnectionDone()))


def _with_opts(*ttls: int) -> dns.Message:
    message = dns.Message(id=13, recDes=True)
    message.queries = [dns.Query(b"web.default.svc.cluster.local", dns.A, dns.IN)]
    message.additional = [dns.RRHeader(b"", dns.OPT, 1232, ttl, dns.UnknownRecord(b""))
                          for ttl in ttls]
    wire = dns.Message()
    wire.fromStr(message.toStr())
    return wire


@pytest.mark.parametrize("udp", [True, False])
def test_edns_version_1_gets_badvers_and_two_opt_records_formerr(udp: bool) -> None:
    """RFC 6891 §6.1.3 and §6.1.1 (before: answered as if version 0, or as one OPT)."""
    factory, _ = server()
    for ttls, rcode, extended in [((1 << 16,), dns.OK, 1), ((0, 0), dns.EFORMAT, 0),
                                  ((1 << 15,), dns.OK, 0)]:  # (the DO bit: version 0)
        protocol = FakeProtocol()
        factory.messageReceived(_with_opts(*ttls), protocol, ("127.0.0.1", 53) if udp else None)
        [reply] = protocol.replies
        [opt] = [record for record in reply.additional if record.type == dns.OPT]
        assert (reply.rCode, opt.ttl >> 24) == (rcode, extended)
        assert bool(reply.answers) == (rcode == dns.OK and not extended)


def _records(prefix: str, count: int) -> list[dns.RRHeader]:
    return [dns.RRHeader(f"{prefix}{i}.example.org".encode(), dns.A, dns.IN, 60,
                         dns.Record_A(f"198.51.100.{i % 250 + 1}", 60)) for i in range(count)]


@settings(max_examples=60, deadline=None)
@given(answers=st.integers(0, 40), authority=st.integers(0, 10), additional=st.integers(0, 40),
       edns=st.booleans(), limit=st.integers(512, 1232))
def test_fit_records_keeps_the_records_that_fit_whole_in_order(
        answers: int, authority: int, additional: int, edns: bool, limit: int) -> None:
    counts = (answers, authority)
    records = [*_records("an", answers), *_records("ns", authority), *_records("ad", additional)]
    opt = [dns.RRHeader(b"", dns.OPT, 1232, 0, dns.UnknownRecord(b""))] if edns else []

    def first(count: int) -> dns.Message:
        """A response with the first ``count`` records, in their sections."""
        message = dns.Message(id=1, answer=True, maxSize=0)
        message.queries = [dns.Query(b"q.example.org", dns.A, dns.IN)]
        kept = records[:count]
        message.answers = kept[:answers]
        message.authority = kept[answers:sum(counts)]
        message.additional = [*kept[sum(counts):], *opt]
        return message

    message = first(len(records))
    fit_records(message, limit)
    data = message.toStr()
    assert len(data) <= limit
    wire = dns.Message()
    wire.fromStr(data)  # whole records: it decodes
    kept = [*wire.answers, *wire.authority, *(r for r in wire.additional if r.type != dns.OPT)]
    assert [r.name for r in kept] == [r.name for r in records[:len(kept)]]
    assert opt_sizes(wire) == ([1232] if edns else [])
    assert bool(wire.trunc) == (len(kept) < sum(counts)), "TC: an answer or authority went"
    if len(kept) < len(records):  # as many as fit: one more does not
        assert len(first(len(kept) + 1).toStr()) > limit


def test_bounded_cache_refuses_a_zero_size() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        BoundedCache(Clock(), max_entries=0)


# -- config and service --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("10.0.0.2", ("10.0.0.2", 53)), ("10.0.0.2:5353", ("10.0.0.2", 5353)),
     ("[fd00::2]:53", ("fd00::2", 53)), ("fd00::2", ("fd00::2", 53)), ("[::1]", ("::1", 53))],
)
def test_parse_host_port(text: str, parsed: tuple[str, int]) -> None:
    assert parse_host_port(text, 53, "--dns") == parsed


@pytest.mark.parametrize("text", ["host.example", "10.0.0.2:x", "[::1", "[::1]x", "1.2.3.4:70000"])
def test_parse_host_port_refuses(text: str) -> None:
    with pytest.raises(DNSConfigError):
        parse_host_port(text, 53, "--dns")


def test_dns_config_refuses_nonsense() -> None:
    with pytest.raises(DNSConfigError):
        DNSConfig(address="nope")
    with pytest.raises(DNSConfigError):
        DNSConfig(upstream_timeout=())
    with pytest.raises(DNSConfigError):
        DNSConfig(cache_size=0)


def test_service_binds_udp_and_tcp_on_one_port_and_unbinds() -> None:
    reactor = UDPMemoryReactor()
    config = DNSConfig(address="169.254.96.16", port=53, upstreams=(("10.0.0.2", 53),))
    service = DNSService(reactor, build_dns_factory(reactor, addresses(), config), config)
    service.privilegedStartService()
    service.startService()
    assert [(port, interface) for port, _, interface, _ in reactor.udp] == [(53, "169.254.96.16")]
    assert [(p, i) for p, _, _, i in reactor.tcpServers] == [(53, "169.254.96.16")]
    assert service.description == "169.254.96.16:53"
    service.stopService()
    assert reactor.udp[0][3].stopped and service.ports == []


def test_tcp_connections_are_bounded_and_refusals_summarised() -> None:
    clock = Clock()
    factory, _ = server(clock)
    factory.max_tcp_connections = 1
    first = factory.buildProtocol(None)
    assert first is not None
    factory.connections.append(first)
    with capturedLogs() as events:
        for _ in range(50):  # a local client hammering: one warning a minute, not fifty
            assert factory.buildProtocol(None) is None
        clock.advance(61)
        assert factory.buildProtocol(None) is None
    warned = [e for e in events if "refusing TCP connections" in e.get("log_format", "")]
    assert [e["refused"] for e in warned] == [1, 51]


def test_no_data_is_authoritative_and_rd_is_echoed() -> None:
    """Without an upstream the server does not recurse (no RA): an empty answer then needs
    AA, or glibc's getaddrinfo(AF_INET6) of an IPv4 service fails with EAI_AGAIN."""
    factory = MeshDNSServerFactory(Clock(), MeshResolver(addresses()),
                                   BoundedCache(Clock()), None)
    reply = query(factory, "web.default.svc.cluster.local", dns.AAAA)
    assert (reply.rCode, reply.answers, reply.auth, reply.recAv) == (dns.OK, [], True, False)
    assert [r.type for r in reply.authority] == [dns.SOA]
    assert reply.recDes  # the query asked for recursion: RD is copied back
    assert query(factory, "default.svc.cluster.local").rCode == dns.OK


# -- real sockets ----------------------------------------------------------------------------------


class _Fixed(common.ResolverBase):
    """The fake upstream DNS server's data: www.example.org → 192.0.2.80, else NXDOMAIN."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        if name.lower() == b"www.example.org" and type == dns.A:
            record = dns.Record_A("192.0.2.80", 30)
            return succeed(([dns.RRHeader(name, dns.A, dns.IN, 30, record, auth=True)], [], []))
        return fail(AuthoritativeDomainError(name))


def run_isolated(scenario: Callable[[Any], Deferred[Any]], timeout: float = 20.0) -> Any:
    """Run ``scenario(reactor)`` to completion on a reactor of its own (never installed, so
    nothing another test left on the global one matters here, and nothing of ours stays)."""
    from twisted.internet.selectreactor import SelectReactor

    reactor = SelectReactor()
    outcome: list[Any] = []

    def start() -> None:
        done = defer.maybeDeferred(scenario, reactor)
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    guard = reactor.callLater(timeout, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    leftovers = [call for call in reactor.getDelayedCalls() if call.active()]
    for call in leftovers:
        call.cancel()
    reactor.removeAll()
    assert outcome, f"the scenario did not finish within {timeout}s"
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert not leftovers, f"timers left behind: {leftovers}"
    return result


def test_real_sockets_mesh_names_forwarding_and_nxdomain_over_udp_and_tcp() -> None:
    """Our server and a fake upstream server, both on 127.0.0.1 with free ports, queried
    with twisted.names' client over UDP and TCP."""

    @defer.inlineCallbacks
    def scenario(reactor: Any) -> Any:
        fake = common_server(_Fixed())
        upstream = reactor.listenUDP(0, dns.DNSDatagramProtocol(fake, reactor=reactor),
                                     interface="127.0.0.1")
        config = DNSConfig(address="127.0.0.1", port=0,
                           upstreams=(("127.0.0.1", upstream.getHost().port),))
        service = DNSService(reactor, build_dns_factory(reactor, addresses(), config), config)
        service.startService()
        port = service.ports[0].getHost().port
        resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor, timeout=(2,))

        @defer.inlineCallbacks
        def both(name: str) -> Any:
            query = [dns.Query(name.encode(), dns.A, dns.IN)]
            over_udp = yield resolver.queryUDP(query)
            over_tcp = yield resolver.queryTCP(query)
            return over_udp, over_tcp

        try:
            for reply in (yield both("cart.shop.svc.cluster.local")):
                assert (reply.rCode, a_records(reply), reply.auth) == (dns.OK, ["10.96.0.40"], True)
            for reply in (yield both("www.example.org")):
                assert (reply.rCode, a_records(reply)) == (dns.OK, ["192.0.2.80"])
            for name in ("nope.example.org", "nope.default.svc.cluster.local"):
                for reply in (yield both(name)):
                    assert reply.rCode == dns.ENAME
        finally:
            # Close the client's TCP connection and wait until the server has seen it go.
            for protocol in list(resolver.connections):
                protocol.transport.loseConnection()
            for _ in range(200):
                if not service.factory.connections and not resolver.connections:
                    break
                yield deferLater(reactor, 0.01, lambda: None)
            yield service.stopService()
            yield upstream.stopListening()
        assert not service.factory.connections, "the server closed the TCP connection"


def common_server(resolver: common.ResolverBase) -> Any:
    from twisted.names import server as names_server

    return names_server.DNSServerFactory(authorities=[resolver])
