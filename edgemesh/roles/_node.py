"""
The public builders: ``build_router`` (in ``_router``) and ``build_edge`` compose the
pipeline, its Sources and Targets, and the links, for one reactor.  ``twistd`` calls them
through the tap modules; an embedding application calls them directly.  This module has
the edge and what both roles share (``MeshNode``, listeners, the admin API).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.internet import ClientService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
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
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..catalog import Catalog, CatalogStore
from ..exchange import (
    IByteStream,
    IRequestBody,
    IResponder,
    ISource,
    IStreamSource,
    RequestHead,
    Role,
    SourceKind,
    TargetKind,
)
from ..observability import MeshObserver, ObservabilityConfig
from ..routing import ROUTER_PEER, Listening, Pipeline, Resilience
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
    TRIM_SETTING,
    Ack,
    CatalogPush,
    EdgeSet,
    GoAway,
    Limits,
    Request,
    StreamOpen,
)
from ._heap import HeapTrimmer, heap_trimmer, release_free_heap
from ._push import CatalogFollower, blocking_runner
from ._resilience import drain, track_link
from ._resolve import ANY_ROUTER, ResolvingEndpoint, resolvable

if TYPE_CHECKING:
    from ..capture import CaptureConfig
    from ..dns import DNSConfig
    from ._move import TunnelMover
    from ._router import RouterConfig

log = Logger()

TUNNEL_STABLE_AFTER = 10.0
"""A tunnel up this long (seconds) resets the edge's reconnect backoff when it is lost,
even without a catalog push (an older router whose catalog is pending sends none)."""


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
    malloc_trim_interval: float = 0.0
    """Seconds between two trims of the C heap (``malloc_trim``, roles/_heap.py), with one
    more a few seconds after a link closes; 0: never.  The twistd plugins set it
    (``--malloc-trim-interval``); like ``freeze_heap``, it is for a process that owns its heap."""
    splice: bool = True
    """Pod response bodies go to a plaintext link's socket by splice(2), and a plaintext
    link's on to a client's, never copied through the process (Linux; elsewhere, and over
    TLS, they are copied)."""
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
            endpoint if endpoint is not None else _Described(
                secure(clientFromString(reactor, description)), f"router at {description}"),
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

    def __repr__(self) -> str:  # ClientService's "Scheduling retry N to connect ..." line
        return "router replicas " + ", ".join(name for name, _ in self.endpoints)


@implementer(IStreamClientEndpoint)
class _Described:
    """An endpoint that reads as what it dials in ClientService's retry lines (instead of
    "<... object at 0x7f...>")."""

    def __init__(self, endpoint: IStreamClientEndpoint, description: str) -> None:
        self.endpoint = endpoint
        self.description = description

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.endpoint.connect(factory)

    def __repr__(self) -> str:
        return self.description


def _request_head(request: Request) -> RequestHead:
    """A Request frame's head: the one its decoder made (``request.head``, shared by the frames
    that repeat it: p2 edge-2, an init and a call less per exchange), else one of its fields
    (a frame built by hand): callers write ``request.head or _request_head(request)``."""
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
        self.heap: HeapTrimmer | None = None
        """Trims the C heap (the config's ``malloc_trim_interval``); None: never."""
        self.serving = False
        self.cut_drain: Callable[[], object] | None = None
        """While draining: ends the drain now (a second stop signal; roles/_resilience.py)."""
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
        factory = HTTPFrontFactory(self.reactor, kind, self.pipeline.dispatch, limits)
        factory.rejected = self.observer.rejected
        return factory

    def streaming_front(
        self, kind: SourceKind, limits: FrontLimits, outbound: bool = False
    ) -> StreamingFrontFactory:
        """The edge's proxy port, the router's listener: HTTP, and CONNECT to open byte
        streams (issue 12); ``outbound``: CONNECT to names outside the catalog goes straight
        out of this node."""
        pipeline = self.pipeline

        def open_stream(authority: bytes, client: str, source: IStreamSource) -> IByteStream:
            return pipeline.dispatch_stream(kind, authority, client, source)

        factory = StreamingFrontFactory(self.reactor, kind, pipeline.dispatch, open_stream, limits)
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
            # What imports and start-up freed stays mapped otherwise: -1.5 MiB of an idle
            # edge's RssAnon.
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

    def link_gone(self, link: EnvelopeLink, reason: str) -> None:
        """A link of any kind closed: observed, and the heap trimmed soon after (what its
        streams held is being freed)."""
        self.observer.link_down(link, reason)
        if self.heap is not None:
            self.heap.soon()

    def stopService(self) -> Deferred[None] | None:
        self.serving = False
        # Graceful drain first (SIGTERM), then the children: see roles/_resilience.py.
        stopped = drain(self, self.pipeline.settings, super().stopService)
        # The last child may finish stopping inside a connection's dataReceived (the leader's
        # Lease release is an API response read over TLS).  The reactor's shutdown would go
        # on from there into disconnectAll, which closes that very connection under
        # Twisted's TLS layer, and the layer then fails ('NoneType' object has no attribute
        # 'bio_read', an Unhandled Error at every leader's stop).  So the stop is reported
        # one reactor turn later, with nothing on the stack.
        return stopped.addCallback(lambda _: deferLater(self.reactor, 0, lambda: None))

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
        self.edge.link_gone(link, reason)
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
            self.source, request.head or _request_head(request), responder, request.service,
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
        self.store_problems = tuple(problems)
        """Why the stored catalog files could not be used at start (/readyz says it)."""
        if catalog is None:
            catalog = config.catalog or Catalog.empty()
        super().__init__(reactor, Role.edge, config.node, catalog)
        self.config = config
        self.hub_dialer: HubDialer | None = None
        self.mover: TunnelMover | None = None
        """With several routers: moves the tunnel when its router drains (roles/_move.py)."""
        # Pushes are stored in a thread (real reactors), acked once durable, one write at a time.
        self.follower = CatalogFollower(
            self.store, lambda: self.catalog, self._set_catalog, blocking_runner(reactor),
            clock=reactor,
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
        self.follower.stop()  # no more retries of a write the disk refused
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
    node.heap = heap_trimmer(node.reactor, config.malloc_trim_interval)
    if node.heap is not None:
        node.heap.setServiceParent(node)  # type: ignore[no-untyped-call]
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
                                heartbeat_timeout=beats.heartbeat_timeout, splice=config.splice)
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
