"""
The public builders: ``build_router`` and ``build_edge`` compose the pipeline,
its Sources and Targets, and the links, for one reactor.  ``twistd`` calls them
through the tap modules; an embedding application calls them directly.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..catalog import ALL, SCOPE_ANNOTATION, Catalog, CatalogStore, Scope, ScopeError
from ..exchange import (
    IByteStream,
    IRequestBody,
    IResponder,
    ISource,
    IStreamSource,
    ITarget,
    RequestHead,
    Role,
    SourceKind,
    TargetKind,
)
from ..observability import MeshObserver, ObservabilityConfig
from ..routing import (
    REPLICA_RULES,
    ROUTER_PEER,
    EdgeHomes,
    Listening,
    Pipeline,
    Resilience,
    Route,
)
from ..security import LinkSecurity, TLSConfig, link_security
from ..transports import (
    EnvelopeLink,
    FrontLimits,
    HTTPFrontFactory,
    HTTPUpstreamTarget,
    HubDialer,
    LinkStreamTarget,
    LinkTarget,
    ReconnectBackoff,
    StreamingFrontFactory,
    TCPStreamTarget,
    ready_or_lost,
    with_backlog,
)
from ..wire import (
    MOVE_SETTING,
    NOT_READY,
    TRIM_SETTING,
    Ack,
    CatalogPush,
    EdgeSet,
    GoAway,
    Limits,
    Request,
    StreamOpen,
    encode_edges,
)
from ._kubernetes import KubernetesConfig, attach_kubernetes
from ._push import (
    DEFAULT_PUSH_INTERVAL,
    CatalogFollower,
    CatalogPusher,
    EdgeState,
    blocking_runner,
    held_from_settings,
)
from ._resilience import drain, track_link
from ._resolve import ANY_ROUTER, ResolvingEndpoint, resolvable

if TYPE_CHECKING:
    from ..capture import CaptureConfig
    from ..dns import DNSConfig
    from ._move import TunnelMover

log = Logger()

_NOT_READY_LOG_EVERY = 10.0
"""Seconds between two router log lines about edges refused while the catalog is pending."""
TUNNEL_STABLE_AFTER = 10.0
"""A tunnel up this long (seconds) resets the edge's reconnect backoff when it is lost,
even without a catalog push (an older router whose catalog is pending sends none)."""


@dataclass
class RouterConfig:
    """Everything ``build_router`` needs: listeners, limits, TLS, catalog and its source,
    resilience."""

    catalog: Catalog
    node: str = "router"
    tunnel: str = "tcp:7700"
    """Where edges connect (server endpoint string)."""
    http: str | None = "tcp:7780"
    """Where cloud apps send HTTP for edge services."""
    admin: str | None = None
    front: FrontLimits = field(default_factory=FrontLimits)
    wire: Limits = field(default_factory=Limits)
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    pool_idle_timeout: float = 60.0
    """Seconds an idle pooled connection to a pod or ClusterIP is kept (the client side's
    keep-alive idle timeout is ``front.idle_timeout``)."""
    freeze_heap: bool = False
    """``gc.freeze()`` at start: what is built by then lives as long as the process, and
    the cyclic GC need not rescan it.  The twistd plugins turn it on; a library must not
    freeze its host's heap, so embedding leaves it off."""
    tls: TLSConfig | None = None
    """Mutual TLS on the tunnels; None: plaintext (``--insecure``)."""
    push_interval: float = DEFAULT_PUSH_INTERVAL
    """Seconds between two catalog deltas to one edge, at least (bursts coalesce)."""
    catalog_pending: bool = False
    """The catalog comes from a source that has not listed yet: edges are refused (GOAWAY
    ``not-ready`` with ``not_ready_retry_after``) and keep theirs until the first
    ``set_catalog``."""
    not_ready_retry_after: int = 2
    """Seconds an edge refused while the catalog is not listed is told to wait at least
    (edges add up to half of it as jitter; their own backoff keeps growing past it)."""
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    """Access log and metrics bounds."""
    resilience: Resilience = field(default_factory=Resilience)
    """Retries, outlier ejection, overload limits, heartbeats, drain (its request_timeout
    is ``request_timeout`` above)."""
    edge_scope: Scope = ALL
    """Which Services each edge receives (``catalog/_scope.py``); a Node's
    ``edgemesh.io/scope`` annotation overrides it for that edge."""
    trim_endpoints: bool = False
    """Edges whose hello says ``trimmed`` receive other edge nodes' endpoints as aggregates
    (``catalog/_trim.py``); others, and all when False, every endpoint."""
    peer_listen: str | None = None
    """Where other router replicas connect (server endpoint string); None: no router links
    in (this replica still dials ``peer_routers``)."""
    peer_routers: tuple[tuple[str, str], ...] = ()
    """Other replicas as (node name, client endpoint string): of each pair, the replica with
    the smaller name dials (one link per pair); this replica's own name is skipped."""
    kubernetes: KubernetesConfig | None = None
    """The catalog from the Kubernetes API (and the EndpointSlice controller, the Lease
    election, replica discovery); None: ``catalog`` alone.  With it the catalog is pending
    (see ``catalog_pending``) until the watch has listed everything."""


@dataclass
class EdgeConfig:
    """Everything ``build_edge`` needs: node name, state directory, router, listeners, limits, TLS.
    """

    node: str
    state_dir: str
    router: str | None = None
    """The router's tunnel (client endpoint string); None: run without a router."""
    routers: tuple[str, ...] = ()
    """More router replicas' tunnels (client endpoint strings, each optionally prefixed
    ``NAME=``, the replica's certificate name, else ``router_name``): each dial of the
    tunnel tries the next one, ``router`` first (see RotatingEndpoint)."""
    proxy: str | None = "tcp:7781"
    """The service bus listener for local apps."""
    hub: str | None = "tcp:7701"
    """Where other edges connect."""
    catalog: Catalog | None = None
    """The catalog to start from when the state directory has none."""
    admin: str | None = None
    front: FrontLimits = field(default_factory=FrontLimits)
    wire: Limits = field(default_factory=Limits)
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    pool_idle_timeout: float = 60.0
    """Seconds an idle pooled connection to a pod or ClusterIP is kept (the client side's
    keep-alive idle timeout is ``front.idle_timeout``)."""
    freeze_heap: bool = False
    """``gc.freeze()`` at start: what is built by then lives as long as the process, and
    the cyclic GC need not rescan it.  The twistd plugins turn it on; a library must not
    freeze its host's heap, so embedding leaves it off."""
    tls: TLSConfig | None = None
    """Mutual TLS on the tunnel and hub links; None: plaintext (``--insecure``)."""
    router_name: str = "router"
    """The router's node name: its TLS certificate must name it."""
    capture: CaptureConfig | None = None
    """Transparent capture: iptables REDIRECT to a listener reading SO_ORIGINAL_DST."""
    dns: DNSConfig | None = None
    """The DNS server for service names (from the live catalog)."""
    outbound: str = "deny"
    """CONNECT to a name the catalog does not know: ``deny`` (the mesh's 404) or ``allow``
    (a direct TCP connection from this node)."""
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    """Access log and metrics bounds."""
    resilience: Resilience = field(default_factory=Resilience)
    """Retries, outlier ejection, overload limits, heartbeats, drain (its request_timeout
    is ``request_timeout`` above)."""


@implementer(ISource)
class Listener(Service):
    """A Source that listens on a server endpoint string.  Binds in
    privilegedStartService and raises there, so a bad or busy port stops
    twistd at start instead of leaving a half-configured process.  An endpoint whose
    listen does not answer at once (systemd socket activation, a plugin's endpoint) is
    waited for, as Twisted's ``StreamServerEndpointService`` does: the port is taken when
    it comes, a failure then is logged, and stopping cancels the wait."""

    def __init__(
        self, reactor: Any, kind: SourceKind | None, description: str, factory: IProtocolFactory
    ) -> None:
        self.reactor = reactor
        self.kind = kind
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None
        self._waiting: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.port is not None or self._waiting is not None:
            return
        # A large listen queue unless the endpoint string names one (see DEFAULT_BACKLOG).
        endpoint = serverFromString(self.reactor, with_backlog(self.description))
        listening: Deferred[IListeningPort] = endpoint.listen(self.factory)
        if listening.called:  # TCP, SSL, UNIX: at once, so a busy port stops twistd here
            outcome: list[IListeningPort | Failure] = []
            listening.addBoth(outcome.append)
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()
            self.port = outcome[0]
            return
        self._waiting = listening
        listening.addCallbacks(self._listening, self._not_listening)

    def _listening(self, port: IListeningPort) -> None:
        self._waiting = None
        self.port = port

    def _not_listening(self, failure: Failure) -> None:
        if self._waiting is None:  # stopped meanwhile: the wait was cancelled
            return
        self._waiting = None
        log.failure("listener {description} could not listen", failure,
                    description=self.description)

    def startService(self) -> None:
        if self.port is None and self._waiting is None:
            self.privilegedStartService()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()  # _not_listening sees it was cancelled on purpose
        port, self.port = self.port, None
        if port is not None:
            stopped: Deferred[None] | None = port.stopListening()
            return stopped
        return None

    @property
    def address(self) -> Any:
        return None if self.port is None else self.port.getHost()

    def listening(self, name: str) -> Listening | None:
        """The TCP socket it is bound to, named ``name``; None when not bound (or not TCP)."""
        address = self.address
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if isinstance(host, str) and isinstance(port, int):
            return Listening(name, host, port)
        return None


@implementer(ISource)
class TunnelClient(ClientService):
    """The edge's Source/Target link to the router: connected and reconnected by ClientService."""

    def __init__(
        self,
        reactor: Any,
        description: str,
        make_link: Callable[[], EnvelopeLink],
        secure: Callable[[IStreamClientEndpoint], IStreamClientEndpoint] = (
            lambda endpoint: endpoint),
        backoff: ReconnectBackoff | None = None,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """``endpoint``: dial this instead of ``description`` (e.g. a RotatingEndpoint)."""
        self.kind = SourceKind.tunnel
        self.description = description
        self.backoff = backoff or ReconnectBackoff(initial=0.5, maximum=30.0, clock=reactor,
                                                   stable_after=TUNNEL_STABLE_AFTER)
        """Counts refusals after the hello too; reset once the router accepted the edge."""
        super().__init__(
            endpoint if endpoint is not None else secure(clientFromString(reactor, description)),
            Factory.forProtocol(make_link),
            retryPolicy=self.backoff,
            clock=reactor,
            prepareConnection=ready_or_lost,
        )


def router_entry(entry: str, default_name: str) -> tuple[str, str]:
    """``NAME=ENDPOINT`` or ``ENDPOINT`` → (name, endpoint string).  An endpoint string's
    own ``key=value`` parts come after its type's colon, so a name has no colon."""
    name, sep, rest = entry.partition("=")
    if sep and name and ":" not in name:
        return name, rest
    return default_name, entry


@implementer(IStreamClientEndpoint)
class RotatingEndpoint:
    """Several router replicas for one tunnel: every dial tries the next one, so an edge
    whose tunnel died (or whose dial failed) reconnects to another replica, after the
    ClientService's jittered backoff."""

    def __init__(self, endpoints: list[tuple[str, IStreamClientEndpoint]]) -> None:
        if not endpoints:
            raise ValueError("no router endpoint")
        self.endpoints = endpoints
        self.next = 0
        self.current: str | None = None
        """The name of the replica dialled last."""

    def prefer(self, name: str | None, avoid: str | None = None) -> None:
        """Make ``name`` the next one dialled (a draining router's hint), else skip
        ``avoid`` (the router being left) if it is next."""
        names = [n for n, _ in self.endpoints]
        if name is not None and name != avoid and name in names:
            self.next = names.index(name)
        elif names[self.next] == avoid and len(names) > 1:
            self.next = (self.next + 1) % len(names)

    def upcoming(self) -> str:
        return self.endpoints[self.next][0]

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        name, endpoint = self.endpoints[self.next]
        self.next = (self.next + 1) % len(self.endpoints)
        self.current = name
        return endpoint.connect(factory)


def _request_head(request: Request) -> RequestHead:
    return RequestHead(
        request.method, request.path, request.authority, request.headers,
        request.content_length, request.client, request.hops,
    )


class MeshNode(MultiService):
    """A running router or edge: a service tree plus the pipeline it serves."""

    def __init__(self, reactor: Any, role: Role, node: str, catalog: Catalog) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.role = role
        self.pipeline = Pipeline(role, node, catalog, clock=reactor)
        self.observer = MeshObserver(reactor, role, node)
        self.observer.attach(self.pipeline)
        self.links: dict[str, EnvelopeLink] = {}
        self.listeners: dict[str, Listener] = {}
        self.freeze_heap = False
        """``gc.freeze()`` at start (the config's ``freeze_heap``)."""
        self.serving = False
        self.started_at = 0.0
        self.status_parts: dict[str, Callable[[], object]] = {}
        """More sections of ``status()`` (e.g. the Kubernetes watch), by name."""
        self.more_listening: list[Callable[[], list[Listening]]] = []
        """Sockets bound outside ``listeners`` (the router's stream ports, which come and
        go with the slices): they are this node's too, for the routing-loop check."""

    @property
    def catalog(self) -> Catalog:
        return self.pipeline.catalog

    def listen(self, name: str, kind: SourceKind, description: str,
               factory: IProtocolFactory) -> Listener:
        listener = Listener(self.reactor, kind, description, factory)
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.listeners[name] = listener
        self.pipeline.add_source(listener)
        return listener

    def front(self, kind: SourceKind, limits: FrontLimits) -> HTTPFrontFactory:
        dispatch = self.pipeline.dispatch

        def route(head: RequestHead, responder: IResponder) -> IRequestBody:
            return dispatch(kind, head, responder)

        factory = HTTPFrontFactory(self.reactor, route, limits)
        factory.rejected = self.observer.rejected
        return factory

    def streaming_front(
        self, kind: SourceKind, limits: FrontLimits, outbound: bool = False
    ) -> StreamingFrontFactory:
        """The edge's proxy port, the router's listener: HTTP, and CONNECT to open byte
        streams (issue 12); ``outbound``: CONNECT to names outside the catalog goes straight
        out of this node."""
        pipeline = self.pipeline

        def route(head: RequestHead, responder: IResponder) -> IRequestBody:
            return pipeline.dispatch(kind, head, responder)

        def open_stream(authority: bytes, client: str, source: IStreamSource) -> IByteStream:
            return pipeline.dispatch_stream(kind, authority, client, source)

        factory = StreamingFrontFactory(self.reactor, route, open_stream, limits)
        factory.rejected = self.observer.rejected
        if outbound:
            factory.outbound = partial(_outbound, pipeline, kind)
        return factory

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        # Everything built so far (Twisted, the Kubernetes client's models, the catalog)
        # lives as long as the process: keep it out of every future garbage collection,
        # which otherwise rescans it each time per-request cycles trigger one.  Only when
        # this node is the process (twistd), never inside someone else's.  Collect first:
        # start-up garbage frozen would never be freed.
        if self.freeze_heap:
            gc.collect()
            gc.freeze()
            release_free_heap()
        self.serving = True
        self.started_at = self.reactor.seconds()
        # Bound now: endpoints that are one of these sockets are refused (routing loops).
        self.pipeline.set_listening(self.listening())

    def listening(self) -> list[Listening]:
        """This node's bound TCP sockets (every listener, the admin API included)."""
        found = [entry for name, listener in self.listeners.items()
                 if (entry := listener.listening(name)) is not None]
        for more in self.more_listening:
            found.extend(more())
        return found

    def listening_changed(self) -> None:
        """A socket outside ``listeners`` was bound or closed: refresh the loop check (once
        the node serves; ``startService`` does it first)."""
        if self.serving:
            self.pipeline.set_listening(self.listening())

    def stopService(self) -> Deferred[None] | None:
        self.serving = False
        # Graceful drain first (SIGTERM), then the children: see roles/_resilience.py.
        return drain(self, self.pipeline.settings, super().stopService)

    def status(self) -> dict[str, object]:
        return {
            "role": self.role.value,
            "node": self.pipeline.node,
            "serving": self.serving,
            "catalog_revision": self.catalog.revision,
            "links": sorted(self.links),
            **{name: part() for name, part in self.status_parts.items()},
        }


def _outbound(
    pipeline: Pipeline, kind: SourceKind, authority: bytes, client: str, source: IStreamSource
) -> IByteStream:
    host, _, port = authority.decode("ascii").rpartition(":")
    return pipeline.dispatch_outbound(kind, host.strip("[]"), int(port), client, source)


def release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim; else a no-op)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    # What imports and start-up freed stays mapped otherwise: -1.5 MiB of an idle edge's RssAnon.
    trim(0)


class RouterNode(MeshNode):
    """The cloud router: accepts edge tunnels, pushes the catalog, routes cloud apps' requests."""

    def __init__(self, reactor: Any, config: RouterConfig) -> None:
        super().__init__(reactor, Role.router, config.node, config.catalog)
        self.config = config
        self.edges: dict[str, EdgeState] = {}
        self._scopes: dict[str, Scope] = {}
        self.pusher = CatalogPusher(reactor, lambda: self.catalog, config.push_interval,
                                    self.scope_of)
        self.catalog_pending = config.catalog_pending or config.kubernetes is not None
        self.security: LinkSecurity = link_security(
            reactor, config.tls, node=config.node, role=Role.router.value)
        self.security.service.setServiceParent(self)
        self.not_ready_refusals = 0
        """Edges refused since the catalog became pending (logged in summary)."""
        self._not_ready_logged: float | None = None
        self.router_links: dict[str, EnvelopeLink] = {}
        """Links to the other router replicas, by node name."""
        self.homes = EdgeHomes(lambda edge: edge in self.edges)
        self.pipeline.edge_homes = self.homes.home
        self.forwarded_out = 0
        """Exchanges sent to another replica (it holds the edge's tunnel)."""
        self.forwarded_in = 0
        """Exchanges another replica sent here for an edge of this replica."""
        self.make_dialler: Callable[[str, str], ClientService] | None = None
        self.diallers: dict[str, tuple[str, ClientService]] = {}
        self._hinted: dict[str, int] = {}
        """Edges told to move to each replica during this drain."""
        self._moving: set[str] = set()
        self._moved_waiters: list[Deferred[None]] = []
        """Peer replicas this one dials (those with a larger name): name → (endpoint, dialler)."""

    def knows_edge(self, name: str) -> bool:
        """For the hello check: whether the catalog has ``name`` as an edge node.  Before
        the catalog is listed, every name passes here and ``link_ready`` answers not-ready
        (the catalog cannot tell, and "not an edge node" would send the operator astray)."""
        return self.catalog_pending or self.catalog.is_edge(name)

    # LinkHandler
    def link_ready(self, link: EnvelopeLink) -> None:
        peer = link.peer
        assert peer is not None
        if peer.role != Role.edge.value:
            log.warn(
                "refusing link from {node}: role {role} is not edge", node=peer.node,
                role=peer.role)
            link.close_now("not an edge")
            return
        if self.catalog_pending:
            self._refuse_not_ready(link, peer.node)
            return
        previous = self.edges.get(peer.node)
        if previous is not None and previous.link is not link:
            previous.link.close_now("replaced by a new connection")
        self.links[peer.node] = link
        state = EdgeState(peer.node, self.reactor.seconds(), link,
                          trim=self.config.trim_endpoints
                          and peer.settings.get(TRIM_SETTING, 0) >= 1)
        self.edges[peer.node] = state
        self.observer.link_up(peer.node, "tunnel", link)
        self.pipeline.peer_back(peer.node)
        log.info("edge {node} connected", node=peer.node)
        self.announce([peer.node], [])
        if not self.catalog_pending:
            held = held_from_settings(peer.settings)
            kind = self.pusher.first_push(state, held)
            if held is not None:
                log.info("edge {node} holds revision {held}: sent a {kind}", node=peer.node,
                         held=held[0], kind=kind)

    def _refuse_not_ready(self, link: EnvelopeLink, node: str) -> None:
        wait = self.config.not_ready_retry_after
        self.not_ready_refusals += 1
        now = self.reactor.seconds()
        # One line per _NOT_READY_LOG_EVERY seconds, not one per edge (thousands may knock).
        if self._not_ready_logged is None or now - self._not_ready_logged >= _NOT_READY_LOG_EVERY:
            self._not_ready_logged = now
            log.warn(
                "refusing edge {node} ({count} refused so far): the catalog is not listed yet "
                "(the catalog source has not listed; see /readyz); edges are told to retry after "
                "{wait}s", node=node, count=self.not_ready_refusals, wait=wait,
            )
        link.refuse(NOT_READY, "the router's catalog is not listed yet", retry_after=wait)

    def push_snapshot(self, state: EdgeState) -> None:
        self.pusher.snapshot(state)

    def scope_of(self, node: str, catalog: Catalog) -> Scope:
        """``node``'s scope: its Node's annotation, else ``--edge-scope``."""
        record = catalog.node(node)
        written = record.scope if record is not None else None
        if not written:
            return self.config.edge_scope
        scope = self._scopes.get(written)
        if scope is None:
            try:
                scope = Scope.parse(written)
            except ScopeError as error:
                log.warn("node {node}: annotation {name}: {error}; using --edge-scope {scope}",
                         node=node, name=SCOPE_ANNOTATION, error=str(error),
                         scope=str(self.config.edge_scope))
                scope = self.config.edge_scope
            if len(self._scopes) < 4096:  # a bound: annotations are few in practice
                self._scopes[written] = scope
        return scope

    def set_catalog(self, catalog: Catalog) -> None:
        """Replace the catalog and push it to every connected edge: at once, or, within
        ``push_interval`` of the last push to an edge, at the end of that interval."""
        current = self.catalog
        if catalog.revision <= current.revision and not self.catalog_pending:
            # Edges take only newer revisions: keep them growing whatever the caller says.
            catalog = catalog.with_revision(current.revision + 1)
        if self.catalog_pending and self.not_ready_refusals:
            log.info("catalog listed: edges are accepted now ({count} connections were refused "
                     "while it was not)", count=self.not_ready_refusals)
        self.catalog_pending = False
        self.not_ready_refusals = 0
        self._not_ready_logged = None
        self.pipeline.catalog = catalog
        self.pusher.changed(list(self.edges.values()))

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        self.observer.link_down(link, reason)
        peer = link.peer
        if peer is None:
            return
        state = self.edges.get(peer.node)
        if state is not None and state.link is link:
            self.pusher.cancel(state)
            del self.edges[peer.node]
            self.links.pop(peer.node, None)
            log.info("edge {node} disconnected: {reason}", node=peer.node, reason=reason)
            self.announce([], [peer.node])
            if self._moving:
                self._moved(peer.node)

    def inbound(self, link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        return self.pipeline.dispatch_resolved(
            SourceKind.tunnel, _request_head(request), responder, request.service,
            request.port, request.endpoint
        )

    def inbound_stream(self, link: EnvelopeLink, frame: StreamOpen,
                       source: IStreamSource) -> IByteStream:
        return self.pipeline.dispatch_stream_resolved(
            SourceKind.tunnel, frame.service, frame.port, frame.endpoint, frame.client, source
        )

    def control(self, link: EnvelopeLink, frame: CatalogPush | Ack | GoAway | EdgeSet) -> None:
        peer = link.peer
        if isinstance(frame, GoAway) and peer is not None and not frame.refusal:
            self.pipeline.peer_draining(peer.node)  # it is stopping: choose it no more
        if isinstance(frame, Ack) and peer is not None:
            state = self.edges.get(peer.node)
            if state is not None and state.link is link:
                self.pusher.acked(state, frame.revision)

    def edges_view(self) -> list[dict[str, object]]:
        """The edges whose tunnel is on this replica."""
        now = self.reactor.seconds()
        return [
            {
                "node": s.node,
                "connected_since": s.connected_since,
                "connected_for": round(now - s.connected_since, 3),
                "acked_revision": s.acked,
                "lag": self.pusher.lag(s),
                "rtt": s.link.rtt,
            }
            for s in sorted(self.edges.values(), key=lambda s: s.node)
        ]

    def all_edges_view(self) -> list[dict[str, object]]:
        """``/edges``: this replica's edges, then those the other replicas hold."""
        here = self.pipeline.node
        local: list[dict[str, object]] = [
            {"node": row["node"], "replica": here, "local": True, **row}
            for row in self.edges_view()
        ]
        remote: list[dict[str, object]] = [
            {"node": edge, "replica": replica, "local": False}
            for edge, replica in self.homes.remote().items()
        ]
        return sorted([*local, *remote], key=lambda row: str(row["node"]))

    # --- router replicas --------------------------------------------------------------

    def announce(self, added: list[str], removed: list[str]) -> None:
        """Tell every other replica that edges came (or went)."""
        if not self.router_links:
            return
        frame = encode_edges(False, added, removed)
        for link in self.router_links.values():
            link.send_control(frame)

    def router_ready(self, link: EnvelopeLink) -> None:
        peer = link.peer
        assert peer is not None
        if peer.role != Role.router.value or peer.node == self.pipeline.node:
            log.warn("refusing router link from {node} ({role})", node=peer.node, role=peer.role)
            link.close_now("not another router")
            return
        previous = self.router_links.get(peer.node)
        if previous is not None and previous is not link:
            previous.close_now("replaced by a new connection")
        self.router_links[peer.node] = link
        self.observer.link_up(peer.node, "router", link)
        log.info("router link to {node} up", node=peer.node)
        # Our whole set first; changes follow on the same link, in order.
        link.send_control(encode_edges(True, sorted(self.edges), []))

    def router_lost(self, link: EnvelopeLink, reason: str) -> None:
        self.observer.link_down(link, reason)
        peer = link.peer
        if peer is not None and self.router_links.get(peer.node) is link:
            del self.router_links[peer.node]
            self.homes.forget(peer.node)
            log.info("router link to {node} lost: {reason}", node=peer.node, reason=reason)

    def router_control(self, link: EnvelopeLink,
                       frame: CatalogPush | Ack | GoAway | EdgeSet) -> None:
        peer = link.peer
        if (isinstance(frame, EdgeSet) and peer is not None
                and self.router_links.get(peer.node) is link):
            self.homes.update(peer.node, frame.reset, frame.added, frame.removed)

    def router_inbound(self, link: EnvelopeLink, request: Request,
                       responder: IResponder) -> IRequestBody:
        self.forwarded_in += 1
        return self.pipeline.dispatch_resolved(
            SourceKind.router_link, _request_head(request), responder,
            request.service, request.port, request.endpoint,
        )

    def set_peers(self, peers: list[tuple[str, str]]) -> None:
        """The other replicas, (node name, endpoint string): the static ``peer_routers``
        and what discovery finds.  Of each pair the smaller name dials; a replica that is
        gone (or moved) has its dialler stopped (ClientService closes its link)."""
        make = self.make_dialler
        if make is None:
            return
        me = self.pipeline.node
        wanted = {name: endpoint for name, endpoint in peers if name > me}
        for name in [n for n in self.diallers if wanted.get(n) != self.diallers[n][0]]:
            _, dialler = self.diallers.pop(name)
            dialler.disownServiceParent()
        for name, endpoint in wanted.items():
            if name not in self.diallers:
                dialler = make(name, endpoint)
                self.diallers[name] = (endpoint, dialler)
                dialler.setServiceParent(self)

    def move_hint(self, link: EnvelopeLink) -> str | None:
        """Draining: the replica an edge of this one should move to (the linked replica with
        the fewest edges, counting those already sent there), None for other links."""
        peer = link.peer
        if peer is None or peer.role != Role.edge.value or not self.router_links:
            return None
        hinted = self._hinted
        chosen = min(sorted(self.router_links),
                     key=lambda r: self.homes.count(r) + hinted.get(r, 0))
        hinted[chosen] = hinted.get(chosen, 0) + 1
        self._moving.add(peer.node)
        return chosen

    def when_moved(self) -> Deferred[None]:
        """Draining: fires once every edge told to move has closed its tunnel here."""
        if not any(edge in self.edges for edge in self._moving):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._moved_waiters.append(waiter)
        return waiter

    def _moved(self, edge: str) -> None:
        self._moving.discard(edge)
        if self._moved_waiters and not any(e in self.edges for e in self._moving):
            waiters, self._moved_waiters = self._moved_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def routers_status(self) -> dict[str, object]:
        """``/status`` and ``/readyz``: the other replicas this one sees."""
        return {
            "peers": len(self.router_links),
            "linked": sorted(self.router_links),
            "configured": sorted(name for name, _ in self.config.peer_routers
                                 if name != self.pipeline.node),
            "dialling": sorted(self.diallers),
            "edges_elsewhere": {r: self.homes.count(r) for r in self.homes.replicas()},
            "forwarded_out": self.forwarded_out,
            "forwarded_in": self.forwarded_in,
            "catalog_pushes": dict(self.pusher.pushes),
        }


class _RouterLinks:
    """The router's LinkHandler for links to other router replicas (either direction)."""

    def __init__(self, router: RouterNode) -> None:
        self.router = router

    def link_ready(self, link: EnvelopeLink) -> None:
        self.router.router_ready(link)

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        self.router.router_lost(link, reason)

    def inbound(self, link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        return self.router.router_inbound(link, request, responder)

    def control(self, link: EnvelopeLink, frame: CatalogPush | Ack | GoAway | EdgeSet) -> None:
        self.router.router_control(link, frame)


@implementer(ITarget)
class _ForwardTarget:
    """The router-link target: a LinkTarget to the replica holding the edge, counted."""

    kind = TargetKind.router_link

    def __init__(self, router: RouterNode) -> None:
        self.router = router
        self.inner = LinkTarget(TargetKind.router_link, router.router_links)

    def open(self, route: Route, head: RequestHead, responder: IResponder) -> IRequestBody:
        self.router.forwarded_out += 1
        return self.inner.open(route, head, responder)


class _EdgeLinks:
    """The edge's LinkHandler for one kind of link (router tunnel, hub in, hub out)."""

    def __init__(self, edge: EdgeNode, source: SourceKind, expect: str | None) -> None:
        self.edge = edge
        self.source = source
        self.expect = expect

    def link_ready(self, link: EnvelopeLink) -> None:
        peer = link.peer
        assert peer is not None
        wanted_role = Role.router.value if self.source is SourceKind.tunnel else Role.edge.value
        if peer.role != wanted_role or (
                self.expect not in (None, ROUTER_PEER) and peer.node != self.expect):
            log.warn("refusing link from {node} ({role})", node=peer.node, role=peer.role)
            link.close_now("unexpected peer")
            return
        if self.source is SourceKind.tunnel:
            self.edge.links[ROUTER_PEER] = link
            if self.edge.tunnel is not None:
                self.edge.tunnel.backoff.link_up()
            log.info("connected to router {node}", node=peer.node)
            if self.edge.mover is not None:
                self.edge.mover.ready(link)
        elif self.expect is not None:
            self.edge.links[self.expect] = link
        kind = ("tunnel" if self.source is SourceKind.tunnel
                else "hub-in" if self.expect is None else "hub-out")
        self.edge.observer.link_up(peer.node, kind, link)
        self.edge.pipeline.peer_back(peer.node)

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        self.edge.observer.link_down(link, reason)
        if self.source is SourceKind.tunnel and self.edge.mover is not None:
            self.edge.mover.lost(link)
        for name, known in list(self.edge.links.items()):
            if known is link:
                del self.edge.links[name]
                if name == ROUTER_PEER:
                    log.info("tunnel to router lost: {reason}", reason=reason)

    def inbound_stream(self, link: EnvelopeLink, frame: StreamOpen,
                       source: IStreamSource) -> IByteStream:
        return self.edge.pipeline.dispatch_stream_resolved(
            self.source, frame.service, frame.port, frame.endpoint, frame.client, source
        )

    def inbound(self, link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        return self.edge.pipeline.dispatch_resolved(
            self.source, _request_head(request), responder, request.service,
            request.port, request.endpoint
        )

    def control(self, link: EnvelopeLink, frame: CatalogPush | Ack | GoAway | EdgeSet) -> None:
        if isinstance(frame, CatalogPush) and self.source is SourceKind.tunnel:
            self.edge.tunnel_accepted()
            self.edge.apply_push(link, frame)
        elif isinstance(frame, GoAway) and frame.refusal:
            # The peer refused this link: it closes it; say why, and when to come back.
            if self.source is SourceKind.tunnel:
                self.edge.tunnel_refused(frame)
            else:
                log.warn(
                    "{node} refused this edge's link: {reason}", node=link.peer_name,
                    reason=frame.reason)
        elif isinstance(frame, GoAway) and link.peer is not None and self.source is SourceKind.hub:
            self.edge.pipeline.peer_draining(link.peer.node)  # it is stopping: choose it no more
        elif (isinstance(frame, GoAway) and self.source is SourceKind.tunnel
              and self.edge.mover is not None):
            self.edge.mover.goaway(link, frame.move_to)  # its router drains: go to another


class EdgeNode(MeshNode):
    """An edge node's service bus: local apps in, pods / other edges / the router out."""

    def __init__(self, reactor: Any, config: EdgeConfig) -> None:
        self.store = CatalogStore(config.state_dir)
        catalog, problems = self.store.load()
        for problem in problems:
            log.warn("catalog store: {problem}", problem=problem)
        if catalog is None:
            catalog = config.catalog or Catalog.empty()
        super().__init__(reactor, Role.edge, config.node, catalog)
        self.config = config
        self.hub_dialer: HubDialer | None = None
        self.mover: TunnelMover | None = None
        """With several routers: moves the tunnel when its router drains (roles/_move.py)."""
        # Pushes are stored in a thread (real reactors), acked once durable, one write at a time.
        self.follower = CatalogFollower(
            self.store, lambda: self.catalog, self._set_catalog, blocking_runner(reactor)
        )
        self.security: LinkSecurity = link_security(
            reactor, config.tls, node=config.node, role=Role.edge.value)
        self.security.service.setServiceParent(self)
        self.tunnel: TunnelClient | None = None

    # The tunnel's reconnect backoff starts over only once the router accepted this edge
    # (its first catalog push) or the tunnel stayed up: a refusal right after the hello is
    # a failed attempt like a failed dial (see transports/_backoff.py).

    def tunnel_accepted(self) -> None:
        if self.tunnel is not None:
            self.tunnel.backoff.reset()

    def tunnel_refused(self, frame: GoAway) -> None:
        wait = frame.retry_after
        if self.tunnel is not None and wait is not None:
            self.tunnel.backoff.retry_after(wait)
        log.warn("the router refused this edge: {reason}{retry}", reason=frame.reason,
                 retry="" if wait is None else f" (retry after {wait}s, asked the router)")

    def stopService(self) -> Deferred[None] | None:
        stopped = super().stopService()
        dialer = self.hub_dialer
        if dialer is None:
            return stopped
        if stopped is None:
            dialer.stop()
            return None

        def stop_dialer(result: None) -> None:
            dialer.stop()  # after the drain: exchanges over hub links finish first
            return result

        return stopped.addCallback(stop_dialer)

    def apply_push(self, link: EnvelopeLink, push: CatalogPush) -> None:
        """A snapshot or a delta from the router (see roles/_push.py for the rules)."""
        self.follower.apply(link, push)

    def _set_catalog(self, catalog: Catalog) -> None:
        self.pipeline.catalog = catalog

    def listening(self) -> list[Listening]:
        found = super().listening()
        dns = self.config.dns
        if dns is not None:
            found.append(Listening("dns", dns.address, dns.port))
        return found

    def hub_endpoint(self, peer: str) -> IStreamClientEndpoint | None:
        node = self.catalog.node(peer)
        if node is None or node.hub_host is None:
            return None
        # An endpoint object, not a string: strings take whole seconds only (0.5 s would be 0).
        make = TCP6ClientEndpoint if ":" in node.hub_host else TCP4ClientEndpoint
        endpoint = make(
            self.reactor, node.hub_host, node.hub_port, timeout=self.config.connect_timeout)
        return self.security.client_endpoint(endpoint, peer)


def _configure(node: MeshNode, config: RouterConfig | EdgeConfig, upstream: TargetKind) -> Pipeline:
    """What both roles share: observability, resilience, and the HTTP target that leaves
    this node for pods (edge) or ClusterIPs (router)."""
    node.observer.configure(config.observability)
    node.freeze_heap = config.freeze_heap
    pipeline = node.pipeline
    pipeline.configure(replace(config.resilience, request_timeout=config.request_timeout))
    pipeline.add_target(
        HTTPUpstreamTarget(
            node.reactor, upstream,
            connect_timeout=config.connect_timeout, request_timeout=config.request_timeout,
            idle_timeout=config.pool_idle_timeout,
        )
    )
    pipeline.add_stream_target(
        TCPStreamTarget(node.reactor, upstream, connect_timeout=config.connect_timeout)
    )
    return pipeline


def build_router(reactor: Any, config: RouterConfig) -> RouterNode:
    """The cloud router, ready to start (``startService``) in ``reactor``."""
    node = RouterNode(reactor, config)
    pipeline = _configure(node, config, TargetKind.cluster_ip)
    beats = config.resilience
    pipeline.add_target(LinkTarget(TargetKind.tunnel, node.links))
    pipeline.add_stream_target(LinkStreamTarget(TargetKind.tunnel, node.links))

    def make_link() -> EnvelopeLink:
        link = EnvelopeLink(reactor, node, node=config.node, role=Role.router.value,
                            client=False, limits=config.wire,
                            heartbeat_interval=beats.heartbeat_interval,
                            heartbeat_timeout=beats.heartbeat_timeout)
        track_link(node, link)
        # Only edges, and only those the catalog knows; with TLS, as their certificates say.
        return node.security.guard(link, role=Role.edge.value, known=node.knows_edge)

    node.listen(
        "tunnel", SourceKind.tunnel, config.tunnel,
        node.security.server_factory(Factory.forProtocol(make_link)))
    _router_links(node, config)
    if config.http is not None:
        node.listen("http", SourceKind.router, config.http,
                    node.streaming_front(SourceKind.router, config.front))
    if config.admin is not None:
        _admin(node, config.admin)
    if config.kubernetes is not None:
        attach_kubernetes(node, reactor, config.kubernetes)
    return node


def _router_links(node: RouterNode, config: RouterConfig) -> None:
    """Links to the other router replicas: listen for them, dial those with a larger name."""
    if config.peer_listen is None and not config.peer_routers:
        return  # a single router: no router-link target
    reactor = node.reactor
    beats = config.resilience
    handler = _RouterLinks(node)
    node.pipeline.add_target(_ForwardTarget(node))
    node.pipeline.rules = dict(REPLICA_RULES)
    # An edge that sent before it read GOAWAY has no other way: serve it (the drain waits
    # for the edges it tells to move, and they leave once nothing is in flight).
    node.pipeline.served_while_draining = frozenset({SourceKind.tunnel})
    node.status_parts["routers"] = node.routers_status

    def make(client: bool, expect: str | None) -> EnvelopeLink:
        link = EnvelopeLink(reactor, handler, node=config.node,
                            role=Role.router.value, client=client,
                            limits=config.wire, heartbeat_interval=beats.heartbeat_interval,
                            heartbeat_timeout=beats.heartbeat_timeout)
        track_link(node, link)
        return node.security.guard(link, role=Role.router.value, expect=expect,
                                   known=lambda name: name != config.node)

    if config.peer_listen is not None:
        node.listen("peer", SourceKind.router_link, config.peer_listen,
                    node.security.server_factory(Factory.forProtocol(lambda: make(False, None))))
    def dialling(name: str) -> IProtocolFactory:
        return Factory.forProtocol(lambda: make(True, name))

    def dialler(name: str, description: str) -> ClientService:
        return ClientService(
            node.security.client_endpoint(clientFromString(reactor, description), name),
            dialling(name),
            # Replicas come back quickly (a pod restart): never wait long between tries.
            retryPolicy=backoffPolicy(initialDelay=0.25, maxDelay=2.0),
            clock=reactor,
            prepareConnection=ready_or_lost,
        )

    node.make_dialler = dialler
    node.set_peers(list(config.peer_routers))


def build_edge(reactor: Any, config: EdgeConfig) -> EdgeNode:
    """An edge node's service bus, ready to start (``startService``) in ``reactor``."""
    node = EdgeNode(reactor, config)
    pipeline = _configure(node, config, TargetKind.service_bus)
    beats = config.resilience
    entries = [router_entry(entry, config.router_name)
               for entry in ((config.router, *config.routers) if config.router else ())]
    # Several replicas: listed, or behind a name that resolves to several addresses.
    several = len(entries) > 1 or any(resolvable(d) or n == ANY_ROUTER for n, d in entries)

    def link_factory(source: SourceKind, expect: str | None,
                     client: bool) -> Callable[[], EnvelopeLink]:
        handler = _EdgeLinks(node, source, expect)

        def make() -> EnvelopeLink:
            link = EnvelopeLink(reactor, handler, node=config.node,
                                role=Role.edge.value, client=client,
                                limits=config.wire, heartbeat_interval=beats.heartbeat_interval,
                                heartbeat_timeout=beats.heartbeat_timeout)
            track_link(node, link)
            if source is SourceKind.tunnel:
                # It reads trimmed catalogs; with replicas, GOAWAY's move-to hint.
                link.hello_settings = {TRIM_SETTING: 1, **({MOVE_SETTING: 1} if several else {})}
            if source is SourceKind.tunnel:
                link.hello_extra = node.follower.held  # a rebase, not a snapshot, if it matches
            if source is SourceKind.tunnel:
                # Several replicas: TLS checked the name of the one dialled; any router then.
                name = None if several or config.router is None else \
                    router_entry(config.router, config.router_name)[0]
                return node.security.guard(link, role=Role.router.value, expect=name)
            return node.security.guard(link, role=Role.edge.value, expect=expect)

        return make

    dialer = HubDialer(
        reactor, node.hub_endpoint, lambda peer: link_factory(SourceKind.hub, peer, True)())
    pipeline.add_target(LinkTarget(TargetKind.hub, node.links, dialer))
    pipeline.peer_paths = dialer  # relay through the router while a hub cannot be dialled
    # While the tunnel moves to another router replica, exchanges wait for the new one.
    pipeline.add_target(LinkTarget(TargetKind.tunnel, node.links,
                                   lambda peer: node.mover.wait(peer) if node.mover else None))
    pipeline.add_stream_target(LinkStreamTarget(TargetKind.hub, node.links, dialer))
    pipeline.add_stream_target(LinkStreamTarget(TargetKind.tunnel, node.links))
    node.hub_dialer = dialer

    if config.router is not None:
        rotating = None
        if several or entries[0][1] != config.router:
            # Each replica's certificate names it: TLS pins the name per endpoint (any
            # router of the CA for ``*=``).
            rotating = RotatingEndpoint([
                (name, _router_endpoint(reactor, node, name, description))
                for name, description in entries
            ])
        # With several replicas, the admin API's source shows them all, in dialling order.
        shown = config.router if rotating is None else ", ".join((config.router, *config.routers))

        def make_tunnel() -> TunnelClient:
            return TunnelClient(reactor, shown, link_factory(SourceKind.tunnel, ROUTER_PEER, True),
                                lambda endpoint: node.security.client_endpoint(
                                    endpoint, config.router_name),
                                endpoint=rotating)

        tunnel = make_tunnel()
        if rotating is not None and several:
            from ._move import TunnelMover

            node.mover = TunnelMover(node, rotating, make_tunnel, tunnel,
                                     bound=max(config.connect_timeout * 2, 5.0))
            node.status_parts["tunnel"] = node.mover.status
        tunnel.setServiceParent(node)  # type: ignore[no-untyped-call]
        node.tunnel = tunnel
        pipeline.add_source(tunnel)
    if config.hub is not None:
        node.listen("hub", SourceKind.hub, config.hub, node.security.server_factory(
            Factory.forProtocol(link_factory(SourceKind.hub, None, False))))
    if config.proxy is not None:
        node.listen("proxy", SourceKind.service_bus, config.proxy,
                    node.streaming_front(SourceKind.service_bus, config.front,
                                          outbound=config.outbound == "allow"))
    if config.capture is not None or config.dns is not None:
        from ..capture import attach_capture_dns

        attach_capture_dns(node, config.capture, config.dns)
    if config.admin is not None:
        _admin(node, config.admin)
    return node


def _router_endpoint(reactor: Any, node: EdgeNode, name: str,
                     description: str) -> IStreamClientEndpoint:
    """One ``--router``: a name with several addresses is dialled one address at a time."""
    secure = partial(node.security.client_endpoint, peer=name)
    target = resolvable(description)
    if target is None:
        return secure(clientFromString(reactor, description))
    host, port, timeout = target
    return ResolvingEndpoint(reactor, host, port, timeout, secure=secure)


def _admin(node: MeshNode, description: str) -> None:
    from ._admin import admin_endpoint, admin_site

    # Not a Source: the admin API never carries exchanges.
    listener = Listener(node.reactor, None, admin_endpoint(description), admin_site(node))
    listener.setServiceParent(node)  # type: ignore[no-untyped-call]
    node.listeners["admin"] = listener
