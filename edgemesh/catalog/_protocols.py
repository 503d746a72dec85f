"""
Which ports carry HTTP exchanges and which carry opaque byte streams (issue 12).

A Service port is HTTP unless it says otherwise, in the Kubernetes way: its
``appProtocol`` first, else the Istio-style prefix of its name.  The table is in
docs/protocols.md; ``PORT_KIND_TABLE`` below is what it documents.
"""

from __future__ import annotations

import enum


class PortKind(enum.Enum):
    """How the mesh carries a service port's connections."""

    http = "http"
    """HTTP/1.x: each request is an exchange, routed and balanced per request (L7)."""
    stream = "stream"
    """Any other protocol over TCP: one opaque byte stream per connection (L4)."""
    unsupported = "unsupported"
    """UDP and SCTP ports: not carried by the mesh."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code


HTTP1_APP_PROTOCOLS = frozenset({"http", "http/1.0", "http/1.1", "http1", "kubernetes.io/http"})
"""``appProtocol`` values (lower-cased) that mean HTTP/1.x; any other value means a stream."""

HTTP_NAME_PREFIXES = frozenset({"http"})
"""Port names ``http`` and ``http-*``: HTTP/1.x."""

STREAM_NAME_PREFIXES = frozenset({
    "amqp", "grpc", "grpc-web", "h2c", "http2", "https", "kafka", "mongo", "mqtt", "mysql",
    "nats", "postgres", "postgresql", "redis", "tcp", "tls", "ws", "wss",
})
"""Port names ``<prefix>`` and ``<prefix>-*`` (Istio's protocol selection, and a few more):
a TCP stream.  ``grpc-web`` is listed for completeness; it is also a ``grpc-`` name."""


def port_kind(protocol: str, app_protocol: str | None, name: str) -> PortKind:
    """The kind of a service port from its ``protocol``, ``appProtocol`` and ``name``.

    >>> port_kind("TCP", None, "web").value, port_kind("TCP", "kubernetes.io/h2c", "http").value
    ('http', 'stream')
    """
    if protocol != "TCP":
        return PortKind.unsupported
    if app_protocol:
        return PortKind.http if app_protocol.lower() in HTTP1_APP_PROTOCOLS else PortKind.stream
    prefix = name.partition("-")[0]
    if prefix in HTTP_NAME_PREFIXES:
        return PortKind.http
    if prefix in STREAM_NAME_PREFIXES:
        return PortKind.stream
    return PortKind.http


def port_kind_table() -> list[tuple[str, str, str]]:
    """(what the port says, example, kind) rows, for docs/protocols.md and its test."""
    rows = [("protocol: UDP or SCTP", "protocol: UDP", PortKind.unsupported.value)]
    rows += [(f"appProtocol: {value}", value, PortKind.http.value)
             for value in sorted(HTTP1_APP_PROTOCOLS)]
    rows.append(("appProtocol: anything else",
                 "kubernetes.io/h2c, kubernetes.io/ws, grpc, tcp, mqtt", PortKind.stream.value))
    rows.append(("no appProtocol, name http or http-*", "http, http-web", PortKind.http.value))
    rows += [(f"no appProtocol, name {p} or {p}-*", f"{p}-main", PortKind.stream.value)
             for p in sorted(STREAM_NAME_PREFIXES)]
    rows.append(("no appProtocol, any other name (or none)", "web, metrics, ''",
                 PortKind.http.value))
    return rows
