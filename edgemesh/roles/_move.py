"""
Edge: moving the tunnel to another router replica when its router drains (issue 13 item 5).

A router that gets SIGTERM sends GOAWAY on every link; to its edges it adds where to go (the
replica with the fewest edges, ``RouterNode.move_hint``), when their hello says they read it.
An edge given several routers (``--router`` repeated) then, at once:

1. stops starting exchanges on the old tunnel (it still serves what the draining router
   forwards to it, and closes once the new tunnel is up and nothing is in flight on it);
2. dials the hinted replica (else the next one) with a new TunnelClient, immediately rather
   than after the reconnect backoff; the old TunnelClient is stopped when its link closes;
   the draining router waits (within its drain timeout) for the edges it told to move;
3. holds exchanges that need the tunnel meanwhile (their bodies bounded, their deadlines
   running) until the new tunnel is ready, for at most ``bound`` seconds.

So no exchange is refused during a rolling update of the routers, and the edge is reachable
through every replica as soon as the new replica announces it (before the old one says it
is gone).  With one router, GOAWAY changes nothing: the edge reconnects when the tunnel
closes, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..routing import ROUTER_PEER

if TYPE_CHECKING:
    from ..transports import EnvelopeLink
    from ._node import EdgeNode, RotatingEndpoint, TunnelClient

log = Logger()

MAX_WAITING = 4096
"""Exchanges held for the next tunnel at most (beyond: refused at once, as without a move)."""


class TunnelMover:
    def __init__(self, edge: EdgeNode, rotating: RotatingEndpoint,
                 make_tunnel: Callable[[], TunnelClient], tunnel: TunnelClient,
                 bound: float) -> None:
        self.edge = edge
        self.rotating = rotating
        self.make_tunnel = make_tunnel
        self.tunnel = tunnel
        self.bound = bound
        self.retiring: dict[EnvelopeLink, TunnelClient] = {}
        self.waiters: list[Deferred[EnvelopeLink]] = []
        self.moving_since: float | None = None
        self.moves = 0

    def goaway(self, link: EnvelopeLink, move_to: str | None) -> None:
        """The router of ``link`` drains: move to ``move_to`` (or the next router)."""
        edge = self.edge
        if edge.links.get(ROUTER_PEER) is not link or not edge.running:
            return
        del edge.links[ROUTER_PEER]
        leaving = link.peer_name
        self.rotating.prefer(move_to, avoid=leaving)
        old, new = self.tunnel, self.make_tunnel()
        self.retiring[link] = old
        self.tunnel = new
        sources = edge.pipeline.sources
        edge.pipeline.sources = [new if source is old else source for source in sources]
        self.moving_since = edge.reactor.seconds()
        self.moves += 1
        log.info("router {old} is draining: moving the tunnel to {new}", old=leaving,
                 new=self.rotating.upcoming())
        new.setServiceParent(edge)  # type: ignore[no-untyped-call]  # dials at once

    def lost(self, link: EnvelopeLink) -> None:
        old = self.retiring.pop(link, None)
        if old is not None and old.parent is not None:
            old.disownServiceParent()  # type: ignore[no-untyped-call]  # the new tunnel took over

    def ready(self, link: EnvelopeLink) -> None:
        # The old tunnel still serves what its router forwards until this one is up (no
        # gap for cloud → edge); now it closes once idle.
        for old in list(self.retiring):
            if old is not link:
                old.close_when_idle()
        self.moving_since = None
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(link)

    def wait(self, peer: str) -> Deferred[EnvelopeLink] | None:
        """LinkTarget's dial for the tunnel: while moving, the next tunnel (None: refuse)."""
        since = self.moving_since
        if peer != ROUTER_PEER or since is None:
            return None
        clock: Any = self.edge.reactor
        if clock.seconds() - since > self.bound:
            self.moving_since = None  # the new router is not answering: refuse at once again
            return None
        if len(self.waiters) >= MAX_WAITING:
            return None
        waiter: Deferred[EnvelopeLink] = Deferred()
        waiter.addTimeout(self.bound, clock)
        self.waiters = [w for w in self.waiters if not w.called]
        self.waiters.append(waiter)
        return waiter

    def status(self) -> dict[str, object]:
        return {"moves": self.moves, "moving": self.moving_since is not None,
                "waiting": sum(1 for w in self.waiters if not w.called)}
