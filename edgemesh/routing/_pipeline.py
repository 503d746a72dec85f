"""
The pipeline: the endpoint registry of a node (its Sources and Targets), the
rules that say which Targets a Source may reach, and the one place where an
exchange is routed.  Router and edge are two configurations of this class.

Every exchange runs through a GuardedExchange (see _guard): the pipeline keeps the
per-service state (overload limit, retry budget), the outlier detector, the service
policies and the exchanges in progress, whose deadlines one lazy timer enforces.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable, Mapping
from typing import Final, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from ..catalog import Catalog, Endpoint, Service, ServicePort
from ..exchange import (
    IByteStream,
    IRequestBody,
    IResponder,
    ISource,
    IStreamSource,
    IStreamTarget,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    Role,
    SourceKind,
    TargetKind,
)
from ._balance import Balancer
from ._decide import EDGE_RULES, ROUTER_PEER, ROUTER_RULES, Route, decide, hinted_routes
from ._guard import INFINITY, GuardedBody, GuardedExchange
from ._health import OutlierDetector, Resilience, ServiceState
from ._loops import Listening, OwnEndpoint, check_hops, own_endpoints
from ._policy import EndpointKey, PolicyBook, ServicePolicy
from ._streams import StreamGuard

_ORIGINS = frozenset({SourceKind.service_bus, SourceKind.router})
"""Where exchanges enter the mesh: their node owns timeouts and retries."""
_LINKS = frozenset({SourceKind.hub, SourceKind.tunnel})
# Enum members for the hot path (Python 3.11's EnumType.__getattr__: see _decide).
_FROM_BUS: Final = SourceKind.service_bus
_FROM_ROUTER_HTTP: Final = SourceKind.router
_TO_HUB: Final = TargetKind.hub
_MAX_SERVICES = 65536
_NOTHING: frozenset[tuple[str, int]] = frozenset()
_Single = tuple[Service, ServicePort, Route | None]
_Hinted = tuple[Service, ServicePort, Mapping[EndpointKey, Route]]


class ExchangeObserver(Protocol):
    """The observability layer (metrics, access log), told of every guarded exchange."""

    def opened(self, exchange: GuardedExchange) -> None:
        """The exchange starts (its route chosen): set its ``stats`` and ``started``."""

    def closed(self, exchange: GuardedExchange) -> None:
        """The exchange is over: answered, failed or given up by its source."""


class Refused(Protocol):
    """An endpoint of the catalog this node never chooses, and why (its own listener)."""

    def __call__(
        self, source: SourceKind, head: RequestHead, error: MeshError,
        service_key: str | None = None,
    ) -> None: ...


class PeerPaths(Protocol):
    """How this edge reaches other edges' hubs (the HubDialer)."""

    @property
    def unreachable(self) -> Container[str]:
        """The peers whose hub cannot be dialled now: relay through the router.  (A set
        routing reads, not a method: one Python call less per exchange to another edge.)"""

    def paths(self) -> dict[str, str]:
        """Peer → "direct", "relayed" or "connecting", for the admin API."""


class Pipeline:
    """The node's one routing pipeline: Sources in, name resolution, endpoint choice, Targets out.
    """

    # Its state in slots: with more than 30 names in an instance dict, CPython 3.11 leaves
    # every self.method lookup unspecialized (~300 instructions; see transports/_front.py).
    __slots__ = (
        "_catalog",
        "_clock",
        "_counted",
        "_drain_waiters",
        "_draining_peers",
        "_edge",
        "_filters",
        "_hinted",
        "_idle_timeout",
        "_inflight",
        "_listening",
        "_max_active",
        "_max_hops",
        "_outbound_service",
        "_own",
        "_own_by_service",
        "_relayed",
        "_resolved_ports",
        "_services",
        "_single",
        "_states_by_id",
        "_timer",
        "_wake_at",
        "balancer",
        "draining",
        "edge_homes",
        "node",
        "observer",
        "outliers",
        "peer_paths",
        "policies",
        "refused",
        "role",
        "rules",
        "served_while_draining",
        "settings",
        "sources",
        "stream_closed",
        "stream_opened",
        "stream_targets",
        "streams",
        "targets",
    )

    log = Logger()

    def __init__(
        self,
        role: Role,
        node: str,
        catalog: Catalog,
        rules: Mapping[SourceKind, frozenset[TargetKind]] | None = None,
        *,
        clock: IReactorTime | None = None,
        settings: Resilience | None = None,
        balancer: Balancer | None = None,
    ) -> None:
        """``clock``: for timeouts, ejection penalties and budgets (None: no timeouts;
        time stands still)."""
        self.role = role
        self.node = node
        defaults = EDGE_RULES if role is Role.edge else ROUTER_RULES
        self.rules = dict(rules if rules is not None else defaults)
        self.targets: dict[TargetKind, ITarget] = {}
        self.stream_targets: dict[TargetKind, IStreamTarget] = {}
        """Ways out for byte streams (routing/_streams.py), by the same rules."""
        self.stream_opened: Callable[[StreamGuard], None] | None = None
        """Set by the observability layer: told of each byte stream routed."""
        self.stream_closed: Callable[[StreamGuard], None] | None = None
        """Set by the observability layer: told of each byte stream once it is over."""
        self.streams: set[StreamGuard] = set()
        self._outbound_service = Service("outbound", "passthrough", None,
                                         (ServicePort("", 1, 1),))
        """What streams to names outside the catalog count as (--outbound allow)."""
        self.sources: list[ISource] = []
        self.settings = settings or Resilience()
        self._clock = clock
        self.outliers = OutlierDetector(self.settings, changed=self._refilter)
        self.policies = PolicyBook()
        self.balancer = balancer or Balancer()
        self.balancer.usable = self._usable
        self.balancer.filtering = self._filtering
        self.balancer.now = self.now
        self.peer_paths: PeerPaths | None = None
        self.edge_homes: Callable[[str], str | None] | None = None
        """Router replicas: the other replica that holds an edge's tunnel (None: here or
        unknown); see routing/_homes.py."""
        self.observer: ExchangeObserver | None = None
        """Set by the observability layer: told of each exchange's start and end."""
        self.refused: Refused | None = None
        """Set by the observability layer: told of each exchange refused with a MeshError."""
        self._counted: MeshError | None = None
        """The error the guard of a refused exchange already reported to the observer."""
        self._services: dict[str, ServiceState] = {}
        self._states_by_id: dict[int, tuple[Service, ServiceState, ServicePolicy]] = {}
        self._resolved_ports: dict[tuple[str, int], tuple[Service, ServicePort]] = {}
        """Another node's (service key, port) as this node's catalog has them (_resolved)."""
        # An edge's routes that only a new catalog changes, by the port's id (the entries
        # hold the port: ids stay unique); see _single_route and _hinted_routes.
        self._single: dict[int, _Single] = {}
        self._hinted: dict[int, _Hinted] = {}
        self._edge = role is Role.edge
        self._max_active = self.settings.max_requests_per_service
        self._idle_timeout = self.settings.stream_idle_timeout
        self._max_hops = self.settings.max_hops
        self._listening: tuple[Listening, ...] = ()
        self._own: dict[EndpointKey, OwnEndpoint] = {}
        """Endpoints of the catalog that are this node's own listeners: never chosen."""
        self._own_by_service: dict[str, frozenset[EndpointKey]] = {}
        self._draining_peers: dict[str, float] = {}
        self._filters = False
        """Endpoints are ejected or peers drain: the balancer chooses among the usable ones
        (kept by ``_refilter`` where either changes: an attribute read per exchange rather
        than a Python call, p1 edge-1 -0.5 k instructions, callgrind)."""
        self._relayed: dict[str, int] = {}
        self._inflight: set[GuardedExchange] = set()
        self._timer: IDelayedCall | None = None
        self._wake_at = INFINITY
        self.draining = False
        self.served_while_draining: frozenset[SourceKind] = frozenset()
        """Link sources still served during the drain (a router replica's tunnels: its edges
        move away on GOAWAY, and have no other way out until then)."""
        self._drain_waiters: list[Deferred[None]] = []
        self._catalog = catalog
        self.catalog = catalog

    def configure(self, settings: Resilience) -> None:
        """New resilience settings (before traffic: the outlier state starts over)."""
        self.settings = settings
        self.outliers = OutlierDetector(settings, changed=self._refilter)
        self._refilter()
        self._max_active = settings.max_requests_per_service
        self._idle_timeout = settings.stream_idle_timeout
        self._max_hops = settings.max_hops
        self._services.clear()
        self._states_by_id.clear()

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self.policies.scan(catalog)
        self.balancer.forget()
        self._states_by_id.clear()
        self._resolved_ports.clear()
        self._single.clear()
        self._hinted.clear()
        if self._listening or self._own:
            self._refuse_own(catalog)

    # --- routing loops: this node's own listeners ----------------------------------

    def set_listening(self, listening: Iterable[Listening]) -> None:
        """This node's listening sockets (the role tells once they are bound): endpoints of
        the catalog that reach one of them are refused, now and in every later catalog."""
        self._listening = tuple(listening)
        self._refuse_own(self._catalog)

    def _refuse_own(self, catalog: Catalog) -> None:
        found = (
            own_endpoints(catalog, self.node, self._listening, edge=self.role is Role.edge)
            if self._listening else {}
        )
        for key, own in found.items():
            if key not in self._own:
                host, port = key
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                self.log.warn(
                    "refusing endpoint {endpoint} of {services}: it is this node's own "
                    "{listener} listener (a routing loop)",
                    endpoint=shown, services=", ".join(own.services), listener=own.listener,
                )
        by_service: dict[str, set[EndpointKey]] = {}
        for key, own in found.items():
            for service in own.services:
                by_service.setdefault(service, set()).add(key)
        self._own = found
        self._own_by_service = {k: frozenset(v) for k, v in by_service.items()}

    @property
    def refused_count(self) -> int:
        return len(self._own)

    def refused_endpoints(self) -> list[dict[str, object]]:
        """The endpoints refused as this node's own listeners (for the admin API)."""
        return [
            {"endpoint": f"[{h}]:{p}" if ":" in h else f"{h}:{p}", "listener": own.listener,
             "services": list(own.services)}
            for (h, p), own in sorted(self._own.items())
        ]

    def _own_refused(
        self, service: Service, exclude: Collection[EndpointKey], error: MeshError,
    ) -> MeshError:
        """A clearer no-endpoint answer when this node refused endpoints of the service."""
        own = [self._own[key] for key in exclude if key in self._own]
        if not own:
            return error
        addresses = ", ".join(sorted(f"{h}:{p}" for h, p in exclude if (h, p) in self._own))
        return MeshError(
            Reason.no_endpoint,
            f"{error.detail}; refused {addresses}: {own[0].listener} listener of {self.node} "
            "itself (a routing loop)",
        )

    # --- the registry ----------------------------------------------------------

    def add_target(self, target: ITarget) -> None:
        verifyObject(ITarget, target)
        self.targets[target.kind] = target

    def add_stream_target(self, target: IStreamTarget) -> None:
        verifyObject(IStreamTarget, target)
        self.stream_targets[target.kind] = target

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

    def resilience_view(self) -> dict[str, object]:
        """Policies (and invalid annotations), ejected endpoints, per-service counters,
        draining peers, and how other edges' hubs are reached (direct or relayed through
        the router): the admin API's ``/resilience``."""
        now = self.now()
        return {
            "in_flight": len(self._inflight),
            "draining": self.draining,
            "policies": self.policies.describe(),
            "policy_problems": self.policies.problems(),
            "outliers": self.outliers.describe(now),
            "services": {key: state.describe() for key, state in sorted(self._services.items())},
            "draining_peers": sorted(p for p, until in self._draining_peers.items() if until > now),
            "peers": self.peer_paths.paths() if self.peer_paths is not None else {},
            "relayed": dict(sorted(self._relayed.items())),
            "refused_endpoints": self.refused_endpoints(),
        }

    # --- routing ---------------------------------------------------------------

    def dispatch(
        self, source: SourceKind, head: RequestHead, responder: IResponder,
    ) -> IRequestBody:
        """Route an exchange that arrived as plain HTTP (its authority names the service)."""
        try:
            # resolve's answers first: one Python call less per exchange (p1 edge-1 -1.8 k).
            catalog = self._catalog
            authority = head.authority
            service, port = catalog.resolved.get(authority) or catalog.resolve(authority)
            return self._route(source, head, responder, service, port, None)
        except MeshError as error:
            refused = self.refused
            if refused is not None and not self._was_counted(error):
                refused(source, head, error)
            raise

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
        try:
            # Remembered per catalog: two Python calls less per exchange from a link.
            service, service_port = (self._resolved_ports.get((service_key, port))
                                     or self._resolved(service_key, port))
            return self._route(source, head, responder, service, service_port, hint)
        except MeshError as error:
            refused = self.refused
            if refused is not None and not self._was_counted(error):
                refused(source, head, error, service_key)
            raise

    # --- byte streams (issue 12) ------------------------------------------------------

    def dispatch_stream(
        self, source: SourceKind, authority: bytes, client: str, stream: IStreamSource
    ) -> IByteStream:
        """Open a byte stream to the service port ``authority`` names (CONNECT's target,
        a captured connection's original destination).  Raises MeshError if refused."""
        service, port = self._catalog.resolve(authority)
        return self._route_stream(source, service, port, None, client, stream)

    def dispatch_stream_resolved(
        self,
        source: SourceKind,
        service_key: str,
        port_number: int,
        hint: tuple[str, int] | None,
        client: str,
        stream: IStreamSource,
    ) -> IByteStream:
        """Open a byte stream another node already resolved (and maybe chose an endpoint for)."""
        service, port = self._resolved(service_key, port_number)
        return self._route_stream(source, service, port, hint, client, stream)

    def dispatch_outbound(
        self, source: SourceKind, host: str, port: int, client: str, stream: IStreamSource
    ) -> IByteStream:
        """A byte stream straight to ``host:port``, a name the catalog does not know
        (``--outbound allow``): out of this node over TCP, guarded, counted and capped as
        one service, ``outbound/passthrough``."""
        target = self.stream_targets.get(TargetKind.service_bus)
        if target is None or TargetKind.service_bus not in self.rules.get(source, ()):
            raise MeshError(Reason.forbidden_route, f"no outbound streams from {source.value}")
        service = self._outbound_service
        _, state, _ = self._service_state(service)
        if state.active >= self._max_active:
            state.overloaded += 1
            raise MeshError(Reason.overloaded,
                            f"{service.key}: {state.active} streams in progress on {self.node}")
        route = Route(TargetKind.service_bus, service, service.ports[0],
                      Endpoint(host, port, None))
        return self._guarded_stream(source, route, target, client, stream, state)

    def _route_stream(
        self,
        source: SourceKind,
        service: Service,
        port: ServicePort,
        hint: tuple[str, int] | None,
        client: str,
        stream: IStreamSource,
    ) -> IByteStream:
        _, state, policy = self._service_state(service)
        if state.active >= self._max_active:
            state.overloaded += 1
            raise MeshError(
                Reason.overloaded,
                f"{service.key}: {state.active} requests and streams in progress on {self.node}",
            )
        if self.draining and source in _LINKS:
            raise MeshError(Reason.draining, f"{self.node} is shutting down")
        head = RequestHead(b"CONNECT", b"", b"", (), 0, client)
        # This node's own listeners are refused for streams as for exchanges: a stream into
        # its own proxy would open another (an Upgrade repeats itself ~1000 times, until the
        # service's cap), and one into its admin listener would open it to every node.
        own = self._own_by_service
        exclude = own.get(service.key, _NOTHING) if own else _NOTHING
        try:
            route = decide(self._catalog, self.role, self.node, source, service, port, hint,
                           self.balancer, head, policy, exclude)
        except MeshError as error:
            if exclude and error.reason is Reason.no_endpoint:
                raise self._own_refused(service, exclude, error) from None
            raise
        route = self._allowed(source, route)
        target = self.stream_targets.get(route.target)
        if target is None:
            raise MeshError(
                Reason.not_implemented,
                f"{self.node} carries no byte streams to {route.target.value}",
            )
        return self._guarded_stream(source, route, target, client, stream, state)

    def _guarded_stream(
        self,
        source: SourceKind,
        route: Route,
        target: IStreamTarget,
        client: str,
        stream: IStreamSource,
        state: ServiceState,
    ) -> IByteStream:
        guard = StreamGuard(self._clock, source, route, client, stream, state,
                            self._idle_timeout, self._stream_over)
        state.requests += 1
        state.active += 1
        self.streams.add(guard)
        opened = self.stream_opened
        if opened is not None:
            opened(guard)
        try:
            guard.attach(target.open_stream(route, client, guard.down))
        except MeshError as error:  # targets report through the source; belt and braces
            guard.down.abort(error)
        return guard.up

    def _stream_over(self, guard: StreamGuard) -> None:
        guard.state.active -= 1
        self.streams.discard(guard)
        closed = self.stream_closed
        if closed is not None:
            closed(guard)

    def _was_counted(self, error: MeshError) -> bool:
        counted = self._counted
        self._counted = None
        return counted is error

    def _resolved(self, service_key: str, port_number: int) -> tuple[Service, ServicePort]:
        """The service and TCP port another node resolved, as this node's catalog has them
        (remembered in ``_resolved_ports`` until the next catalog)."""
        service = self._catalog.services.get(service_key)
        if service is None:
            raise MeshError(Reason.unknown_service, f"no service {service_key} on {self.node}")
        for port in service.ports:
            if port.port == port_number and port.protocol == "TCP":
                found = self._resolved_ports
                if len(found) >= _MAX_SERVICES:
                    found.clear()
                found[service_key, port_number] = (service, port)
                return service, port
        raise MeshError(Reason.unknown_service, f"service {service_key} has no port {port_number}")

    def _route(
        self,
        source: SourceKind,
        head: RequestHead,
        responder: IResponder,
        service: Service,
        port: ServicePort,
        hint: tuple[str, int] | None,
    ) -> IRequestBody:
        # Every pipeline an exchange passes counts; past the bound it is a loop.  The head
        # keeps the count it came with: a target that forwards sends ``hops + 1`` (nothing
        # writes a RequestHead, so its decoder or HTTP front may share one across exchanges).
        if head.hops >= self._max_hops:
            check_hops(head.hops, self._max_hops, self.node, service.key)  # raises: 508 loop
        cached = self._states_by_id.get(id(service))
        if cached is None or cached[0] is not service:
            cached = self._service_state(service)
        _, state, policy = cached
        if state.active >= self._max_active:
            state.overloaded += 1
            raise MeshError(
                Reason.overloaded,
                f"{service.key}: {state.active} requests in progress on {self.node}",
            )
        if self.draining and source in _LINKS and source not in self.served_while_draining:
            raise MeshError(Reason.draining, f"{self.node} is shutting down")
        own = self._own_by_service
        exclude = own.get(service.key, _NOTHING) if own else _NOTHING
        route = None
        if self._edge and not exclude:
            # decide's answer when only a new catalog changes it, kept: no decide, balancer
            # or Route per exchange (callgrind: p1 edge-1 -6 k instructions, p2 edge-2 -4 k).
            if hint is None:
                # Not while endpoints are ejected or peers drain: then the balancer chooses.
                if source is _FROM_BUS and not self._filters:
                    single = self._single.get(id(port))
                    if single is None or single[0] is not service or single[1] is not port:
                        single = self._single_route(service, port, policy)
                    route = single[2]
            elif source is not _FROM_BUS:
                hinted = self._hinted.get(id(port))
                if hinted is None or hinted[0] is not service or hinted[1] is not port:
                    hinted = self._hinted_routes(service, port, policy)
                route = hinted[2].get(hint)
        if route is None:
            try:
                route = decide(self._catalog, self.role, self.node, source, service, port, hint,
                               self.balancer, head, policy, exclude, self.edge_homes)
            except MeshError as error:
                if exclude and error.reason is Reason.no_endpoint:
                    raise self._own_refused(service, exclude, error) from None
                raise
            if policy.timeout is not None:
                route.timeout = policy.timeout
        kind = route.target
        allowed = self.rules.get(source)
        target = self.targets.get(kind)
        paths = self.peer_paths
        if (
            allowed is None
            or kind not in allowed
            or target is None
            or (kind is _TO_HUB and paths is not None and route.peer in paths.unreachable)
        ):
            route, target = self._target_for(source, route)  # relay, or an error to raise
        # The exchange starts (here, not in a method of its own: one Python call less).
        origin = source is _FROM_BUS or source is _FROM_ROUTER_HTTP
        guard = GuardedExchange(self, source, head, responder, route.service, route.port, state,
                                policy, origin)
        state.requests += 1
        state.active += 1
        self._inflight.add(guard)
        observer = self.observer
        if observer is not None:
            guard.route = route
            observer.opened(guard)
        if origin:
            clock = self._clock
            now = 0.0 if clock is None else clock.seconds()
            budget = state.budget
            if now - budget.start >= budget.window:
                budget.request(now)
            else:
                budget.requests += 1
            if head.content_length == 0:
                guard.deadline = deadline = now + guard.timeout
            else:
                deadline = INFINITY
            guard.active_at = now
            guard.idle_deadline = idle = now + self._idle_timeout
            # Not min(): a builtin call with argument parsing (~750 instructions; callgrind).
            wake = idle if idle < deadline else deadline
            if wake < self._wake_at:
                self._schedule(wake)
        guard._attempt(route, target)
        body = GuardedBody()  # no __init__ (see GuardedBody.guard)
        body.guard = guard
        return body

    def _allowed(self, source: SourceKind, route: Route) -> Route:
        """``route``, through the router when its hub cannot be dialled, if ``source`` may
        take it on this node (else MeshError forbidden-route)."""
        paths = self.peer_paths
        if (route.target is TargetKind.hub and paths is not None
                and route.peer in paths.unreachable):
            route = self._relayed_route(source, route) or route
        if route.target not in self.rules.get(source, ()):
            raise MeshError(
                Reason.forbidden_route,
                f"{source.value} may not reach {route.target.value} "
                f"on {self.role.value} {self.node}",
            )
        return route

    def _target_for(self, source: SourceKind, route: Route) -> tuple[Route, ITarget]:
        route = self._allowed(source, route)
        target = self.targets.get(route.target)
        if target is None:
            raise MeshError(Reason.no_endpoint, f"{self.node} has no {route.target.value} target")
        return route, target

    def _relayed_route(self, source: SourceKind, route: Route) -> Route | None:
        """The same endpoint through the router's tunnels, when that way exists."""
        if (TargetKind.tunnel not in self.rules.get(source, ())
                or TargetKind.tunnel not in self.targets):
            return None
        peer = route.peer or "?"
        if len(self._relayed) < _MAX_SERVICES or peer in self._relayed:
            self._relayed[peer] = self._relayed.get(peer, 0) + 1
        return Route(TargetKind.tunnel, route.service, route.port, route.endpoint, ROUTER_PEER,
                     route.timeout)

    # --- for the guarded exchanges ---------------------------------------------------

    def _service_state(self, service: Service) -> tuple[Service, ServiceState, ServicePolicy]:
        """The state of a service, by key (it outlives catalogs), with its policy; cached
        by the identity of the catalog's Service object (hot path: no key string to build
        and hash; the cache is cleared with each new catalog, which may change policies)."""
        key = service.key
        services = self._services
        state = services.get(key)
        if state is None:
            if len(services) >= _MAX_SERVICES:
                # Keep the ones in use; the others start over (counters only).
                self._services = services = {k: s for k, s in services.items() if s.active}
            state = services[key] = ServiceState(self.settings)
        by_id = self._states_by_id
        if len(by_id) >= _MAX_SERVICES:
            by_id.clear()
        entry = by_id[id(service)] = (service, state, self.policies.get(service))
        return entry

    def relay(
        self, route: Route, error: MeshError, source: SourceKind
    ) -> tuple[Route, ITarget] | None:
        """After a failed hub dial: the same endpoint through the router, if the peer is
        now known to be unreachable directly."""
        paths = self.peer_paths
        if (
            route.target is not TargetKind.hub
            or paths is None
            or route.peer is None
            or not error.unsent
            or error.reason is not Reason.peer_unavailable
            or route.peer not in paths.unreachable
        ):
            return None
        relayed = self._relayed_route(source, route)
        if relayed is None:
            return None
        target = self.targets[TargetKind.tunnel]
        return relayed, target

    def reroute(
        self, guard: GuardedExchange, exclude: set[EndpointKey]
    ) -> tuple[Route, ITarget] | None:
        """A route for a retry: another endpoint than those tried (None: there is none)."""
        previous = guard.route
        own = self._own_by_service.get(guard.service.key) if self._own_by_service else None
        if own:
            exclude = exclude | own
        try:
            route = decide(self._catalog, self.role, self.node, guard.source, guard.service,
                           guard.port, None, self.balancer, head=guard.request, policy=guard.policy,
                           exclude=exclude, home=self.edge_homes)
            route, target = self._target_for(guard.source, route)
        except MeshError:
            return None
        if route.endpoint is None and previous is not None and previous.endpoint is not None:
            return None  # a cluster IP after an endpoint: not "another endpoint"
        if previous is not None:
            route.timeout = previous.timeout
        return route, target

    def now(self) -> float:
        """The clock's time (0.0 without a clock: time stands still)."""
        clock = self._clock
        return 0.0 if clock is None else clock.seconds()

    def _usable(self, endpoint: Endpoint) -> bool:
        key = (endpoint.host, endpoint.port)
        now = self.now()
        if self.outliers.ejected and self.outliers.is_ejected(key, now):
            return False
        draining = self._draining_peers
        if draining and endpoint.node is not None:
            until = draining.get(endpoint.node)
            if until is not None:
                if until > now:
                    return False
                del draining[endpoint.node]
                self._refilter()
        return True

    def _filtering(self) -> bool:
        return self._filters

    def _refilter(self) -> None:
        """Ejections or draining peers changed: whether the balancer filters now."""
        self._filters = bool(self.outliers.ejected or self._draining_peers)

    def _single_route(
        self, service: Service, port: ServicePort, policy: ServicePolicy,
    ) -> _Single:
        """The route of every exchange from the service bus to ``port`` while nothing is
        filtered, if the port's closest tier is one endpoint and no ClientIP affinity
        remembers clients (the balancer has nothing to choose): decide's answer, with the
        service's timeout, kept until the next catalog.  None: decide per exchange."""
        catalog = self._catalog
        node = self.node
        route: Route | None = None
        tiers = self.balancer.tiers(catalog, node, service, port)
        if tiers and len(tiers[0]) == 1 and policy.affinity is None:
            try:
                route = decide(catalog, self.role, node, _FROM_BUS, service, port, None,
                               self.balancer, None, policy)
            except MeshError:
                route = None  # refused every time: decide says why, per exchange
            if route is not None and policy.timeout is not None:
                route.timeout = policy.timeout
        found = self._single
        if len(found) >= _MAX_SERVICES:
            found.clear()
        entry = found[id(port)] = (service, port, route)
        return entry

    def _hinted_routes(
        self, service: Service, port: ServicePort, policy: ServicePolicy,
    ) -> _Hinted:
        """The routes of exchanges from other nodes to ``port`` by the endpoint they chose,
        for this edge's ready endpoints (decide's answer for those hints), with the
        service's timeout, kept until the next catalog."""
        routes = hinted_routes(self._catalog, self.node, service, port, policy.timeout)
        found = self._hinted
        if len(found) >= _MAX_SERVICES:
            found.clear()
        entry = found[id(port)] = (service, port, routes)
        return entry

    # --- exchanges in progress: deadlines and the drain ----------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def arm(self, guard: GuardedExchange) -> None:
        """The guard's request deadline is set: wake up for it if it is the next."""
        wake = min(guard.idle_deadline, guard.deadline)
        if wake < self._wake_at:
            self._schedule(wake)

    def finished(self, guard: GuardedExchange, counted: MeshError | None = None) -> None:
        """A guarded exchange is over (every way it ends comes here once, from the guard:
        not through a method of its own, one Python call less per exchange): its service's
        and its endpoint's counts, no longer in progress (the drain may be over), and
        observed.  ``counted``: raised to its source inside the first ``open`` and already
        reported here (not again as refused)."""
        guard.state.active -= 1
        if guard.load_key is not None:
            guard.unload()
        if counted is not None:
            self._counted = counted
        inflight = self._inflight
        inflight.discard(guard)
        if not inflight and self._drain_waiters:
            self._drained()
        if guard.stats is not None:
            observer = self.observer
            if observer is not None:
                observer.closed(guard)

    def _drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _schedule(self, when: float) -> None:
        clock = self._clock
        if clock is None:
            return
        self._wake_at = when
        delay = max(0.0, when - clock.seconds())
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        """Time out what is overdue; sleep until the next deadline (the timer is lazy:
        exchanges that end early cost nothing here)."""
        self._timer = None
        self._wake_at = INFINITY
        now = self.now()
        idle = self.settings.stream_idle_timeout
        wake = INFINITY
        for guard in list(self._inflight):
            if not guard.origin or guard.done:
                continue
            if guard.deadline <= now:
                guard.expire(
                    "request", f"{guard.service.key}: no response within {guard.timeout:g}s")
                continue
            # From the last activity (a timestamp the guard keeps), not from the sweep
            # that notices it: a silent stream is cut N seconds after its last byte.
            guard.idle_deadline = idle_deadline = guard.active_at + idle
            if idle_deadline <= now:
                guard.expire("idle", f"{guard.service.key}: no data for {idle:g}s")
                continue
            wake = min(wake, guard.deadline, idle_deadline)
        self.outliers.sweep(now)
        if wake < INFINITY:
            self._schedule(wake)

    def start_drain(self) -> None:
        """Refuse new exchanges from other nodes (they go elsewhere); those in progress
        and requests on open client connections are still served."""
        self.draining = True

    def cut_short(self, detail: str) -> int:
        """The drain deadline passed: every exchange still in progress ends now, answered
        503 ``draining`` with ``detail`` if its response has not begun (a client would
        otherwise see its connection closed with no answer).  Returns how many ended."""
        cut = 0
        for guard in list(self._inflight):
            if not guard.done:
                guard.expire("drain", detail)
                cut += 1
        return cut

    def when_drained(self) -> Deferred[None]:
        """Fires once no exchange is in progress."""
        if not self._inflight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def peer_draining(self, peer: str) -> None:
        """A peer said GOAWAY: choose its endpoints only when nothing else is left, for
        ``peer_drain_memory`` seconds or until it is back (``peer_back``)."""
        if peer == self.node:
            return
        if len(self._draining_peers) >= _MAX_SERVICES:
            self._draining_peers.clear()
        now = self.now()
        # Said once: a peer's GOAWAY comes on each of its links (hub in and out, tunnel).
        known = self._draining_peers.get(peer, 0.0) > now
        self._draining_peers[peer] = now + self.settings.peer_drain_memory
        self._refilter()
        if not known:
            self.log.info("peer {peer} is draining: choosing its endpoints no more", peer=peer)

    def peer_back(self, peer: str) -> None:
        if self._draining_peers.pop(peer, None) is not None:
            self._refilter()
            self.log.info("peer {peer} is back", peer=peer)


def rules_table(rules: Mapping[SourceKind, Iterable[TargetKind]]) -> list[tuple[str, str]]:
    """(source, target) pairs, for documentation and the admin API."""
    return sorted((s.value, t.value) for s, ts in rules.items() for t in ts)
