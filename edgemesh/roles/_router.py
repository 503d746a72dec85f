"""
The cloud router: ``RouterConfig``, ``RouterNode`` and ``build_router`` (``_node`` has what
both roles share, and the edge).  Apart from the edge's module so that an edge never loads
the router's code, nor the catalog pusher's, the Kubernetes wiring's, the replicas' links.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from ..catalog import ALL, SCOPE_ANNOTATION, Catalog, Scope, ScopeError
from ..exchange import (
    IByteStream,
    IRequestBody,
    IResponder,
    IStreamSource,
    ITarget,
    RequestHead,
    Role,
    SourceKind,
    TargetKind,
)
from ..observability import ObservabilityConfig
from ..routing import REPLICA_RULES, EdgeHomes, Resilience, Route
from ..security import LinkSecurity, TLSConfig, link_security
from ..transports import (
    EnvelopeLink,
    FrontLimits,
    LinkStreamTarget,
    LinkTarget,
    ready_or_lost,
)
from ..wire import (
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
from ._node import MeshNode, _admin, _configure, _request_head
from ._push import held_from_settings
from ._pusher import DEFAULT_PUSH_INTERVAL, CatalogPusher, EdgeState
from ._resilience import track_link

log = Logger()
REPLACED_WINDOW = 300.0
REPLACED_WARN = 5
"""An edge's tunnel replaced this many times within REPLACED_WINDOW seconds is warned of."""

_NOT_READY_LOG_EVERY = 10.0
"""Seconds between two router log lines about edges refused while the catalog is pending."""


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
    malloc_trim_interval: float = 0.0
    """Seconds between two trims of the C heap (``malloc_trim``, roles/_heap.py), with one
    more a few seconds after a link closes; 0: never.  The twistd plugins set it
    (``--malloc-trim-interval``); like ``freeze_heap``, it is for a process that owns its heap."""
    splice: bool = True
    """ClusterIP response bodies go to a plaintext tunnel's socket by splice(2), and a
    plaintext tunnel's on to a client's, never copied through the process (Linux;
    elsewhere, and over TLS, they are copied)."""
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
        self.replacements: dict[str, tuple[float, int, bool]] = {}
        """Per edge name: (since, tunnels replaced since then, warned) (``_replaced``)."""
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
            self._replaced(peer.node)
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
        self.link_gone(link, reason)
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
            SourceKind.tunnel, request.head or _request_head(request), responder, request.service,
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

    def _replaced(self, node: str) -> None:
        """An edge's new tunnel replaced its open one: normal once (it reconnected before
        the old one timed out), but two processes with one name and certificate (a cloned
        VM, a copied key) replace each other every second, forever, each at info level.
        Warn once per REPLACED_WINDOW when it keeps happening."""
        now = self.reactor.seconds()
        since, count, warned = self.replacements.get(node, (now, 0, False))
        if now - since > REPLACED_WINDOW:
            since, count, warned = now, 0, False
        count += 1
        if count >= REPLACED_WARN and not warned:
            warned = True
            log.warn("edge {node}: its tunnel was replaced {count} times in {seconds:.0f}s: "
                     "two processes with this node name and certificate? Each new "
                     "connection closes the other", node=node, count=count,
                     seconds=now - since)
        self.replacements[node] = (since, count, warned)

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
        self.link_gone(link, reason)
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
            SourceKind.router_link, request.head or _request_head(request), responder,
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
                            heartbeat_timeout=beats.heartbeat_timeout, splice=config.splice)
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
                            heartbeat_timeout=beats.heartbeat_timeout, splice=config.splice)
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


