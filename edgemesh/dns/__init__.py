"""The edge's DNS server: service names from the live (persisted) catalog, other names
forwarded upstream; twisted.names over UDP and TCP."""

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._config import DEFAULT_DNS_PORT, DNSConfig, DNSConfigError, parse_host_port

if TYPE_CHECKING:
    from ._names import NameClass, classify, reverse_address, search_expansions
    from ._resolver import DEFAULT_TTL, AddressBook, BoundedCache, Forwarder, MeshResolver
    from ._server import DNSService, MeshDNSServerFactory, attach_dns, build_dns_factory

# twisted.names (~0.8 MiB of RssAnon), and the service names' rules, are imported when --dns
# is given, not by --dns's options.
__getattr__ = lazy_names(__name__, {
    "._names": ("NameClass", "classify", "reverse_address", "search_expansions"),
    "._resolver": ("DEFAULT_TTL", "AddressBook", "BoundedCache", "Forwarder", "MeshResolver"),
    "._server": ("DNSService", "MeshDNSServerFactory", "attach_dns", "build_dns_factory"),
}, globals())

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
    "reverse_address",
    "search_expansions",
]
