"""The edge's DNS server: service names from the live (persisted) catalog, other names
forwarded upstream; twisted.names over UDP and TCP."""

from ._config import DEFAULT_DNS_PORT, DNSConfig, DNSConfigError, parse_host_port
from ._names import NameClass, classify, search_expansions
from ._resolver import DEFAULT_TTL, AddressBook, BoundedCache, Forwarder, MeshResolver
from ._server import DNSService, MeshDNSServerFactory, attach_dns, build_dns_factory

__all__ = [
    "DEFAULT_DNS_PORT",
    "DEFAULT_TTL",
    "AddressBook",
    "BoundedCache",
    "DNSConfig",
    "DNSConfigError",
    "DNSService",
    "Forwarder",
    "MeshDNSServerFactory",
    "MeshResolver",
    "NameClass",
    "attach_dns",
    "build_dns_factory",
    "classify",
    "parse_host_port",
    "search_expansions",
]
