"""
Routing loops: the hop bound, and which catalog endpoints are this node's own listeners.

A Service whose endpoint is a mesh listener (an edge's proxy, the router's HTTP port)
sends every request back into the mesh.  Two guards, both plain Python:

- ``check_hops``: every exchange carries a hop count (``RequestHead.hops``: in the envelope
  between nodes, as ``X-Edgemesh-Hops`` to a cluster IP); each pipeline it passes adds one
  (the target that forwards it sends ``hops + 1``; the head keeps what was received), and
  past the bound it is answered ``508 loop``.
- ``own_endpoints``: when a catalog is applied, the endpoints whose address is one of this
  node's listening sockets are refused (never chosen), so the commonest loop, a pod address
  that is the node itself, costs nothing at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..catalog import Catalog
from ..exchange import MeshError, Reason

__all__ = [
    "DEFAULT_MAX_HOPS",
    "MAX_HOPS_LIMIT",
    "Listening",
    "OwnEndpoint",
    "OwnListeners",
    "check_hops",
    "own_endpoints",
]

DEFAULT_MAX_HOPS = 8
"""Pipelines one exchange may pass (the longest path the mesh itself makes is 4: edge,
router, another router replica, edge; the rest is headroom for proxies in the cloud that
pass headers on)."""
MAX_HOPS_LIMIT = 255
"""What the envelope field can carry."""

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_V4_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_V6_LOOPBACK = ipaddress.IPv6Address("::1")


def check_hops(hops: int, max_hops: int, node: str, service: str) -> int:
    """The hop count to send on from ``node``; MeshError(loop) when the exchange already
    passed ``max_hops`` pipelines."""
    if hops >= max_hops:
        raise MeshError(
            Reason.loop,
            f"{service}: {hops} mesh hops before {node}, at most {max_hops} allowed "
            "(--max-hops): a routing loop? "
            "(an endpoint or clusterIP that leads back into the mesh)",
        )
    return hops + 1


@dataclass(frozen=True, slots=True)
class Listening:
    """One listening socket of a node: its name (``proxy``, ``hub``...) and the address it is
    bound to (``0.0.0.0`` or ``::``: every address of the host)."""

    name: str
    host: str
    port: int


def _ip(text: str) -> _IP | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class OwnListeners:
    """The addresses that reach this node's listeners."""

    exact: Mapping[tuple[_IP | str, int], str]
    """Sockets bound to one address: (address, port) → listener name."""
    wildcard: Mapping[int, str]
    """Sockets bound to every address: port → listener name."""
    addresses: frozenset[_IP]
    """This host's addresses, besides loopback: those it is known by in the catalog and
    those its sockets are bound to."""

    @classmethod
    def of(cls, listening: Iterable[Listening], addresses: Iterable[str] = ()) -> OwnListeners:
        exact: dict[tuple[_IP | str, int], str] = {}
        wildcard: dict[int, str] = {}
        for entry in listening:
            ip = _ip(entry.host) if entry.host else None
            if not entry.host or (ip is not None and ip.is_unspecified):
                wildcard.setdefault(entry.port, entry.name)
            else:
                exact.setdefault((ip if ip is not None else entry.host.lower(), entry.port),
                                 entry.name)
        bound = (key[0] for key in exact if not isinstance(key[0], str) and not key[0].is_loopback)
        own = frozenset(ip for ip in map(_ip, addresses) if ip is not None) | frozenset(bound)
        return cls(exact, wildcard, own)

    def owner(self, host: str, port: int, local: bool = True) -> str | None:
        """The listener that ``host:port`` reaches, or None when it is not this node's.
        ``local``: this node is the one that connects to it, so a loopback address is its
        own (an endpoint that another node connects to is on that node's loopback)."""
        exact = self.exact
        wildcard = self.wildcard.get(port)
        if wildcard is None and not exact:
            return None
        ip = _ip(host)
        if ip is None:
            return exact.get((host.lower(), port)) if local else None
        if ip.is_unspecified:
            # Connecting to 0.0.0.0 or :: reaches the loopback.
            ip = _V4_LOOPBACK if ip.version == 4 else _V6_LOOPBACK
        if ip not in self.addresses and not (local and ip.is_loopback):
            return None  # another host's address (or another node's loopback)
        found = exact.get((ip, port))
        return found if found is not None else wildcard


@dataclass(frozen=True, slots=True)
class OwnEndpoint:
    """An endpoint of the catalog that is one of this node's listeners."""

    listener: str
    services: tuple[str, ...]


def own_endpoints(
    catalog: Catalog,
    node: str,
    listening: Iterable[Listening],
    addresses: Iterable[str] = (),
    *,
    edge: bool = True,
) -> dict[tuple[str, int], OwnEndpoint]:
    """The endpoints (any service, any node) that reach one of ``node``'s listening sockets.
    Its own addresses: ``addresses``, its hub address in the catalog (the Node's InternalIP or
    ``edgemesh.io/hub-address``), the addresses its sockets are bound to, and loopback for
    the endpoints it connects to itself (``edge``: those on ``node``; the router: those not
    on an edge)."""
    here = catalog.node(node)
    extra = list(addresses)
    if here is not None and here.hub_host is not None:
        extra.append(here.hub_host)
    listeners = OwnListeners.of(listening, extra)
    ports = set(listeners.wildcard) | {port for _, port in listeners.exact}
    found: dict[tuple[str, int], OwnEndpoint] = {}
    for key, service in catalog.services.items():
        for endpoints in service.endpoints.values():
            for endpoint in endpoints:
                if endpoint.port not in ports:
                    continue  # the common case: one set lookup per endpoint
                local = endpoint.node == node if edge else not catalog.is_edge(endpoint.node)
                name = listeners.owner(endpoint.host, endpoint.port, local)
                if name is None:
                    continue
                address = (endpoint.host, endpoint.port)
                known = found.get(address)
                if known is None:
                    found[address] = OwnEndpoint(name, (key,))
                elif key not in known.services:
                    found[address] = OwnEndpoint(name, (*known.services, key))
    return found
