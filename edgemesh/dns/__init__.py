"""The edge's DNS server: service names from the live (persisted) catalog, other names
forwarded upstream; twisted.names over UDP and TCP."""

import importlib
from typing import TYPE_CHECKING

from ._config import DEFAULT_DNS_PORT, DNSConfig, DNSConfigError, parse_host_port
from ._names import NameClass, classify, search_expansions

if TYPE_CHECKING:
    from ._resolver import DEFAULT_TTL, AddressBook, BoundedCache, Forwarder, MeshResolver
    from ._server import DNSService, MeshDNSServerFactory, attach_dns, build_dns_factory

_LAZY = {
    **dict.fromkeys(("DEFAULT_TTL", "AddressBook", "BoundedCache", "Forwarder", "MeshResolver"),
                    "_resolver"),
    **dict.fromkeys(("DNSService", "MeshDNSServerFactory", "attach_dns", "build_dns_factory"),
                    "_server"),
}


def __getattr__(name: str) -> object:
    # twisted.names (~0.8 MiB of RssAnon) is imported when --dns is given, not by --dns's options.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

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
