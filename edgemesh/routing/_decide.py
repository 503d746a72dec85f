"""
The routing decision: given a resolved service, where does this exchange go?

Pure: catalog and balancer in, a Route (or a MeshError) out.  This module is
the one place that knows the four request paths.  Which endpoint is the
balancer's business (locality, health, the service's lb policy; see _policy).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from ..catalog import Catalog, Endpoint, Service, ServicePort
from ..exchange import MeshError, Reason, RequestHead, Role, Route, SourceKind, TargetKind
from ._policy import DEFAULT_POLICY, EndpointKey, RoundRobin, ServicePolicy

ROUTER_PEER = "router"
"""The peer name an edge uses for its tunnel to the router."""

_NOTHING: frozenset[EndpointKey] = frozenset()


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
    if role is Role.edge:
        if source is not SourceKind.service_bus:
            # From another node: it chose this node, so deliver here.
            local = catalog.ready_endpoints(service, port, node)
            if hint is not None and hint not in exclude:
                for endpoint in local:
                    if endpoint.host == hint[0] and endpoint.port == hint[1]:
                        return Route(TargetKind.service_bus, service, port, endpoint)
            chosen = balancer.choose(service, port, local, head, policy, exclude)
            if chosen is None:
                raise MeshError(Reason.no_endpoint, f"no ready endpoint of {service.key} on node {node}")
            return Route(TargetKind.service_bus, service, port, chosen)
        chosen = balancer.select(catalog, node, service, port, head, policy, exclude)
        if chosen is None:
            raise MeshError(Reason.no_endpoint, f"no ready endpoint for {service.key}:{port.port}")
        if chosen.node == node:
            return Route(TargetKind.service_bus, service, port, chosen)
        peer = catalog.node(chosen.node) if chosen.node else None
        if peer is not None and peer.edge:
            if peer.hub_address is None:
                raise MeshError(Reason.no_endpoint, f"edge node {peer.name} has no hub address")
            return Route(TargetKind.hub, service, port, chosen, peer.name)
        return Route(TargetKind.tunnel, service, port, chosen, ROUTER_PEER)

    # Router.
    ready = catalog.ready_endpoints(service, port)
    if source is SourceKind.router_link:
        home = None  # loop safety: a forwarded exchange goes down a tunnel of this replica
    if (source is SourceKind.tunnel or source is SourceKind.router_link) and hint is not None \
            and hint not in exclude:
        # An edge (or the replica that forwarded) chose the endpoint: honour it (relay when
        # it is on another edge).
        for endpoint in ready:
            if endpoint.host == hint[0] and endpoint.port == hint[1]:
                return _router_route(catalog, service, port, endpoint, home)
    if not ready:
        if service.cluster_ip is not None and source is SourceKind.tunnel:
            # The edge saw endpoints we do not: let the cluster's own proxy decide.
            return Route(TargetKind.cluster_ip, service, port, None)
        raise MeshError(Reason.no_endpoint, f"no ready endpoint for {service.key}:{port.port}")
    chosen = balancer.select(catalog, node, service, port, head, policy, exclude)
    if chosen is None:
        raise MeshError(Reason.no_endpoint, f"no other ready endpoint for {service.key}:{port.port}")
    return _router_route(catalog, service, port, chosen, home)


def _router_route(
    catalog: Catalog, service: Service, port: ServicePort, endpoint: Endpoint,
    home: Callable[[str], str | None] | None = None,
) -> Route:
    node = catalog.node(endpoint.node) if endpoint.node else None
    if node is not None and node.edge:
        replica = home(node.name) if home is not None else None
        if replica is not None:
            # Its tunnel is on another replica: forward there, the endpoint chosen.
            return Route(TargetKind.router_link, service, port, endpoint, replica)
        return Route(TargetKind.tunnel, service, port, endpoint, node.name)
    # A cloud endpoint: through the ClusterIP, as any cloud client would.
    if service.cluster_ip is not None:
        return Route(TargetKind.cluster_ip, service, port, None)
    return Route(TargetKind.cluster_ip, service, port, endpoint)


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
