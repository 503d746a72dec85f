"""
The routing decision: given a resolved service, where does this exchange go?

Pure: catalog and balancer in, a Route (or a MeshError) out.  This module is
the one place that knows the four request paths.  Which endpoints may be chosen is the
topology's business (_topology), which one of them the balancer's (health, the
service's lb policy; see _policy).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

from ..catalog import (
    Catalog,
    Endpoint,
    Service,
    ServicePort,
    aggregate_of,
    is_aggregate_tag,
)
from ..exchange import MeshError, Reason, RequestHead, Role, SourceKind, TargetKind
from ._balance import RoundRobin
from ._policy import DEFAULT_POLICY, EndpointKey, ServicePolicy
from ._topology import LOCAL, local_endpoints, usable


@dataclass(slots=True)
class Route:
    """The routing decision for one exchange: which service, which endpoint, which way out.
    Sources hand it to ``ITarget.open`` (the contract in ``exchange.py`` does not name it:
    it sits below the catalog)."""

    target: TargetKind
    service: Service
    port: ServicePort
    endpoint: Endpoint | None
    """The chosen endpoint (None: the target chooses, e.g. the ClusterIP)."""
    peer: str | None = None
    """The node to send to (hub/tunnel targets)."""
    timeout: float | None = None
    """The request timeout until the response head (the service's policy); None: the
    target's own default."""


ROUTER_PEER = "router"
"""The peer name an edge uses for its tunnel to the router."""

_NOTHING: frozenset[EndpointKey] = frozenset()

# Enum members as module constants: in Python 3.11 every ``Kind.member`` goes through
# EnumType.__getattr__ (~850 instructions against ~20 for a global; callgrind).
_EDGE: Final = Role.edge
_FROM_BUS: Final = SourceKind.service_bus
_FROM_TUNNEL: Final = SourceKind.tunnel
_FROM_REPLICA: Final = SourceKind.router_link
_TO_BUS: Final = TargetKind.service_bus
_TO_HUB: Final = TargetKind.hub
_TO_TUNNEL: Final = TargetKind.tunnel
_TO_CLUSTER_IP: Final = TargetKind.cluster_ip
_TO_REPLICA: Final = TargetKind.router_link


def decide(
    catalog: Catalog,
    role: Role,
    node: str,
    source: SourceKind,
    service: Service,
    port: ServicePort,
    hint: tuple[str, int] | None,
    balancer: RoundRobin,
    head: RequestHead | None = None,
    policy: ServicePolicy = DEFAULT_POLICY,
    exclude: Collection[EndpointKey] = _NOTHING,
    home: Callable[[str], str | None] | None = None,
) -> Route:
    """Choose the endpoint and the way out for one exchange.  ``exclude``: endpoints
    already tried (a retry goes elsewhere).  ``home`` (router replicas): the other replica
    that holds an edge's tunnel, or None when it is here or unknown; never consulted for an
    exchange another replica forwarded (it is not forwarded again)."""
    if role is _EDGE:
        if source is not _FROM_BUS:
            # From another node: it chose this node, so deliver here.  (The ready ones from
            # the catalog's cache: computed once, and the balancer's counters follow the
            # identity of the tuple.)
            local = catalog.ready_endpoints(service, port, node)
            if hint is not None and hint not in exclude:
                for endpoint in local:
                    if endpoint.host == hint[0] and endpoint.port == hint[1]:
                        return Route(_TO_BUS, service, port, endpoint)
            # After the scan: an aggregate's tag is never a host, and the common exchange
            # (the sender chose a ready pod) makes no call to ask (one Python call less).
            if hint is not None and is_aggregate_tag(hint[0]):
                # A trimmed sender chose this node and a kind of pod, not the pod: choose
                # among this node's pods of that kind, as it would have (docs/topology.md).
                local = _of_kind(service, port, node, hint[0]) or local
                hint = None
            if hint is not None and hint not in exclude:
                # Not a ready one: still the endpoint it chose while that serves, even
                # terminating (chosen because nothing was ready; rare, so a plain scan).
                found = _usable_hint(service, port, hint, node)
                if found is not None:
                    return Route(_TO_BUS, service, port, found)
            if not local:
                local = local_endpoints(service, port, node)
            chosen = balancer.choose(service, port, local, head, policy, exclude)
            if chosen is None:
                raise MeshError(
                    Reason.no_endpoint, f"no ready endpoint of {service.key} on node {node}")
            return Route(_TO_BUS, service, port, chosen)
        chosen = balancer.select(catalog, node, service, port, head, policy, exclude)
        if chosen is None:
            if service.internal_traffic_policy == LOCAL:
                raise MeshError(Reason.no_endpoint, f"no ready endpoint of {service.key}:"
                                f"{port.port} on node {node} (internalTrafficPolicy: Local)")
            raise MeshError(Reason.no_endpoint, f"no ready endpoint for {service.key}:{port.port}")
        if chosen.node == node:
            return Route(_TO_BUS, service, port, chosen)
        peer = catalog.node(chosen.node) if chosen.node else None
        if peer is not None and peer.edge:
            if peer.hub_host is None:  # hub_address is None: not its string built per exchange
                raise MeshError(Reason.no_endpoint, f"edge node {peer.name} has no hub address")
            return Route(_TO_HUB, service, port, chosen, peer.name)
        return Route(_TO_TUNNEL, service, port, chosen, ROUTER_PEER)

    # Router.
    ready = catalog.ready_endpoints(service, port)
    if source is _FROM_REPLICA:
        home = None  # loop safety: a forwarded exchange goes down a tunnel of this replica
    if (source is _FROM_TUNNEL or source is _FROM_REPLICA) and hint is not None \
            and is_aggregate_tag(hint[0]):
        # A trimmed edge chose a node it could not reach directly (relayed): the router,
        # which has every endpoint, picks that node's pod as the node would.
        kind = _of_kind(service, port, None, hint[0])
        chosen_pod = balancer.choose(service, port, kind, head, policy, exclude)
        if chosen_pod is not None:
            return _router_route(catalog, service, port, chosen_pod, home)
        hint = None
    if (source is _FROM_TUNNEL or source is _FROM_REPLICA) and hint is not None \
            and hint not in exclude:
        # An edge (or the replica that forwarded) chose the endpoint: honour it (relay when
        # it is on another edge), also one that still serves while terminating.
        for endpoint in ready:
            if endpoint.host == hint[0] and endpoint.port == hint[1]:
                return _router_route(catalog, service, port, endpoint, home)
        found = _usable_hint(service, port, hint, None)
        if found is not None:
            return _router_route(catalog, service, port, found, home)
    if not ready and not any(usable(e) for e in service.endpoints.get(port.name, ())):
        if service.cluster_ip is not None and source is _FROM_TUNNEL:
            # The edge saw endpoints we do not: let the cluster's own proxy decide.
            return Route(_TO_CLUSTER_IP, service, port, None)
        raise MeshError(Reason.no_endpoint, f"no ready endpoint for {service.key}:{port.port}")
    chosen = balancer.select(catalog, node, service, port, head, policy, exclude)
    if chosen is None:
        if service.internal_traffic_policy == LOCAL:
            raise MeshError(Reason.no_endpoint, f"no ready endpoint of {service.key}:"
                            f"{port.port} on node {node} (internalTrafficPolicy: Local)")
        raise MeshError(
            Reason.no_endpoint, f"no other ready endpoint for {service.key}:{port.port}")
    return _router_route(catalog, service, port, chosen, home)


def hinted_routes(
    catalog: Catalog, node: str, service: Service, port: ServicePort, timeout: float | None,
) -> dict[EndpointKey, Route]:
    """An edge's answers to other nodes that chose one of its ready endpoints of ``port``
    (decide's first answer for a hint: the first ready endpoint it names), by that hint,
    with ``timeout``: the same while the catalog is (the pipeline keeps them)."""
    routes: dict[EndpointKey, Route] = {}
    for endpoint in catalog.ready_endpoints(service, port, node):
        routes.setdefault((endpoint.host, endpoint.port),
                          Route(_TO_BUS, service, port, endpoint, None, timeout))
    return routes


_KINDS: dict[tuple[int, str, str], tuple[Service, tuple[Endpoint, ...]]] = {}
_MAX_KINDS = 4096


def _of_kind(service: Service, port: ServicePort, node: str | None,
             tag: str) -> tuple[Endpoint, ...]:
    """The usable endpoints of the aggregate ``tag`` (on ``node`` when given; the tag names
    one node anyway), cached by the service's identity, bounded: the tuple's identity keys
    the balancer's ring."""
    key = (id(service), port.name, tag)
    cached = _KINDS.get(key)
    if cached is not None and cached[0] is service:
        return cached[1]
    found = tuple(e for e in service.endpoints.get(port.name, ())
                  if (node is None or e.node == node) and not e.pods and usable(e)
                  and aggregate_of(e) == tag)
    if len(_KINDS) >= _MAX_KINDS:
        _KINDS.clear()
    _KINDS[key] = (service, found)
    return found


def _usable_hint(
    service: Service, port: ServicePort, hint: tuple[str, int], node: str | None
) -> Endpoint | None:
    """The endpoint ``hint`` names if it is usable (ready, or serving while terminating),
    on ``node`` when given."""
    for endpoint in service.endpoints.get(port.name, ()):
        if (endpoint.host == hint[0] and endpoint.port == hint[1]
                and (node is None or endpoint.node == node) and usable(endpoint)):
            return endpoint
    return None


def _router_route(
    catalog: Catalog, service: Service, port: ServicePort, endpoint: Endpoint,
    home: Callable[[str], str | None] | None = None,
) -> Route:
    node = catalog.node(endpoint.node) if endpoint.node else None
    if node is not None and node.edge:
        replica = home(node.name) if home is not None else None
        if replica is not None:
            # Its tunnel is on another replica: forward there, the endpoint chosen.
            return Route(_TO_REPLICA, service, port, endpoint, replica)
        return Route(_TO_TUNNEL, service, port, endpoint, node.name)
    # A cloud endpoint: through the ClusterIP, as any cloud client would.
    if service.cluster_ip is not None:
        return Route(_TO_CLUSTER_IP, service, port, None)
    return Route(_TO_CLUSTER_IP, service, port, endpoint)


EDGE_RULES: dict[SourceKind, frozenset[TargetKind]] = {
    SourceKind.service_bus: frozenset({TargetKind.service_bus, TargetKind.hub, TargetKind.tunnel}),
    SourceKind.hub: frozenset({TargetKind.service_bus}),
    SourceKind.tunnel: frozenset({TargetKind.service_bus}),
}
ROUTER_RULES: dict[SourceKind, frozenset[TargetKind]] = {
    SourceKind.router: frozenset({TargetKind.tunnel, TargetKind.cluster_ip}),
    SourceKind.tunnel: frozenset({TargetKind.cluster_ip, TargetKind.tunnel}),
}
REPLICA_RULES: dict[SourceKind, frozenset[TargetKind]] = {
    SourceKind.router: ROUTER_RULES[SourceKind.router] | {TargetKind.router_link},
    SourceKind.tunnel: ROUTER_RULES[SourceKind.tunnel] | {TargetKind.router_link},
    # Forwarded by another replica: only down a tunnel here, never to a third replica.
    SourceKind.router_link: frozenset({TargetKind.tunnel}),
}
"""A router with replicas (router links): it forwards to the replica holding the edge."""
