"""
The pooled HTTP/1.1 upstream target: delivers an exchange to a pod (edge,
``TargetKind.service_bus``) or to a cloud service's ClusterIP (router,
``TargetKind.cluster_ip``).  This module is the pool and the deadlines; one exchange is
``_upexchange._UpstreamExchange``, one connection ``_upconnection._UpstreamConnection``.

One persistent connection carries one exchange at a time (no pipelining); idle
connections wait in a LIFO pool per address.

Each exchange's request timeout runs from the end of its request body (its start, for
one without a body) to its response head: the upload's own pace is the source's business
(the idle timeout where the exchange entered the mesh).  Rather
than a DelayedCall each, the target keeps the waiting exchanges in start order (per
timeout value, that is deadline order) and one timer for the soonest deadline.  The timer
is lazy: an exchange that gets its head leaves it armed, and it re-arms (or lapses) when it
fires, so back-to-back exchanges arm no timer at all and every deadline stays exact.

Failures never raise: they reach ``IResponder.fail`` as a ``MeshError`` whose
detail names the upstream address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from ..exchange import (
    HOPS_HEADER,
    IRequestBody,
    IResponder,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    TargetKind,
)
from ..routing import Route
from ._io import direct_reads
from ._upconnection import ReadBudget, _UpstreamConnection
from ._upexchange import REQUEST_BODY_BUFFER, _UpstreamExchange, connect_error

__all__ = ["REQUEST_BODY_BUFFER", "HTTPUpstreamTarget", "connect_error"]

_TO_CLUSTER_IP: Final = TargetKind.cluster_ip
"""A module's name, not the enum's attribute: ``TargetKind.cluster_ip`` goes through
EnumType's ``__getattr__`` hook, ~0.14 µs per exchange (timeit; as routing's _decide does)."""


@implementer(ITarget)
class HTTPUpstreamTarget:
    """Exchanges over pooled HTTP/1.1 connections to ``route.endpoint`` or, without
    one, to the service's ClusterIP.

    ``reactor`` provides ``IReactorTime`` and, unless ``endpoint_factory`` is given,
    ``IReactorTCP``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        kind: TargetKind,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        max_idle_per_address: int = 64,
        idle_timeout: float = 60.0,
        max_response_header_bytes: int = 64 * 1024,
        max_response_header_count: int = 100,
        endpoint_factory: Callable[[str, int], IStreamClientEndpoint] | None = None,
    ) -> None:
        self.kind = kind
        self._clock = reactor
        self.hold_sends: bool = getattr(reactor, "sends_at_turn_end", False)
        """A request's send may wait for the end of the reactor's turn, with the turn's
        others (write_now's ``hold``): on edgemesh's reactor."""
        self._connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_idle_per_address = max_idle_per_address
        self.idle_timeout = idle_timeout
        self.max_response_header_bytes = max_response_header_bytes
        self.max_response_header_count = max_response_header_count
        self.reads = ReadBudget()
        """The read budget of this target's pod connections (issue 15)."""
        if endpoint_factory is None:
            self._tcp = IReactorTCP(reactor)
            endpoint_factory = self._tcp_endpoint
        self._endpoint_factory = endpoint_factory
        self._idle: dict[tuple[str, int], list[_UpstreamConnection]] = {}
        self._closed = False
        # Request timeouts without a DelayedCall per exchange: the exchanges waiting for
        # a response head, per timeout value, each in start order (so in deadline order:
        # insertion order is the queue, deletion is O(1)), and one timer for the soonest.
        self._waiting: dict[float, dict[_UpstreamExchange, float]] = {}
        self._waiting_count = 0
        self._sweep_timer: IDelayedCall | None = None
        self._sweep_at = 0.0

    def __repr__(self) -> str:
        return f"<HTTPUpstreamTarget {self.kind.value}>"

    # ITarget

    def open(self, route: Route, head: RequestHead, responder: IResponder) -> IRequestBody:
        endpoint = route.endpoint
        if endpoint is not None:
            host, port = endpoint.host, endpoint.port
        else:
            host, port = route.service.cluster_ip or "", route.port.port
        if self.kind is _TO_CLUSTER_IP:
            # The cluster's proxy may lead back into the mesh (a loop): carry the hop
            # count, this node's pipeline counted (a pod on an edge never gets it).
            head = RequestHead(
                head.method, head.path, head.authority,
                (*head.headers, (HOPS_HEADER, b"%d" % (head.hops + 1))),
                head.content_length, head.client, head.hops,
            )
        exchange = _UpstreamExchange(self, host, port, head, responder)
        if route.timeout is not None:
            exchange.timeout = route.timeout  # the service's own (edgemesh.io/timeout)
        if not host:
            exchange.fail(
                MeshError(
                    Reason.no_endpoint,
                    f"{route.service.key}: no endpoint chosen and no cluster IP",
                )
            )
            return exchange
        # The exchange starts, and takes a pooled connection, here rather than in methods
        # of their own (two calls less per exchange).  Without a body, its request timeout
        # runs from now.
        if exchange.body_done:
            exchange._wait()
        address = (host, port)
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()  # LIFO: the most recently used is the least likely stale
            conn.idle = False
            if not conn.lost:
                # A list emptied here stays for the connection's return (_release), or goes
                # with the connection (_forget): not a del and a new list per exchange (~0.1
                # µs, timeit).
                exchange.reused = True
                exchange.replay = []  # what it sends is kept for one retry on a fresh one
                exchange.connected(conn)
                return exchange
        if idle is not None:
            del self._idle[address]  # empty, and no connection of it to come back
        self._connect(exchange)
        return exchange

    def close(self) -> Deferred[None]:
        """Close the idle pooled connections; later exchanges still work, but their
        connections are closed rather than pooled.  Fires when all are closed."""
        self._closed = True
        timer = self._sweep_timer
        if timer is not None:
            # Exchanges still waiting keep their place and are timed again once
            # another exchange starts.
            self._sweep_timer = None
            timer.cancel()
        idle = [conn for conns in self._idle.values() for conn in conns]
        waits = [conn.when_lost() for conn in idle]
        for conn in idle:
            self._discard(conn)
        return gatherResults(waits).addCallback(lambda _: None)

    # introspection (admin API, tests)

    def idle_connections(self, host: str, port: int) -> int:
        return len(self._idle.get((host, port), ()))

    def waiting_exchanges(self) -> int:
        """Exchanges waiting for a response head (their request timeout runs)."""
        return self._waiting_count

    # request timeouts (exchanges join and leave the queue: see _UpstreamExchange._wait
    # and _unwait)

    def _arm(self) -> None:
        """(Re)arm the timer at the soonest deadline of those waiting."""
        timer = self._sweep_timer
        if timer is not None:
            self._sweep_timer = None
            timer.cancel()
        fronts: list[float] = []
        for timeout, waiting in list(self._waiting.items()):
            if waiting:
                fronts.append(next(iter(waiting.values())))  # the soonest of its value
            else:
                del self._waiting[timeout]  # a timeout value no exchange waits with now
        if not fronts:
            return
        soonest = min(fronts)
        self._sweep_at = soonest
        self._sweep_timer = self._clock.callLater(
            max(0.0, soonest - self._clock.seconds()), self._sweep
        )

    def _sweep(self) -> None:
        """Fail every exchange whose deadline passed, then wait for the next one."""
        self._sweep_timer = None
        # Everything up to the deadline this timer was armed for is due, even if the
        # clock reads a hair earlier (float arithmetic of the delay).
        due = max(self._clock.seconds(), self._sweep_at)
        expired: list[_UpstreamExchange] = []
        for waiting in self._waiting.values():
            for exchange, deadline in waiting.items():
                if deadline > due:
                    break
                expired.append(exchange)
        try:
            for exchange in expired:
                if exchange.waiting is not None:  # not ended by an earlier one's failure
                    exchange.timed_out()
        finally:
            if self._sweep_timer is None and self._waiting_count:
                self._arm()

    # the pool

    def _tcp_endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        if isIPv6Address(host):
            return TCP6ClientEndpoint(
                self._tcp, host, port, timeout=self._connect_timeout
            )
        return TCP4ClientEndpoint(self._tcp, host, port, timeout=self._connect_timeout)

    def _connect(self, exchange: _UpstreamExchange) -> None:
        factory = _ConnectionFactory(self, exchange)
        try:
            endpoint = self._endpoint_factory(exchange.host, exchange.port)
            connecting: Deferred[Any] = endpoint.connect(factory)
        except Exception:  # noqa: BLE001 - a bad address or factory fails this exchange only
            connecting = fail()
        exchange.connecting = connecting
        connecting.addCallbacks(direct_reads, exchange.connect_failed)

    def _release(self, conn: _UpstreamConnection) -> None:
        """A connection whose response is over: pool it when it is ``reusable`` (and not
        lost, nor taken by another exchange), or close it.  (The connection's
        _after_response did the first part: one call less per exchange.)"""
        conn.finished = False
        if (not conn.reusable or conn.lost or conn.exchange is not None or self._closed
                or self.max_idle_per_address <= 0):
            if not conn.lost:
                conn.transport.loseConnection()
            return
        if conn.reading_paused:  # rarely: no call per exchange otherwise
            conn.resume_reading()
        address = conn.address
        idle = self._idle.get(address)
        if idle is None:
            idle = self._idle[address] = []
        elif len(idle) >= self.max_idle_per_address:
            self._discard(idle[0])  # the oldest is the most likely to be stale
            if not idle:
                idle = self._idle[address] = []
        conn.idle = True
        idle.append(conn)
        # The idle timer is lazy: re-armed from idle_since when it fires, so a busy
        # connection costs no timer calls per request.
        conn.idle_since = self._clock.seconds()
        if conn.idle_timer is None:
            conn.idle_timer = self._clock.callLater(self.idle_timeout, self._idle_check, conn)

    def _idle_check(self, conn: _UpstreamConnection) -> None:
        conn.idle_timer = None
        if not conn.idle:
            return
        remaining = conn.idle_since + self.idle_timeout - self._clock.seconds()
        if remaining > 0:
            conn.idle_timer = self._clock.callLater(remaining, self._idle_check, conn)
        else:
            self._discard(conn)

    def _forget(self, conn: _UpstreamConnection) -> None:
        """Take a connection out of the pool (it is closing or closed), and its address's
        list once empty (one that ``open`` emptied waited for this connection)."""
        idle = self._idle.get(conn.address)
        if idle is None:
            conn.idle = False
        else:
            if conn.idle:
                conn.idle = False
                if conn in idle:
                    idle.remove(conn)
            if not idle:
                del self._idle[conn.address]
        if conn.idle_timer is not None:
            if conn.idle_timer.active():
                conn.idle_timer.cancel()
            conn.idle_timer = None

    def _discard(self, conn: _UpstreamConnection) -> None:
        self._forget(conn)
        if not conn.lost:
            conn.transport.loseConnection()


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, target: HTTPUpstreamTarget, exchange: _UpstreamExchange) -> None:
        self._target = target
        self._exchange = exchange

    def buildProtocol(self, addr: IAddress | None) -> _UpstreamConnection:
        return _UpstreamConnection(self._target, self._exchange)
