"""The DNS server's settings (no twisted.names import: the edge's options build these)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_DNS_PORT = 53


class DNSConfigError(ValueError):
    """A DNS setting that cannot be used; the message names it."""


def parse_host_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` → (ip, port)."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise DNSConfigError(f"{what} {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise DNSConfigError(f"{what} {text!r}: {host!r} is not an IP address") from None
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise DNSConfigError(f"{what} {text!r}: port must be a number 0-65535")
        port = int(port_text)
    return str(address), port


@dataclass(frozen=True)
class DNSConfig:
    """The edge's DNS server."""

    address: str = "127.0.0.1"
    """Where it listens, UDP and TCP (e.g. the link-local 169.254.96.16 on a dummy device)."""
    port: int = DEFAULT_DNS_PORT
    upstreams: tuple[tuple[str, int], ...] = ()
    """Resolvers for names that are not the mesh's; none: those get NXDOMAIN."""
    ttl: int = 5
    """TTL of the mesh's answers."""
    cache_size: int = 1024
    """Forwarded answers kept (LRU)."""
    max_cache_ttl: int = 300
    """A forwarded answer is kept at most this long, whatever its TTL."""
    max_forwarded: int = 256
    """Forwarded queries in flight; more get SERVFAIL at once."""
    upstream_timeout: tuple[int, ...] = (1, 3)
    """Seconds per attempt (the upstreams are tried in turn); then SERVFAIL."""
    max_tcp_connections: int = 128

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise DNSConfigError(f"DNS address {self.address!r} is not an IP address") from None
        if not 0 <= self.port <= 65535:
            raise DNSConfigError(f"DNS port {self.port} is not 0-65535")
        if self.ttl < 0 or self.cache_size < 1 or self.max_forwarded < 1:
            raise DNSConfigError("DNS ttl must be >= 0, cache size and max forwarded >= 1")
        if not self.upstream_timeout or any(t <= 0 for t in self.upstream_timeout):
            raise DNSConfigError("DNS upstream timeouts must be positive")
