"""
The routing decision: given a resolved service, where does this exchange go?

Pure: catalog and balancer in, a Route (or a MeshError) out.  This module is
the one place that knows the four request paths.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog import Catalog, Endpoint, Service, ServicePort
from ..exchange import MeshError, Reason, Role, Route, SourceKind, TargetKind

ROUTER_PEER = "router"
"""The peer name an edge uses for its tunnel to the router."""


class RoundRobin:
    """Per-request round robin, a counter per service port (bounded)."""

    def __init__(self, max_keys: int = 65536) -> None:
        self._next: dict[tuple[str, str], int] = {}
        self._max_keys = max_keys

    def pick(self, service: Service, port: ServicePort, endpoints: Sequence[Endpoint]) -> Endpoint:
        key = (service.key, port.name)
        counters = self._next
        index = counters.get(key, 0)
        if index == 0 and len(counters) >= self._max_keys:
            counters.clear()
        counters[key] = index + 1
        return endpoints[index % len(endpoints)]


def decide(
    catalog: Catalog,
    role: Role,
    node: str,
    source: SourceKind,
    service: Service,
    port: ServicePort,
    hint: tuple[str, int] | None,
    balancer: RoundRobin,
) -> Route:
    """Choose the endpoint and the way out for one exchange."""
    ready = catalog.ready_endpoints(service, port)
    if role is Role.edge:
        local = catalog.ready_endpoints(service, port, node)
        if source is not SourceKind.service_bus:
            # From another node: it chose this node, so deliver here.
            if hint is not None:
                for endpoint in local:
                    if endpoint.host == hint[0] and endpoint.port == hint[1]:
                        return Route(TargetKind.service_bus, service, port, endpoint)
            if not local:
                raise MeshError(Reason.no_endpoint, f"no ready endpoint of {service.key} on node {node}")
            return Route(TargetKind.service_bus, service, port, balancer.pick(service, port, local))
        if local:
            return Route(TargetKind.service_bus, service, port, balancer.pick(service, port, local))
        if not ready:
            raise MeshError(Reason.no_endpoint, f"no ready endpoint for {service.key}:{port.port}")
        endpoint = balancer.pick(service, port, ready)
        peer = catalog.node(endpoint.node) if endpoint.node else None
        if peer is not None and peer.edge:
            if peer.hub_address is None:
                raise MeshError(Reason.no_endpoint, f"edge node {peer.name} has no hub address")
            return Route(TargetKind.hub, service, port, endpoint, peer.name)
        return Route(TargetKind.tunnel, service, port, endpoint, ROUTER_PEER)

    # Router.
    if source is SourceKind.tunnel and hint is not None:
        # An edge chose the endpoint: honour it (relay when it is on another edge).
        for endpoint in ready:
            if endpoint.host == hint[0] and endpoint.port == hint[1]:
                return _router_route(catalog, service, port, endpoint)
    if not ready:
        if service.cluster_ip is not None and source is SourceKind.tunnel:
            # The edge saw endpoints we do not: let the cluster's own proxy decide.
            return Route(TargetKind.cluster_ip, service, port, None)
        raise MeshError(Reason.no_endpoint, f"no ready endpoint for {service.key}:{port.port}")
    return _router_route(catalog, service, port, balancer.pick(service, port, ready))


def _router_route(catalog: Catalog, service: Service, port: ServicePort, endpoint: Endpoint) -> Route:
    node = catalog.node(endpoint.node) if endpoint.node else None
    if node is not None and node.edge:
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
