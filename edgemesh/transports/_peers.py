"""
Targets that leave this node over an envelope link: the tunnel (edge↔router)
and the hubs of other edges.  Links to hubs are dialled on first use and kept,
one per peer, reconnected by ClientService.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..exchange import (
    Headers,
    IRequestBody,
    IResponder,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    TargetKind,
    hand_trailers,
)
from ..routing import Route
from ._backoff import ReconnectBackoff
from ._links import EnvelopeLink, ready_or_lost

_PENDING_BOUND = 64 * 1024


class WaitingFlow:
    """One direction of an exchange or a byte stream whose link is still being dialled:
    holds a bounded amount of data (pausing the writer beyond ``_PENDING_BOUND``) and
    replays it, its producer and its end into the real side once ``attach`` gives it.
    ``inner`` is an ``IRequestBody`` or an ``IByteStream``; ``abort`` takes what that one
    takes (a reason text, or a MeshError)."""

    def __init__(self) -> None:
        self.pending: deque[bytes] = deque()
        self.size = 0
        self.ended = False
        self.aborted: Any = None
        self.producer: IPushProducer | None = None
        self.paused = False
        self.inner: Any = None

    def write(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.write(data)
            return
        self.pending.append(data)
        self.size += len(data)
        if self.size >= _PENDING_BOUND and self.producer is not None and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()
        else:
            self.ended = True

    def abort(self, reason: Any) -> None:
        if self.inner is not None:
            self.inner.abort(reason)
        else:
            self.aborted = reason
            self.pending.clear()  # never replayed: an aborted flow is aborted on attach

    def setProducer(self, producer: IPushProducer) -> None:
        if self.inner is not None:
            self.inner.setProducer(producer)
        else:
            self.producer = producer

    def attach(self, inner: Any) -> None:
        if self.aborted is not None:
            inner.abort(self.aborted)
            return
        self.inner = inner
        if self.producer is not None:
            if self.paused:
                self.producer.resumeProducing()
            inner.setProducer(self.producer)
        while self.pending:
            inner.write(self.pending.popleft())
        if self.ended:
            self._before_end(inner)
            inner.end()

    def _before_end(self, inner: Any) -> None:
        """What goes after the data and before the end (a request's trailers)."""


def link_address(route: Route) -> tuple[str, str, int, tuple[str, int] | None]:
    """Where a route sends over a link: the peer, the service key, the port and the
    endpoint hint (host, port) for the far node, if the route chose one."""
    endpoint = route.endpoint
    hint = None if endpoint is None else (endpoint.host, endpoint.port)
    return route.peer or "", route.service.key, route.port.port, hint


Flow = TypeVar("Flow", bound=WaitingFlow)
Opened = TypeVar("Opened")


def open_over_link(
    links: dict[str, EnvelopeLink],
    dial: Callable[[str], Deferred[EnvelopeLink] | None] | None,
    peer: str,
    open_on: Callable[[EnvelopeLink], Opened],
    waiting: Callable[[], Flow],
    fail: Callable[[MeshError], None],
) -> Opened | Flow | None:
    """``open_on`` the ready link to ``peer``, or once ``dial`` has made one (the flow
    ``waiting`` makes holds what comes meanwhile; a link lost or not made is told to
    ``fail``).  None: no link and none can be dialled (the caller refuses)."""
    link = links.get(peer)
    if link is not None and not link.closed:
        return open_on(link)
    dialling = dial(peer) if dial is not None else None
    if dialling is None:
        return None
    pending = waiting()

    def connected(link: EnvelopeLink) -> None:
        if pending.aborted is not None:
            return
        if link.closed:
            fail(MeshError(Reason.peer_unavailable, f"link to {peer} lost during its hello",
                           unsent=True))
            return
        pending.attach(open_on(link))

    def failed(reason: Failure) -> None:
        if pending.aborted is None:
            fail(MeshError(Reason.peer_unavailable,
                           f"cannot reach {peer}: {reason.getErrorMessage()}", unsent=True))

    dialling.addCallbacks(connected, failed)
    return pending


@implementer(IRequestBody)
class _WaitingBody(WaitingFlow):
    """The request side of an exchange whose link is still being dialled."""

    def __init__(self, responder: IResponder) -> None:
        super().__init__()
        self.responder = responder
        self.trailers_held: Headers = ()

    def trailers(self, fields: Headers) -> None:
        if self.inner is not None:
            hand_trailers(self.inner, fields, "the link takes no trailers")
        else:
            self.trailers_held = fields

    def _before_end(self, inner: Any) -> None:
        if self.trailers_held:
            hand_trailers(inner, self.trailers_held, "the link takes no trailers")


@implementer(ITarget)
class LinkTarget:
    """Sends exchanges to a peer node over its link.  ``links`` maps peer names to
    ready links (kept up to date by the role); ``dial``, when given, makes a link
    to a peer that has none (hubs)."""

    log = Logger()

    def __init__(
        self,
        kind: TargetKind,
        links: dict[str, EnvelopeLink],
        dial: Callable[[str], Deferred[EnvelopeLink] | None] | None = None,
    ) -> None:
        self.kind = kind
        self.links = links
        self.dial = dial
        self._last: tuple[Route | None, tuple[str, str, int, tuple[str, int] | None]] = (
            None, ("", "", 0, None))
        """The last route opened and its address: the pipeline hands the same Route to
        every exchange of a one-endpoint service (its address is not computed again)."""

    def open(self, route: Route, head: RequestHead, responder: IResponder) -> IRequestBody:
        last, address = self._last
        if last is not route:  # one Python call less per exchange (-1.2 k; callgrind, micro)
            address = link_address(route)
            self._last = (route, address)
        peer, service, port, hint = address
        hops = head.hops + 1  # this node's pipeline counted (it never writes the head)
        link = self.links.get(peer)
        if link is not None and not link.closed:
            # The ready link, as open_over_link would take it (no closures to make).
            return link.open(head, service, port, hint, responder, hops)
        opened: IRequestBody | None = open_over_link(
            self.links, self.dial, peer,
            lambda link: link.open(head, service, port, hint, responder, hops),
            lambda: _WaitingBody(responder), responder.fail)
        if opened is None:
            raise MeshError(Reason.peer_unavailable, f"no link to {peer}", unsent=True)
        return opened


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """Remembers whether the last connection attempt failed (``peer`` is then in
    ``unreachable``), so that requests for a peer that is down fail at once instead of each
    waiting for the next retry."""

    def __init__(self, endpoint: IStreamClientEndpoint, peer: str,
                 unreachable: set[str]) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self.unreachable = unreachable
        self.reached = False

    @property
    def failing(self) -> bool:
        return self.peer in self.unreachable

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def succeeded(protocol: IProtocol) -> IProtocol:
            self.unreachable.discard(self.peer)
            self.reached = True
            return protocol

        def failed(reason: Failure) -> Failure:
            self.unreachable.add(self.peer)
            return reason

        return self.endpoint.connect(factory).addCallbacks(succeeded, failed)

    def __repr__(self) -> str:  # ClientService's "Scheduling retry N to connect ..." line
        return f"the hub of {self.peer}"


class HubDialer:
    """One persistent, reconnecting link per peer edge, made on first use."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        make_endpoint: Callable[[str], IStreamClientEndpoint | None],
        make_link: Callable[[str], EnvelopeLink],
    ) -> None:
        self.reactor = reactor
        self.make_endpoint = make_endpoint
        self.make_link = make_link
        self.services: dict[str, ClientService] = {}
        self.endpoints: dict[str, _WatchedEndpoint] = {}
        self.backoffs: dict[str, ReconnectBackoff] = {}
        self.unreachable: set[str] = set()
        """The peers whose last dial of their hub failed (routing then relays through the
        router) until ClientService's background retry succeeds: a set the pipeline reads
        per exchange (not a method: one Python call less)."""

    def __call__(self, peer: str) -> Deferred[EnvelopeLink] | None:
        service = self.services.get(peer)
        if service is not None and self.endpoints[peer].failing:
            # ClientService keeps retrying in the background; meanwhile answer at once.
            return fail(ConnectError(string=f"hub of {peer} unreachable (retrying)"))
        if service is None:
            reached = self.make_endpoint(peer)
            if reached is None:
                return None
            endpoint = self.endpoints[peer] = _WatchedEndpoint(reached, peer, self.unreachable)
            # Refusals after the hello count as failed attempts (see _backoff.py).
            backoff = self.backoffs[peer] = ReconnectBackoff(
                initial=0.2, maximum=10.0, clock=self.reactor)
            factory = Factory.forProtocol(lambda: self._link(peer, backoff))
            service = ClientService(
                endpoint,
                factory,
                retryPolicy=backoff,
                clock=self.reactor,
                prepareConnection=ready_or_lost,
            )
            service.startService()
            self.services[peer] = service
        waiting: Deferred[EnvelopeLink] = service.whenConnected(failAfterFailures=1)  # type: ignore[assignment]
        return waiting

    def _link(self, peer: str, backoff: ReconnectBackoff) -> EnvelopeLink:
        link = self.make_link(peer)
        link.when_ready().addCallbacks(lambda _: backoff.link_up(), lambda _: None)
        return link

    def paths(self) -> dict[str, str]:
        """How each dialled peer is reached: direct, relayed (its hub cannot be dialled),
        or connecting (first dial in progress)."""
        shown = {}
        for peer, endpoint in sorted(self.endpoints.items()):
            shown[peer] = ("relayed" if endpoint.failing
                           else "direct" if endpoint.reached else "connecting")
        return shown

    def stop(self) -> Deferred[list[None]]:
        services, self.services = self.services, {}
        self.endpoints = {}
        self.backoffs = {}
        self.unreachable = set()  # the old endpoints' late failures mark nothing
        return gatherResults([s.stopService() for s in services.values()])
