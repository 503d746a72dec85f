"""
The resolvers behind the edge's DNS server, in the order the server asks them:

1. ``MeshResolver``: the mesh's own names, from the live catalog (so from the persisted
   catalog when the cloud is unreachable), answered authoritatively;
2. ``BoundedCache``: answers forwarded earlier, until their TTL runs out; LRU-bounded;
3. ``Forwarder``: the configured upstream resolvers, with a bound on queries in flight.

A resolver that does not know a name fails with ``DomainError`` and the next one is
asked; ``AuthoritativeDomainError`` (an unknown name inside the mesh's zone) stops there.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DNSServerError, DomainError

from ..catalog import CLUSTER_DOMAIN, Catalog, Service
from ._names import NameClass, classify, reverse_address

DEFAULT_TTL = 5
"""Seconds a mesh answer may be cached (as CoreDNS's kubernetes plugin): short, so that
a changed clusterIP reaches apps quickly."""

Result = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


class AddressBook(Protocol):
    """What the DNS server needs of the mesh: the live catalog, and each service's address
    (clusterIP, or the virtual IP of a headless service)."""

    @property
    def catalog(self) -> Catalog: ...

    def address_of(self, service: Service) -> str | None: ...

    def pod_address_of(self, key: str, hostname: str) -> str | None:
        """The virtual IP of one pod of a headless service, if it has one."""
        ...


def _text(name: bytes) -> str:
    return name.decode("ascii", "replace")


class MeshResolver(common.ResolverBase):
    """A records (AAAA for an IPv6 clusterIP) for the services of the live catalog, and for
    the pods of its headless services that have a hostname (their own virtual IPs); SRV
    records for their named ports, and PTR records for those addresses, as Kubernetes DNS
    has them (so that a reverse lookup of a mesh address is answered offline too)."""

    def __init__(self, addresses: AddressBook, ttl: int = DEFAULT_TTL) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.addresses = addresses
        self.ttl = ttl
        self._names_of: dict[str, str] = {}
        self._names_for: Catalog | None = None
        self._namespaces: set[str] = set()
        self._namespaces_for: Catalog | None = None

    def claims(self, name: bytes) -> bool:
        """Whether the mesh answers ``name`` itself (then no upstream answer is cached)."""
        text = _text(name)
        kind = classify(text)
        if kind.in_zone:
            return True
        catalog = self.addresses.catalog
        if kind.key is not None and catalog.service(kind.key) is not None:
            return True
        if kind.pod is not None and catalog.pod_service(*kind.pod) is not None:
            return True
        return self._name_of(text) is not None

    def _address(self, kind: NameClass, cls: int) -> tuple[bool, str | None]:
        """(the mesh knows the name classified as ``kind``, its address if it has one)."""
        if cls != dns.IN:
            return False, None
        catalog = self.addresses.catalog
        service = catalog.service(kind.key) if kind.key is not None else None
        if service is not None:
            return True, self.addresses.address_of(service)
        if kind.pod is not None and catalog.pod_service(*kind.pod) is not None:
            return True, self.addresses.pod_address_of(*kind.pod)
        return False, None

    def _name_of(self, reverse: str) -> str | None:
        """The mesh's name of the address a PTR name stands for, if the address is one of
        the mesh's (a clusterIP or a virtual IP)."""
        address = reverse_address(reverse)
        if address is None:
            return None
        catalog = self.addresses.catalog
        if catalog is not self._names_for:  # (a catalog never changes: once per catalog)
            names: dict[str, str] = {}
            for service in sorted(catalog.services.values(), key=lambda s: s.key):
                fqdn = _fqdn(service)
                found = self.addresses.address_of(service)
                if found is not None:
                    names.setdefault(str(ipaddress.ip_address(found)), fqdn)
                for hostname in _hostnames(service):
                    pod = self.addresses.pod_address_of(service.key, hostname)
                    if pod is not None:
                        names.setdefault(pod, f"{hostname}.{fqdn}")
            self._names_of, self._names_for = names, catalog
        return self._names_of.get(address)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Result]:
        text = _text(name)
        kind = classify(text)
        if cls == dns.IN and kind.srv is not None:
            return self._service_records(name, type, *kind.srv)
        if cls == dns.IN and type in (dns.PTR, dns.ALL_RECORDS):
            target = self._name_of(text)
            if target is not None:
                record = dns.Record_PTR(target, self.ttl)
                return succeed(([dns.RRHeader(name, dns.PTR, dns.IN, self.ttl, record,
                                              auth=True)], [], []))
        known, address = self._address(kind, cls)
        if not known:
            if kind.in_zone and cls == dns.IN and self._has_names_below(text):
                # cluster.local, svc.cluster.local, NS.svc.cluster.local: names exist below
                # them (RFC 8020: NXDOMAIN would say none does).
                return succeed(([], [self._zone_soa()], []))
            if kind.in_zone:
                return fail(AuthoritativeDomainError(name))
            return fail(DomainError(name))
        answers = self._address_records(name, address, type)
        # No record of that type (AAAA of an IPv4 service, MX, ...): NOERROR with no answer,
        # so that resolvers do not conclude the name does not exist, and with the zone's SOA
        # (RFC 2308), which makes it authoritative: glibc takes an empty answer without AA
        # nor RA for a lame server ("Temporary failure in name resolution" for AAAA).
        return succeed((answers, [] if answers else [self._zone_soa()], []))

    def _zone_soa(self) -> dns.RRHeader:
        """The SOA of the mesh's zone, as CoreDNS's kubernetes plugin gives it: the
        authority section of a negative answer (its MINIMUM is how long to cache one)."""
        domain = CLUSTER_DOMAIN.encode()
        record = dns.Record_SOA(mname=b"ns.dns." + domain, rname=b"hostmaster." + domain,
                                serial=self.addresses.catalog.revision & 0xFFFFFFFF,
                                refresh=7200, retry=1800, expire=86400,
                                minimum=self.ttl, ttl=self.ttl)
        return dns.RRHeader(domain, dns.SOA, dns.IN, self.ttl, record, auth=True)

    def _has_names_below(self, text: str) -> bool:
        """``text`` is an empty non-terminal of the mesh's zone: the zone itself, its
        ``svc``, or a namespace of the catalog."""
        labels = text.lower().rstrip(".").split(".")
        zone = CLUSTER_DOMAIN.split(".")
        if labels[-len(zone):] != zone:
            return False
        above = labels[:-len(zone)]
        if above in ([], ["svc"]):
            return True
        if len(above) != 2 or above[1] != "svc":
            return False
        catalog = self.addresses.catalog
        if catalog is not self._namespaces_for:  # (once per catalog, not per query)
            self._namespaces = {service.namespace for service in catalog.services.values()}
            self._namespaces_for = catalog
        return above[0] in self._namespaces

    def _address_records(self, name: bytes, address: str | None,
                         type: int) -> list[dns.RRHeader]:
        """The A (or AAAA) record of ``address`` when ``type`` asks for it."""
        if address is None:
            return []
        version = ipaddress.ip_address(address).version
        record: dns.Record_A | dns.Record_AAAA
        if version == 4 and type in (dns.A, dns.ALL_RECORDS):
            record, record_type = dns.Record_A(address, self.ttl), dns.A
        elif version == 6 and type in (dns.AAAA, dns.ALL_RECORDS):
            record, record_type = dns.Record_AAAA(address, self.ttl), dns.AAAA
        else:
            return []
        return [dns.RRHeader(name, record_type, dns.IN, self.ttl, record, auth=True)]

    def _service_records(self, name: bytes, type: int, key: str, port_name: str,
                         protocol: str) -> Deferred[Result]:
        """SRV records of a named port: the service's name and port; a headless service's,
        one per pod with a hostname and an address (its name), as Kubernetes DNS has them.
        Their addresses go with them, in the additional section."""
        service = self.addresses.catalog.service(key)
        ports = [] if service is None else [
            p for p in service.ports if p.name == port_name and p.protocol == protocol]
        if service is None or not ports:
            return fail(AuthoritativeDomainError(name))
        fqdn = _fqdn(service)
        if service.cluster_ip is not None:
            targets = [(fqdn, self.addresses.address_of(service))]
        else:
            targets = [(f"{hostname}.{fqdn}", self.addresses.pod_address_of(key, hostname))
                       for hostname in _hostnames(service, ready=True)]
            targets = [(target, address) for target, address in targets if address]
        answers: list[dns.RRHeader] = []
        additional: list[dns.RRHeader] = []
        if type in (dns.SRV, dns.ALL_RECORDS):
            weight = max(100 // max(len(targets), 1), 1)
            for target, address in targets:
                record = dns.Record_SRV(0, weight, ports[0].port, target, self.ttl)
                answers.append(dns.RRHeader(name, dns.SRV, dns.IN, self.ttl, record, auth=True))
                additional += self._address_records(target.encode(), address, dns.ALL_RECORDS)
        return succeed((answers, [] if answers else [self._zone_soa()], additional))


def _fqdn(service: Service) -> str:
    """``name.namespace.svc.cluster.local``."""
    return f"{service.name}.{service.namespace}.svc.{CLUSTER_DOMAIN}"


def _hostnames(service: Service, ready: bool = False) -> list[str]:
    """The hostnames of a headless service's endpoints (a StatefulSet's pods; only the
    ready ones' when ``ready``), sorted."""
    if service.cluster_ip is not None:
        return []
    return sorted({endpoint.hostname for endpoints in service.endpoints.values()
                   for endpoint in endpoints
                   if endpoint.hostname is not None and (endpoint.ready or not ready)})


class BoundedCache(common.ResolverBase):
    """Forwarded answers until the smallest TTL in them runs out (at most ``max_ttl``);
    at most ``max_entries``, least recently used evicted first.  No timers: an expired
    entry is dropped when it is next looked up or evicted."""

    def __init__(
        self,
        clock: IReactorTime,
        max_entries: int = 1024,
        max_ttl: int = 300,
        skip: Callable[[bytes], bool] = lambda name: False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._skip = skip
        self._entries: OrderedDict[dns.Query, tuple[float, float, Result]] = OrderedDict()
        """query → (stored at, expires at, result)"""

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return True  # DNSServerFactory tests ``if self.cache``: an empty cache is still one

    def cacheResult(self, query: dns.Query, payload: Result) -> None:
        """Called by the server with every successful answer (see DNSServerFactory)."""
        records = [*payload[0], *payload[1], *payload[2]]
        if not records or self._skip(query.name.name):
            return
        ttl = min(self.max_ttl, *(record.ttl for record in records))
        if ttl <= 0:
            return
        now = self._clock.seconds()
        entries = self._entries
        entries[query] = (now, now + ttl, (list(payload[0]), list(payload[1]), list(payload[2])))
        entries.move_to_end(query)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Result]:
        query = dns.Query(name, type, cls)
        entry = self._entries.get(query)
        if entry is None:
            return fail(DomainError(name))
        stored, expires, (answers, authority, additional) = entry
        now = self._clock.seconds()
        if now >= expires:
            del self._entries[query]
            return fail(DomainError(name))
        self._entries.move_to_end(query)
        elapsed = int(now - stored)

        def aged(records: list[dns.RRHeader]) -> list[dns.RRHeader]:
            return [
                dns.RRHeader(r.name.name, r.type, r.cls, max(0, r.ttl - elapsed), r.payload,
                             auth=False)
                for r in records
            ]

        return succeed((aged(answers), aged(authority), aged(additional)))


class Forwarder(common.ResolverBase):
    """The upstream resolvers, with at most ``max_pending`` forwarded queries in flight;
    beyond that the server answers SERVFAIL at once instead of queueing without bound.

    A resolver (``lookup*`` too, not only ``query``): the server's chain asks ANY queries
    with ``lookupAllRecords``, which a bare ``query`` object lacked (SERVFAIL for every ANY
    query of a name outside the mesh, and an unhandled failure logged each time)."""

    def __init__(self, upstream: Any, max_pending: int = 256) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.upstream = upstream
        self.max_pending = max_pending
        self.pending = 0

    def query(self, query: dns.Query, timeout: Any = None) -> Deferred[Result]:
        if self.pending >= self.max_pending:
            return fail(DNSServerError(f"more than {self.max_pending} forwarded queries in flight"))
        self.pending += 1

        def done(result: object) -> object:
            self.pending -= 1
            return result

        answer: Deferred[Result] = self.upstream.query(query, timeout)
        answer.addBoth(done)
        return answer

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Result]:
        return self.query(dns.Query(name, type, cls), timeout)
