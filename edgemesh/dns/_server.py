"""
The edge's DNS server (twisted.names) on one address and port, over UDP and TCP.

EdgeMesh v1 answered on a link-local address (169.254.96.16:53) that kubelet/edgecore hand
to pods as their nameserver; the same works here (the address must exist on an interface,
e.g. a dummy device).  Names of the mesh come from the live catalog; others go to the
upstream resolvers given, or get NXDOMAIN when there are none.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.names import client, dns, server
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSServerError,
    DNSUnknownError,
    DomainError,
)
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from ..transports import DEFAULT_BACKLOG
from ._config import DNSConfig
from ._resolver import AddressBook, BoundedCache, Forwarder, MeshResolver


class DNSHost(Protocol):
    """What the DNS server needs of the node it attaches to (roles' ``EdgeNode`` is one; it
    is also the ``IServiceCollection`` the server joins)."""

    @property
    def reactor(self) -> Any: ...

log = Logger()

_RCODES: list[tuple[type[Exception], int]] = [
    (DNSServerError, dns.ESERVER),
    (DNSQueryRefusedError, dns.EREFUSED),
    (DNSFormatError, dns.EFORMAT),
    (DNSNotImplementedError, dns.ENOTIMP),
    (DNSUnknownError, dns.ESERVER),
    (DNSNameError, dns.ENAME),
    (AuthoritativeDomainError, dns.ENAME),
    (DomainError, dns.ENAME),
]
"""Twisted's resolver errors are all DomainErrors, and its server would answer NXDOMAIN to
an upstream SERVFAIL; this keeps each response code as it was."""


UDP_PLAIN_LIMIT = 512
"""The largest UDP reply to a query without EDNS (RFC 1035 §4.2.1)."""
UDP_EDNS_LIMIT = 1232
"""The largest UDP reply to an EDNS query, whatever size it offers, and the size our own OPT
record offers: DNS Flag Day 2020's, which keeps a reply out of IP fragments."""
TCP_LIMIT = 65535
"""A TCP reply's length prefix is two bytes (beyond it Twisted raises: the client got
SERVFAIL)."""
_BADVERS = 16
"""The extended response code of RFC 6891 §9 (twisted.names has no name for it)."""
REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two warnings of refused DNS TCP connections (with the count)."""


def _opts(message: dns.Message) -> list[dns.RRHeader]:
    """The message's EDNS OPT records (twisted's ``Message`` leaves them in the additional
    section; an OPT's class is the payload size the client can take)."""
    return [record for record in message.additional if record.type == dns.OPT]


def fit_records(message: dns.Message, limit: int) -> None:
    """Cut ``message`` to the whole records that fit in ``limit`` bytes: the answers first,
    then the authority, then the additional records; an OPT record always stays.  TC is set
    when an answer or authority record had to go, not for additional ones alone (RFC 2181
    §9).  Twisted's own cut (``maxSize``) chops bytes in the middle of a record, under
    counts that still claim every record: a malformed message."""
    message.maxSize = 0  # (encode must not cut while sizes are tried)
    if len(message.toStr()) <= limit:
        return
    answers, authority = list(message.answers), list(message.authority)
    opt = _opts(message)
    records = [*answers, *authority, *(r for r in message.additional if r.type != dns.OPT)]

    def keep(count: int) -> None:
        kept = records[:count]
        message.answers = kept[:len(answers)]
        message.authority = kept[len(answers):len(answers) + len(authority)]
        message.additional = [*kept[len(answers) + len(authority):], *opt]

    # The size grows with every record kept: the most that fit, in log2(n) encodings.
    low, high = 0, len(records)
    while low < high:
        middle = (low + high + 1) // 2
        keep(middle)
        if len(message.toStr()) <= limit:
            low = middle
        else:
            high = middle - 1
    keep(low)
    message.trunc = int(low < len(answers) + len(authority))
    if low == 0 and len(message.toStr()) > limit:
        # Too many questions, echoed (a query is answered by its first): the first alone
        # fits, at most 259 bytes.  Else a query of 8 KiB was reflected whole.
        message.queries = message.queries[:1]
        message.trunc = 1


class _TCPProtocol(dns.DNSProtocol, TimeoutMixin):
    """DNS over TCP with an idle timeout (a client may not hold a connection open forever)."""

    def __init__(self, controller: Any, reactor: Any, idle_timeout: float) -> None:
        super().__init__(controller, reactor=reactor)  # type: ignore[no-untyped-call]
        self.callLater = reactor.callLater  # type: ignore[method-assign]  # TimeoutMixin's clock
        self._idle_timeout = idle_timeout

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self.setTimeout(self._idle_timeout)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()  # type: ignore[no-untyped-call]
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class MeshDNSServerFactory(server.DNSServerFactory):
    """``DNSServerFactory`` with the reactor passed on, response codes kept, failures logged
    in one line, a bound on TCP connections, and no reply ever to a response."""

    def __init__(
        self,
        reactor: Any,
        mesh: MeshResolver,
        cache: BoundedCache,
        forwarder: Forwarder | None,
        max_tcp_connections: int = 128,
        tcp_idle_timeout: float = 30.0,
    ) -> None:
        clients = [forwarder] if forwarder is not None else None
        super().__init__(  # type: ignore[no-untyped-call]
            authorities=[mesh], caches=[cache], clients=clients
        )
        self.reactor = reactor
        self.mesh = mesh
        self.cache = cache
        self.forwarder = forwarder
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_refused = 0
        self._tcp_refused_said = -REFUSAL_LOG_INTERVAL

    def messageReceived(self, message: dns.Message, proto: Any, address: Any = None) -> None:
        # Twisted's factory takes a response (QR set) for a query, and its refusals and
        # not-implemented answers echo the query with QR unset.  One datagram spoofed from
        # the server's own address then had it answer itself forever (an edge at 100 % of a
        # CPU from one 55-byte packet), or two servers bounce it between them.  A response is
        # never a query (dropped here) and everything sent is a response (sendReply).
        if message.answer:
            log.debug("DNS: dropped a response from {peer} (not a query)",
                      peer=address or proto.transport.getPeer())  # (TCP: no address)
            return
        # Twisted's server never limits a UDP reply (Twisted #6949: the query's maxSize is
        # 0): a 60-record answer went out as one 989-byte datagram to a client that had
        # offered 512, without TC to send it to TCP (musl 1.2.3 took 30 addresses from the
        # cut read, unaware).  Marked here (UDP comes with an address), the limit is applied
        # in _responseFromMessage and sendReply.
        message.maxSize = UDP_PLAIN_LIMIT if address is not None else 0
        super().messageReceived(message, proto, address)  # type: ignore[no-untyped-call]

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        opts = _opts(message)
        if len(opts) > 1 or (opts and (opts[0].ttl >> 16) & 0xFF != 0):
            # RFC 6891 §6.1.1: two OPT records are a format error; §6.1.3: an EDNS version
            # other than 0 gets BADVERS (16: its high bits go in our OPT's TTL), so that the
            # client asks again in version 0.
            bad_version = len(opts) == 1
            response = self._responseFromMessage(
                message, rCode=dns.OK if bad_version else dns.EFORMAT)
            if bad_version:
                response.additional[-1].ttl = (_BADVERS >> 4) << 24
            self.sendReply(protocol, response, address)
            return
        super().handleQuery(message, protocol, address)  # type: ignore[no-untyped-call]

    def _responseFromMessage(
        self,
        message: dns.Message,
        rCode: int = dns.OK,
        answers: list[dns.RRHeader] | None = None,
        authority: list[dns.RRHeader] | None = None,
        additional: list[dns.RRHeader] | None = None,
    ) -> dns.Message:
        response: dns.Message = super()._responseFromMessage(  # type: ignore[no-untyped-call]
            message, rCode, answers, authority, additional)
        response.recDes = message.recDes  # RFC 1035 §4.1.1: RD is copied into the response
        if not response.auth and any(r.isAuthoritative() for r in authority or ()):
            # A negative answer of the mesh's zone (its SOA in the authority section) is
            # authoritative too; Twisted looks at the answers only.
            response.auth = True
        opts = _opts(message)
        if opts:
            # An EDNS query gets an OPT record back (RFC 6891 §7), offering our own size;
            # over UDP it may take up to the size it offered, within ours.
            ours = dns.RRHeader(b"", dns.OPT, UDP_EDNS_LIMIT, 0, dns.UnknownRecord(b""))
            kept = [record for record in response.additional if record.type != dns.OPT]
            response.additional = [*kept, ours]  # (one OPT: never an upstream's)
            if message.maxSize:
                response.maxSize = min(max(opts[0].cls, UDP_PLAIN_LIMIT), UDP_EDNS_LIMIT)
        return response

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        message.answer = True  # (the echoed query of a refusal or ENOTIMP, too)
        fit_records(message, (message.maxSize or UDP_PLAIN_LIMIT) if address is not None
                    else TCP_LIMIT)
        super().sendReply(protocol, message, address)  # type: ignore[no-untyped-call]

    def buildProtocol(self, addr: Any) -> _TCPProtocol | None:
        if len(self.connections) >= self.max_tcp_connections:
            self.tcp_refused += 1
            now = self.reactor.seconds()
            if now - self._tcp_refused_said >= REFUSAL_LOG_INTERVAL:
                # Once a minute at most: a local client could flood the log otherwise.
                log.warn("DNS: refusing TCP connections: {count} open, at most {limit} "
                         "({refused} refused so far)", count=len(self.connections),
                         limit=self.max_tcp_connections, refused=self.tcp_refused)
                self._tcp_refused_said = now
            return None
        protocol = _TCPProtocol(self, self.reactor, self.tcp_idle_timeout)
        protocol.factory = self
        return protocol

    def gotResolverError(self, failure: Failure, protocol: Any, message: dns.Message,
                         address: Any) -> None:
        for kind, code in _RCODES:
            if failure.check(kind):
                rcode = code
                break
        else:
            rcode = dns.ESERVER
        if rcode != dns.ENAME:
            query = message.queries[0] if message.queries else None
            log.info("DNS: {name} ({type}): {error}",
                     name=_query_name(query), type=_query_type(query),
                     error=failure.getErrorMessage() or repr(failure.value))
        response = self._responseFromMessage(message=message, rCode=rcode)
        self.sendReply(protocol, response, address)


def _query_name(query: dns.Query | None) -> str:
    return "?" if query is None else query.name.name.decode("ascii", "replace")


def _query_type(query: dns.Query | None) -> str:
    return "?" if query is None else dns.QUERY_TYPES.get(query.type, str(query.type))


def build_dns_factory(reactor: Any, addresses: AddressBook,
                      config: DNSConfig) -> MeshDNSServerFactory:
    mesh = MeshResolver(addresses, ttl=config.ttl)
    cache = BoundedCache(reactor, max_entries=config.cache_size, max_ttl=config.max_cache_ttl,
                         skip=mesh.claims)
    forwarder = None
    if config.upstreams:
        upstream = client.Resolver(servers=list(config.upstreams), reactor=reactor,
                                   timeout=config.upstream_timeout)
        forwarder = Forwarder(upstream, max_pending=config.max_forwarded)
    return MeshDNSServerFactory(reactor, mesh, cache, forwarder,
                                max_tcp_connections=config.max_tcp_connections)


class DNSService(Service):
    """Listens on ``config.address:config.port``, UDP and TCP.  Binds in
    privilegedStartService (port 53 needs root) and raises there when it cannot, so that a
    taken port stops the edge at start."""

    def __init__(self, reactor: Any, factory: MeshDNSServerFactory, config: DNSConfig) -> None:
        self.reactor = reactor
        self.factory = factory
        self.config = config
        self.ports: list[IListeningPort] = []

    @property
    def description(self) -> str:
        host = self.config.address
        return f"[{host}]:{self.config.port}" if ":" in host else f"{host}:{self.config.port}"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        if not self.ports:
            self._listen()
        super().startService()  # type: ignore[no-untyped-call]

    def _listen(self) -> None:
        config = self.config
        udp = dns.DNSDatagramProtocol(self.factory, reactor=self.reactor)
        ports: list[IListeningPort] = []
        try:
            ports.append(self.reactor.listenUDP(config.port, udp, interface=config.address))
            # TCP on the port UDP got (they differ only when port 0 asked for any).
            port = getattr(ports[0].getHost(), "port", 0) or config.port
            ports.append(self.reactor.listenTCP(port, self.factory, backlog=DEFAULT_BACKLOG,
                                                interface=config.address))
        except BaseException:
            for bound in ports:
                bound.stopListening()
            raise
        self.ports = ports
        log.info("DNS on {where} (UDP and TCP); upstream: {upstream}",
                 where=self.description,
                 upstream=", ".join(f"{h}:{p}" for h, p in config.upstreams) or "none (NXDOMAIN)")

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        ports, self.ports = self.ports, []
        waits = [d for d in (port.stopListening() for port in ports) if isinstance(d, Deferred)]
        return DeferredList(waits) if waits else None


def attach_dns(node: DNSHost, config: DNSConfig, addresses: AddressBook) -> DNSService:
    """Add the DNS server to ``node``, answering from ``addresses`` (its live catalog)."""
    service = DNSService(node.reactor, build_dns_factory(node.reactor, addresses, config), config)
    service.setServiceParent(node)  # type: ignore[no-untyped-call]
    return service
