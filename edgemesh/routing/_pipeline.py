"""
The pipeline: the endpoint registry of a node (its Sources and Targets), the
rules that say which Targets a Source may reach, and the one place where an
exchange is routed.  Router and edge are two configurations of this class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from zope.interface.verify import verifyObject

from ..catalog import Catalog, Service, ServicePort
from ..exchange import (
    IRequestBody,
    IResponder,
    ISource,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    Role,
    SourceKind,
    TargetKind,
)
from ._decide import EDGE_RULES, ROUTER_RULES, RoundRobin, decide


class Pipeline:
    def __init__(
        self,
        role: Role,
        node: str,
        catalog: Catalog,
        rules: Mapping[SourceKind, frozenset[TargetKind]] | None = None,
    ) -> None:
        self.role = role
        self.node = node
        self.catalog = catalog
        self.rules = dict(rules if rules is not None else (EDGE_RULES if role is Role.edge else ROUTER_RULES))
        self.targets: dict[TargetKind, ITarget] = {}
        self.sources: list[ISource] = []
        self.balancer = RoundRobin()

    # --- the registry ----------------------------------------------------------

    def add_target(self, target: ITarget) -> None:
        verifyObject(ITarget, target)
        self.targets[target.kind] = target

    def add_source(self, source: ISource) -> None:
        verifyObject(ISource, source)
        self.sources.append(source)

    def describe(self) -> dict[str, object]:
        return {
            "role": self.role.value,
            "node": self.node,
            "sources": [{"kind": s.kind.value, "at": s.description} for s in self.sources],
            "targets": sorted(kind.value for kind in self.targets),
            "rules": {s.value: sorted(t.value for t in ts) for s, ts in self.rules.items()},
        }

    # --- routing ---------------------------------------------------------------

    def dispatch(self, source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
        """Route an exchange that arrived as plain HTTP (its authority names the service)."""
        service, port = self.catalog.resolve(head.authority)
        return self._route(source, head, responder, service, port, None)

    def dispatch_resolved(
        self,
        source: SourceKind,
        head: RequestHead,
        responder: IResponder,
        service_key: str,
        port: int,
        hint: tuple[str, int] | None,
    ) -> IRequestBody:
        """Route an exchange another node already resolved (service and maybe endpoint)."""
        return self._open(source, head, responder, service_key, port, hint)

    def _open(
        self,
        source: SourceKind,
        head: RequestHead,
        responder: IResponder,
        service_key: str,
        port_number: int,
        hint: tuple[str, int] | None,
    ) -> IRequestBody:
        catalog = self.catalog
        service = catalog.services.get(service_key)
        if service is None:
            raise MeshError(Reason.unknown_service, f"no service {service_key} on {self.node}")
        for port in service.ports:
            if port.port == port_number and port.protocol == "TCP":
                break
        else:
            raise MeshError(Reason.unknown_service, f"service {service_key} has no port {port_number}")
        return self._route(source, head, responder, service, port, hint)

    def _route(
        self,
        source: SourceKind,
        head: RequestHead,
        responder: IResponder,
        service: Service,
        port: ServicePort,
        hint: tuple[str, int] | None,
    ) -> IRequestBody:
        route = decide(self.catalog, self.role, self.node, source, service, port, hint, self.balancer)
        if route.target not in self.rules.get(source, ()):
            raise MeshError(
                Reason.forbidden_route,
                f"{source.value} may not reach {route.target.value} on {self.role.value} {self.node}",
            )
        target = self.targets.get(route.target)
        if target is None:
            raise MeshError(Reason.no_endpoint, f"{self.node} has no {route.target.value} target")
        return target.open(route, head, responder)


def rules_table(rules: Mapping[SourceKind, Iterable[TargetKind]]) -> list[tuple[str, str]]:
    """(source, target) pairs, for documentation and the admin API."""
    return sorted((s.value, t.value) for s, ts in rules.items() for t in ts)
