"""
What a node counts about its exchanges and its links, in plain Python ints.

The pipeline's guarded exchange (``routing._guard``) reports to ``MeshObserver.opened``
when it starts and to ``closed`` when it is over; it adds its bytes to the counters as
they go (``refused`` counts an exchange refused before it started).  No wrapper objects,
no locks, no prometheus_client objects on the hot path: per-(service, path) counters in
plain ints, which the collector (``_collector.py``) turns into metric families at scrape
time.

Cardinality is bounded: at most ``max_services`` services get their own label, the
rest share ``service="other"``; paths, status classes and reasons are small fixed sets.

Nothing is locked: read the counters in the reactor's thread (the admin site does).
Requests a source refuses itself (malformed, too large) reach it through ``rejected``: one
refused before routing counts as an exchange of ``service="unknown"``, closed at once; one
whose body the source refuses after routing is closed by its guard with that reason.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IReactorTime

from ..exchange import (
    MeshError,
    Reason,
    RequestHead,
    Role,
    SourceKind,
    TargetKind,
)
from ..routing import GuardedBody, Route
from ._access import AccessLog

if TYPE_CHECKING:
    from ..routing import Pipeline

__all__ = [
    "DURATION_BUCKETS",
    "OTHER_SERVICE",
    "UNKNOWN_SERVICE",
    "ExchangeStats",
    "MeshObserver",
    "ObservabilityConfig",
    "ObservedExchange",
    "PeerState",
    "Readiness",
    "exchange_path",
]

DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Upper bounds (seconds) of the request duration histogram; +Inf is implied."""

OTHER_SERVICE = "other"
"""The service label of every service past ``max_services``."""
UNKNOWN_SERVICE = "unknown"
"""The service label of exchanges refused before a service was known (e.g. unknown-service)."""
ABORTED = 0
"""Index of ``ExchangeStats.codes`` for exchanges the client (or peer) gave up before a
response head; indexes 1-9 are status classes 1xx-9xx."""

RELAYED = "tunnel-relayed"
"""The target of an edge's exchange with another edge's pod through the router."""

PATH_NONE = "none"
"""The path label of an exchange refused before its target was chosen, when the source
alone does not tell."""


@dataclass(frozen=True)
class ObservabilityConfig:
    """What a node records and logs about its exchanges."""

    access_log: bool = False
    """An ``edgemesh.access`` log event per exchange.  Off by default: a log line costs far
    more CPU than the counters (measured: ~50 µs per exchange with ``--log-format json``,
    ~85 µs with twistd's text lines, against ~3-5 µs for all the counters)."""
    max_services: int = 1000
    """Services with a label of their own in the metrics; later ones count as ``other``."""
    max_peers: int = 4096
    """Disconnected peer links remembered for the metrics and /peers (the oldest forgotten
    first).  Connected links are always tracked, however many."""


def exchange_path(role: Role, source: SourceKind, target: TargetKind | None) -> str:
    """Which of the four request paths an exchange takes, as this node sees it:
    ``local`` (stays on this node's side), ``edge-edge``, ``edge-cloud`` or ``cloud-edge``;
    ``none`` when it was refused before its target was chosen and the source does not say.

    An edge cannot tell a request relayed by the router from another edge from one of a
    cloud app: both arrive on the tunnel and count as ``cloud-edge``.
    """
    if role is Role.edge:
        if source is SourceKind.hub:
            return "edge-edge"
        if source is SourceKind.tunnel:
            return "cloud-edge"
        if target is TargetKind.service_bus:
            return "local"
        if target is TargetKind.hub:
            return "edge-edge"
        if target is TargetKind.tunnel:
            return "edge-cloud"
        return PATH_NONE
    if source is SourceKind.router_link:
        # Forwarded by another replica: like an edge, this one cannot tell a relay from
        # another edge from a cloud app's request.
        return "cloud-edge" if target is None or target is TargetKind.tunnel else PATH_NONE
    if source is SourceKind.tunnel:
        if target is TargetKind.tunnel or target is TargetKind.router_link:
            return "edge-edge"  # relayed from one edge to another
        if target is TargetKind.cluster_ip:
            return "edge-cloud"
        return PATH_NONE
    if target is TargetKind.tunnel or target is TargetKind.router_link:
        return "cloud-edge"
    if target is TargetKind.cluster_ip:
        return "local"
    return PATH_NONE


class ExchangeStats:
    """The counters of one (service, path).  Plain ints, read at scrape time."""

    __slots__ = (
        "active", "bytes_in", "bytes_out", "codes", "counts", "duration_sum", "path", "service")

    def __init__(self, service: str, path: str) -> None:
        self.service = service
        self.path = path
        self.codes = [0] * 10
        """Finished exchanges by status class (index status // 100; 0: aborted)."""
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        """Durations per histogram bucket (not cumulative; the last one is +Inf)."""
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.active = 0


class ObservedExchange(Protocol):
    """What the observer reads of a finished exchange (the pipeline's GuardedExchange)."""

    stats: Any
    """Its ExchangeStats, from ``opened``."""
    started: float
    status: int
    """The response status (0: no response head)."""
    error: Reason | None
    """Why the exchange failed (None: it did not)."""
    received: int
    sent: int
    source: SourceKind

    @property
    def gave_up(self) -> bool:
        """The source (client or peer) gave up before the response was over."""

    @property
    def request(self) -> RequestHead: ...

    @property
    def route(self) -> Route | None: ...


@dataclass(slots=True)
class _Refused:
    """An exchange the pipeline refused before it started, as ``closed`` reads it."""

    request: RequestHead
    source: SourceKind
    error: Reason | None
    stats: ExchangeStats
    started: float
    status: int = 0
    received: int = 0
    sent: int = 0
    gave_up: bool = False
    route: Route | None = None


@dataclass
class PeerState:
    """One link to a peer node, as the admin API and the metrics show it."""

    peer: str
    kind: str
    """``tunnel`` (edge↔router), ``hub-out`` (this edge dialled the peer's hub) or ``hub-in``."""
    link: Any = None
    """The EnvelopeLink while connected (for rtt and open streams), else None."""
    connected_since: float | None = None
    disconnected_at: float | None = None
    last_reason: str | None = None
    connects: int = 0

    @property
    def connected(self) -> bool:
        return self.link is not None and not self.link.closed

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


class Readiness:
    """Named readiness gates, for what the node itself cannot see (e.g. the Kubernetes
    watch has listed everything).  A gate nobody set does not exist: ``/readyz`` is then
    ready as soon as the node is started, its listeners are up and its catalog loaded."""

    def __init__(self) -> None:
        self.gates: dict[str, tuple[bool, str]] = {}

    def set(self, name: str, ready: bool, detail: str = "") -> None:
        self.gates[name] = (ready, detail)

    def clear(self, name: str) -> None:
        self.gates.pop(name, None)

    @property
    def ready(self) -> bool:
        return all(ready for ready, _ in self.gates.values())


class MeshObserver:
    """The counters of one node (its pipeline's exchanges and its links) and, when
    configured, its access log.  ``attach`` makes a pipeline report to it."""

    def __init__(
        self, reactor: IReactorTime, role: Role, node: str,
        config: ObservabilityConfig | None = None
    ) -> None:
        self.seconds = reactor.seconds
        self.role = role
        self.node = node
        self.pipeline: Pipeline | None = None
        self.stats: dict[tuple[str, str, str, str], ExchangeStats] = {}
        """By (namespace, name, source kind, target kind): what ``observe`` looks up."""
        self.tables: dict[tuple[str, str], ExchangeStats] = {}
        """By (service label, path): what is exposed (several keys may share one)."""
        self.services: set[str] = set()
        self.errors: dict[str, int] = {reason.code: 0 for reason in Reason}
        self.peers: dict[tuple[str, str], PeerState] = {}
        self._peer_of: dict[Any, PeerState] = {}
        self._gone: OrderedDict[tuple[str, str], None] = OrderedDict()
        """The keys of disconnected peers, the oldest first: forgetting one is O(1)."""
        self.readiness = Readiness()
        self._paths = {
            (source._value_, target._value_): exchange_path(role, source, target)
            for source in SourceKind
            for target in TargetKind
        }
        self.relays = role is Role.edge
        self._last_route: Route | None = None
        self._last_source: SourceKind | None = None
        self._last_stats = ExchangeStats("", "")
        """The last exchange's route and source and their counters (see ``opened``)."""
        for source in SourceKind:
            self._paths[source._value_, RELAYED] = "edge-edge"
        self.config = ObservabilityConfig()
        self.access_log: AccessLog | None = None
        self.configure(config or ObservabilityConfig())
        from ._streams import StreamObserver

        self.streams = StreamObserver(self)
        """Byte streams (issue 12): their own counters and access log lines."""

    def configure(self, config: ObservabilityConfig) -> None:
        self.config = config
        self.access_log = AccessLog() if config.access_log else None

    def attach(self, pipeline: Pipeline) -> None:
        """Make ``pipeline`` report its exchanges here."""
        self.pipeline = pipeline
        pipeline.observer = self
        pipeline.refused = self.refused
        pipeline.stream_opened = self.streams.opened
        pipeline.stream_closed = self.streams.closed

    def path_of(self, source: SourceKind, target: TargetKind) -> str:
        """The ``path`` label of a route (as exchanges count it, relays aside)."""
        return self._paths[source._value_, target._value_]

    # -- exchanges (the hot path) ---------------------------------------------------
    # The pipeline's guarded exchange carries what is counted (status, bytes, error) and
    # reports its start and its end: no wrapper objects per exchange.

    def opened(self, exchange: ObservedExchange) -> None:
        """An exchange starts: give it its counters (counting it as active) and its start."""
        route = exchange.route
        assert route is not None
        kind = exchange.source
        if route is self._last_route and kind is self._last_source:
            # The last exchange's route (routing keeps one per service port and catalog; a
            # route is never changed once made) from the same source: the same counters,
            # with no key to make and look up (p1 -1.2 k instructions per exchange).
            stats = self._last_stats
        else:
            service = route.service
            source = kind._value_
            target = route.target._value_
            remember = True
            if target == "tunnel" and self.relays:
                # An edge relays to another edge through the router when its hub is
                # unreachable (what the catalog says of the endpoint: not remembered).
                remember = False
                endpoint = route.endpoint
                pipeline = self.pipeline
                if (endpoint is not None and pipeline is not None
                        and pipeline.catalog.is_edge(endpoint.node)):
                    target = RELAYED
            known = self.stats.get((service.namespace, service.name, source, target))
            if known is None:
                key = (service.namespace, service.name, source, target)
                known = self._stats_for(key, self._paths[source, target])
            stats = known
            if remember:
                self._last_route = route
                self._last_source = kind
                self._last_stats = stats
        stats.active += 1
        exchange.stats = stats
        exchange.started = self.seconds()

    def closed(self, exchange: ObservedExchange) -> None:
        """An exchange opened with ``opened`` is over (answered, failed or given up)."""
        stats: ExchangeStats = exchange.stats
        error = exchange.error
        status = exchange.status
        if error is not None:
            self.errors[error.code] += 1
            if not status:
                status = error.status
        stats.active -= 1
        # Status 0: no head (aborted); any other is in 100-999, the modulo only bounds a bug.
        stats.codes[status // 100 % 10] += 1
        duration = self.seconds() - exchange.started
        if duration > 0.0:
            stats.counts[bisect_left(DURATION_BUCKETS, duration)] += 1
            stats.duration_sum += duration
        else:  # no time on the clock, or a wall clock that stepped back
            duration = 0.0
            stats.counts[0] += 1
        access_log = self.access_log
        if access_log is not None:
            access_log.exchange(
                head=exchange.request, source=exchange.source, route=exchange.route,
                stats=stats, status=status, duration=duration, received=exchange.received,
                sent=exchange.sent, error=error, aborted=exchange.gave_up,
            )

    def refused(
        self, source: SourceKind, head: RequestHead, error: MeshError,
        service_key: str | None = None
    ) -> None:
        """An exchange the pipeline refused before it started (the source answers ``error``)."""
        namespace, name = "", UNKNOWN_SERVICE
        catalog = self.pipeline.catalog if self.pipeline is not None else None
        service = None
        if catalog is not None:
            if service_key is not None:
                service = catalog.services.get(service_key)
            else:
                try:
                    service = catalog.resolve(head.authority)[0]
                except MeshError:
                    service = None
        if service is not None:
            namespace, name = service.namespace, service.name
        path = self._source_path(source)
        stats = self._stats_for((namespace, name, source._value_, ""), path)
        stats.active += 1
        # Counted and logged as an exchange closed at once (closed() does the counting, with
        # no helper of its own: one Python call less per exchange).
        self.closed(_Refused(head, source, error.reason, stats, self.seconds()))

    def rejected(
        self, reason: Reason, source: SourceKind | None = None, head: RequestHead | None = None,
        body: object = None,
    ) -> None:
        """A request a source refused itself (malformed, too large), answering ``reason``:
        with ``head`` (as much of it as was read), one that never reached the pipeline,
        counted and logged as an exchange of ``service="unknown"`` closed at once; with
        ``body``, the request body of an exchange already routed, which the source aborts
        right after this call: its guard then closes with ``reason`` (not as given up by
        the client).  Without either (or when the guard is over already): the error only."""
        if isinstance(body, GuardedBody):  # the body the pipeline gave the source
            guard = body.guard
            if guard.stats is not None and not guard.done:
                # closed() counts it (errors and status) when the abort ends the guard.
                guard.error = reason
                return
        if head is None or source is None:
            self.errors[reason.code] += 1
            return
        stats = self._stats_for(("", UNKNOWN_SERVICE, source._value_, ""),
                                self._source_path(source))
        stats.active += 1
        # Counted and logged as refused() does: an exchange closed at once.
        self.closed(_Refused(head, source, reason, stats, self.seconds()))

    def _source_path(self, source: SourceKind) -> str:
        rules = self.pipeline.rules.get(source, frozenset()) if self.pipeline is not None else ()
        if len(rules) == 1:
            return exchange_path(self.role, source, next(iter(rules)))
        return exchange_path(self.role, source, None)

    def _stats_for(self, key: tuple[str, str, str, str], path: str) -> ExchangeStats:
        namespace, name = key[0], key[1]
        label = f"{namespace}/{name}" if namespace else name
        cacheable = True
        if namespace and label not in self.services:
            if len(self.services) >= self.config.max_services:
                label = OTHER_SERVICE
                cacheable = False  # or every overflowing key would grow the cache
            else:
                self.services.add(label)
        stats = self.tables.get((label, path))
        if stats is None:
            stats = self.tables[label, path] = ExchangeStats(label, path)
        if cacheable:
            self.stats[key] = stats
        return stats

    # -- links --------------------------------------------------------------------

    def link_up(self, peer: str, kind: str, link: Any) -> None:
        """A link to ``peer`` finished its hello and was accepted."""
        key = (peer, kind)
        state = self.peers.get(key)
        if state is None:
            state = self.peers[key] = PeerState(peer, kind)
        else:
            self._gone.pop(key, None)
        if state.link is not None:
            self._peer_of.pop(state.link, None)
        state.link = link
        state.connected_since = self.seconds()
        state.disconnected_at = None
        state.connects += 1
        self._peer_of[link] = state

    def link_down(self, link: Any, reason: str) -> None:
        """A link is gone (any link: those never reported up are ignored)."""
        state = self._peer_of.pop(link, None)
        if state is None or state.link is not link:
            return
        state.link = None
        state.disconnected_at = self.seconds()
        state.last_reason = reason
        gone = self._gone
        gone[state.peer, state.kind] = None
        while len(gone) > self.config.max_peers:
            del self.peers[gone.popitem(last=False)[0]]

    # -- views ----------------------------------------------------------------------

    def peers_view(self) -> list[dict[str, object]]:
        """The tracked links, for the admin API's ``/peers``."""
        return self.peers_page()[0]

    def peers_page(
        self, limit: int | None = None, after: tuple[str, str] | None = None
    ) -> tuple[list[dict[str, object]], tuple[str, str] | None]:
        """Up to ``limit`` links (all: None) in (peer, link) order, from the first after
        ``after``; and the key to continue after when there are more."""
        keys = sorted(self.peers if after is None else (k for k in self.peers if k > after))
        more = None
        if limit is not None and len(keys) > limit:
            keys = keys[:limit]
            more = keys[-1]
        now = self.seconds()
        rows: list[dict[str, object]] = []
        for key in keys:
            state = self.peers[key]
            link = state.link
            connected = state.connected
            rows.append(
                {
                    "peer": state.peer,
                    "link": state.kind,
                    # An edge's tunnel goes to the router, which forwards its exchanges on.
                    "mode": (
                        "relayed" if state.kind == "tunnel" and self.role is Role.edge
                        else "direct"),
                    "connected": connected,
                    "connected_since": state.connected_since if connected else None,
                    "connected_for": round(now - state.connected_since, 3)
                    if connected and state.connected_since is not None
                    else None,
                    "disconnected_at": state.disconnected_at,
                    "last_reason": state.last_reason,
                    "reconnects": state.reconnects,
                    "rtt": link.rtt if connected else None,
                    "streams": len(link.exchanges) if connected else 0,
                }
            )
        return rows, more
