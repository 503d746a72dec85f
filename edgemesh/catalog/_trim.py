"""
Trimmed endpoints: the view an edge receives holds its own node's endpoints exactly, and
the endpoints of every other edge node as *aggregates* (``docs/topology.md``, "Trimmed
endpoints").

An aggregate is one entry per (node, conditions, zone, hints): everything an edge's
choice reads (``routing/_topology.py``: Local, hints, conditions, node / pool / zone tiers)
is the same for all the pods it stands for, so the topology decides on aggregates exactly
as on the endpoints they replace.  It carries the count (``Endpoint.pods``), which
balancers use as its weight.  Its host is a tag derived from those fields, not an address:
the edge sends the exchange to that node's hub with the tag as the chosen endpoint, and
the node picks among its own pods of the same tag (``aggregate_of`` on its own exact
endpoints gives the same tag).

Not trimmed: endpoints on cloud nodes or on no node (the router reaches them through the
ClusterIP, it needs no pod choice from the edge), and headless Services (DNS answers their
pod addresses).  Pure functions; the router cuts views with them (``_scope.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from ._model import Endpoint, Service

AGGREGATE_PREFIX = "*"
"""The first character of an aggregate's tag (never of a host name or IP address)."""

__all__ = ["AGGREGATE_PREFIX", "aggregate_of", "is_aggregate_tag", "trim_service"]


def aggregate_of(endpoint: Endpoint) -> str:
    """The tag of the aggregate ``endpoint`` belongs to (same on every node)."""
    text = "\0".join((
        endpoint.node or "",
        f"{endpoint.ready:d}{endpoint.serving:d}{endpoint.terminating:d}",
        endpoint.zone or "", ",".join(endpoint.for_zones), ",".join(endpoint.for_nodes)))
    return AGGREGATE_PREFIX + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def is_aggregate_tag(host: str) -> bool:
    return host.startswith(AGGREGATE_PREFIX)


def trim_service(service: Service, own: str, is_edge: Callable[[str], bool]) -> Service:
    """``service`` as the edge on node ``own`` receives it: the endpoints of other edge
    nodes folded into aggregates (``service`` itself when nothing folds)."""
    if service.cluster_ip is None:
        return service
    trimmed: dict[str, tuple[Endpoint, ...]] = {}
    folded = False
    for port_name, endpoints in service.endpoints.items():
        exact: list[Endpoint] = []
        groups: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            node = endpoint.node
            if node is None or node == own or endpoint.pods or not is_edge(node):
                exact.append(endpoint)
            else:
                groups.setdefault(aggregate_of(endpoint), []).append(endpoint)
        if groups:
            folded = True
        # Sorted by node then tag: every edge lists the same aggregates in the same order.
        # The port is the lowest of its pods' (only a key for loads and health: the node
        # delivers to its own pod's port).
        aggregates = [
            Endpoint(tag, min(e.port for e in members), first.node, first.ready, first.serving,
                     first.terminating, first.zone, None, first.for_zones, first.for_nodes,
                     pods=len(members))
            for tag, members in sorted(groups.items(), key=lambda i: (i[1][0].node or "", i[0]))
            for first in (members[0],)
        ]
        trimmed[port_name] = (*exact, *aggregates)
    if not folded:
        return service
    return replace(service, endpoints=MappingProxyType(trimmed))
