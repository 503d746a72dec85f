"""Edges refused after the hello back off; a router whose catalog is not listed says so.

Before: the router refused an edge right after its hello with "'edge-a' is not an edge node
of the catalog" while the catalog was merely not listed yet, and since ClientService starts
its count over at every connection made (a TCP connect and a hello), the edge dialled again
after its first delay (0.5-1.5 s) every time, forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.test.iosim import ConnectionCompleter, connect, makeFakeClient, makeFakeServer

from edgemesh.catalog import Catalog, Node
from edgemesh.roles import EdgeConfig, EdgeNode, RouterConfig, RouterNode, build_edge, build_router
from edgemesh.roles._node import TUNNEL_STABLE_AFTER
from edgemesh.transports import EnvelopeLink, ReconnectBackoff
from edgemesh.wire import (
    NOT_READY,
    REFUSED,
    Frame,
    GoAway,
    Limits,
    decode_payload,
    encode_goaway,
    encode_hello,
    encode_refusal,
)


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


def catalog_of(*edges: str) -> Catalog:
    return Catalog(
        services=[], nodes=[Node(name, True, "127.0.0.1", 7701) for name in edges], revision=1)


def start(node: Any) -> None:
    node.privilegedStartService()
    node.startService()


def messages(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(event) for event in events]


def fixed_jitter(values: list[float]) -> Iterator[float]:
    while True:
        yield from values


# -- the policy -------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_resets_only_when_told() -> None:
    jitter = fixed_jitter([0.1, 0.7, 0.3])
    backoff = ReconnectBackoff(initial=0.5, maximum=30.0, jitter=lambda: next(jitter))
    # ClientService passes attempt=1 after every connection it made (a refusal after the
    # hello): the policy keeps its own count.
    delays = [backoff(1) for _ in range(12)]
    bare = [min(0.5 * 1.5**n, 30.0) for n in range(1, 13)]
    assert delays == pytest.approx([b + j for b, j in zip(bare, [0.1, 0.7, 0.3] * 4, strict=True)])
    assert delays[-1] == pytest.approx(30.3), "capped"
    backoff.reset()
    assert backoff(1) == pytest.approx(0.75 + 0.1)


def test_backoff_retry_after_is_a_jittered_floor_for_one_delay() -> None:
    jitter = fixed_jitter([0.5])
    backoff = ReconnectBackoff(initial=0.5, maximum=30.0, jitter=lambda: next(jitter))
    backoff.retry_after(10)
    assert backoff(1) == pytest.approx(10 * 1.25), "the hint plus a quarter of it (jitter 0.5)"
    assert backoff(1) == pytest.approx(0.5 * 1.5**2 + 0.5), (
        "the hint served once; the count went on")
    backoff.retry_after(1)
    assert backoff(1) == pytest.approx(0.5 * 1.5**3 + 0.5), (
        "a hint below the backoff changes nothing")


# -- an edge refused by a real router (memory reactor) -----------------------------------------


class Setup:
    def __init__(self, reactor: MemoryReactorClock, tmp_path: Path, **router: Any) -> None:
        self.reactor = reactor
        self.router: RouterNode = build_router(reactor, RouterConfig(http=None, **router))
        start(self.router)
        self.edge: EdgeNode = build_edge(reactor, EdgeConfig(
            node="edge-1", state_dir=str(tmp_path / "edge-1"), router="tcp:127.0.0.1:7700",
            hub=None, proxy=None))
        jitter = fixed_jitter([0.2, 0.9, 0.4, 0.6])
        assert self.edge.tunnel is not None
        self.backoff = self.edge.tunnel.backoff
        self.backoff.jitter = lambda: next(jitter)
        start(self.edge)

    def dials(self) -> int:
        return len(self.reactor.tcpClients)

    def answer_dial(self) -> None:
        """Join the edge's pending dial to the router's tunnel and run both sides."""
        pump = ConnectionCompleter(self.reactor).succeedOnce()
        assert pump is not None, "no dial"
        self.pump = pump
        for _ in range(5):
            pump.flush()

    def wait_for_dial(self, limit: float = 120.0) -> float:
        """Seconds until the edge dials again (the clock moves in 10 ms steps)."""
        before, waited = self.dials(), 0.0
        while self.dials() == before:
            assert waited < limit, "the edge never dialled again"
            self.reactor.advance(0.01)
            waited += 0.01
        return waited


def test_edge_refused_after_hello_backs_off_with_jitter(reactor: MemoryReactorClock,
                                                        tmp_path: Path) -> None:
    setup = Setup(reactor, tmp_path, catalog=catalog_of("edge-2"))  # edge-1 unknown
    waits = []
    with capturedLogs() as events:
        for _ in range(6):
            setup.answer_dial()
            assert "edge-1" not in setup.router.edges
            waits.append(setup.wait_for_dial())
    jitter = [0.2, 0.9, 0.4, 0.6, 0.2, 0.9]
    expected = [0.5 * 1.5**n + j for n, j in zip(range(1, 7), jitter, strict=True)]
    # Before: ~[0.75 + random()] six times, the backoff starting over at every hello.
    assert waits == pytest.approx(expected, abs=0.011)
    assert waits[-1] > 2 * waits[0]
    text = messages(events)
    assert "refusing link: 'edge-1' is not an edge node of the catalog" in text
    assert ("the router refused this edge: refused: 'edge-1' is not an edge node of the catalog"
            in text), "the edge says why"


def test_not_ready_router_refuses_with_retry_after_and_then_accepts(reactor: MemoryReactorClock,
                                                                    tmp_path: Path) -> None:
    setup = Setup(reactor, tmp_path, catalog=Catalog.empty(), catalog_pending=True,
                  not_ready_retry_after=5)
    with capturedLogs() as events:
        setup.answer_dial()
        first = setup.wait_for_dial()
        setup.answer_dial()
        second = setup.wait_for_dial()
    assert "edge-1" not in setup.router.edges
    # The router's retry-after (5 s) plus up to half of it as jitter (each delay draws the
    # backoff's jitter, then the hint's: 0.9, then 0.6).
    assert first == pytest.approx(5 * 1.45, abs=0.011)
    assert second == pytest.approx(5 * 1.3, abs=0.011)
    text = messages(events)
    assert not any("not an edge node" in line for line in text), "not the misleading reason"
    [router_line] = [line for line in text if line.startswith("refusing edge")]
    assert router_line == (
        "refusing edge edge-1 (1 refused so far): the catalog is not listed yet (the catalog "
        "source has not listed; see /readyz); edges are told to retry after 5s"
    ), "one line for the first refusal; the second, within 10 s, is not logged"
    assert ("the router refused this edge: not-ready: the router's catalog is not listed yet "
            "(retry after 5s, asked the router)") in text

    # The catalog is listed: the next attempt is accepted, and the backoff starts over.
    setup.router.set_catalog(catalog_of("edge-1"))
    setup.answer_dial()
    assert "edge-1" in setup.router.edges and setup.edge.catalog.is_edge("edge-1")
    assert setup.backoff.failures == 0
    setup.router.edges["edge-1"].link.close_now("router restart")
    setup.pump.flush()
    assert setup.wait_for_dial() == pytest.approx(0.75 + 0.2, abs=0.011), "the first delay again"


def test_a_tunnel_that_stayed_up_resets_the_backoff(reactor: MemoryReactorClock,
                                                    tmp_path: Path) -> None:
    """An (older) router that accepts while pending pushes nothing: the tunnel staying up
    counts as accepted."""
    setup = Setup(reactor, tmp_path, catalog=Catalog.empty(), catalog_pending=True)
    setup.router.catalog_pending = False  # accepts edge-1 as an old router did ...
    setup.router.pusher.snapshot = lambda state: None  # type: ignore[method-assign]  # ... and pushes nothing
    setup.router.pusher.first_push = lambda state, held: "none"  # type: ignore[method-assign]
    setup.router.knows_edge = lambda name: True  # type: ignore[method-assign]
    setup.backoff.failures = 5
    setup.answer_dial()
    assert "edge-1" in setup.router.edges
    assert setup.backoff.failures == 5, "a hello alone is not an acceptance"
    for _ in range(int(TUNNEL_STABLE_AFTER / 0.5)):
        reactor.advance(0.5)
        setup.pump.flush()  # heartbeats
    setup.router.edges["edge-1"].link.close_now("gone")
    setup.pump.flush()
    assert setup.wait_for_dial() == pytest.approx(0.75 + 0.2, abs=0.011), (
        "the first delay, not the 6th")


# -- the refusal frame ------------------------------------------------------------------------


def frames_to(peer_settings: dict[str, int], router: RouterNode,
              reactor: MemoryReactorClock) -> list[Frame]:
    """What the router sends a hand-made edge whose hello carries ``peer_settings``."""
    factory: Any = router.listeners["tunnel"].factory
    theirs = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    received: list[Frame] = []

    class Edge(EnvelopeLink):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(encode_hello("edge-1", "edge", peer_settings))

        def dataReceived(self, data: bytes) -> None:
            buffer = bytearray(data)
            while len(buffer) >= 4:
                size = int.from_bytes(buffer[:4], "big")
                received.append(decode_payload(bytes(buffer[4:4 + size]), Limits()))
                del buffer[:4 + size]

    client = Edge(reactor, _Quiet(), node="edge-1", role="edge", client=True)
    pump = connect(
        theirs, makeFakeServer(theirs), client, makeFakeClient(client), greet=False, clock=reactor)
    pump.flush()
    assert theirs.closed, "refused"
    return received


def test_not_ready_refusal_frame_new_and_old_peers(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor,
                          RouterConfig(catalog=Catalog.empty(), http=None, catalog_pending=True,
                                                not_ready_retry_after=7))
    start(router)
    settings = {"initial_window": 65536, "max_frame": 65536, "max_streams": 8}
    [_, refusal] = frames_to({**settings, "goaway_retry_after": 1}, router, reactor)
    assert refusal == GoAway("not-ready: the router's catalog is not listed yet", 7)
    assert refusal.refusal
    # An older edge (no goaway_retry_after in its hello) gets the two-field frame it decodes.
    [_, refusal] = frames_to(settings, router, reactor)
    assert refusal == GoAway("not-ready: the router's catalog is not listed yet", None)
    assert router.edges == {} and router.not_ready_refusals == 2


def test_refusal_frames_are_backward_compatible() -> None:
    frame = encode_refusal(NOT_READY, "later", 5)
    [decoded] = [decode_payload(frame[4:], Limits())]
    assert decoded == GoAway("not-ready: later", 5) and decoded.refusal
    assert decode_payload(encode_goaway("draining")[4:], Limits()) == GoAway("draining")
    assert not GoAway("draining").refusal, "a drain is no refusal: the peer is not dropped"
    assert GoAway(f"{REFUSED}: who are you").refusal


def test_a_refusal_on_a_hub_link_does_not_mark_the_peer_draining(reactor: MemoryReactorClock,
                                                                 tmp_path: Path) -> None:
    edge = build_edge(reactor, EdgeConfig(node="edge-1", state_dir=str(tmp_path), router=None,
                                          hub="tcp:7701", proxy=None))
    start(edge)
    factory: Any = edge.listeners["hub"].factory
    theirs = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    peer = EnvelopeLink(reactor, _Quiet(), node="edge-2", role="edge", client=True)
    pump = connect(
        theirs, makeFakeServer(theirs), peer, makeFakeClient(peer), greet=False, clock=reactor)
    pump.flush()
    peer.send_control(encode_refusal(REFUSED, "not you"))
    with capturedLogs() as events:
        pump.flush()
    assert "edge-2" not in edge.pipeline._draining_peers
    assert "edge-2 refused this edge's link: refused: not you" in messages(events)
    peer.send_control(encode_goaway("draining"))
    pump.flush()
    assert "edge-2" in edge.pipeline._draining_peers, "a drain still counts"


class _Quiet:
    def link_ready(self, link: EnvelopeLink) -> None:
        pass

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        pass

    def inbound(self, link: EnvelopeLink, request: Any, responder: Any) -> Any:
        raise AssertionError

    def control(self, link: EnvelopeLink, frame: Any) -> None:
        pass


def test_a_hub_link_refused_after_hello_backs_off_too(reactor: MemoryReactorClock,
                                                      tmp_path: Path) -> None:
    edge = build_edge(reactor,
                      EdgeConfig(node="edge-1", state_dir=str(tmp_path), router=None, hub=None,
                                          proxy=None, catalog=catalog_of("edge-1", "edge-2")))
    start(edge)
    dialer = edge.hub_dialer
    assert dialer is not None
    jitter = fixed_jitter([0.3])

    def refuse(link: EnvelopeLink) -> str:
        return "not you"

    waits = []
    dialer("edge-2")
    backoff = dialer.backoffs["edge-2"]
    backoff.jitter = lambda: next(jitter)
    for _ in range(5):
        factory = reactor.tcpClients[-1][2]
        theirs = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 7701))
        hub = EnvelopeLink(reactor, _Quiet(), node="edge-2", role="edge", client=False)
        hub.identity_check = refuse
        pump = connect(
            hub, makeFakeServer(hub), theirs, makeFakeClient(theirs), greet=False, clock=reactor)
        for _ in range(3):
            pump.flush()
        before, waited = len(reactor.tcpClients), 0.0
        while len(reactor.tcpClients) == before:
            assert waited < 60, "never dialled again"
            reactor.advance(0.01)
            waited += 0.01
        waits.append(waited)
    # Before: 0.2 × 1.5 + jitter each time, the count starting over at every hello.
    assert waits == pytest.approx([min(0.2 * 1.5**n, 10.0) + 0.3 for n in range(1, 6)], abs=0.011)


def test_backoff_starts_over_after_a_link_that_stayed_up() -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    backoff = ReconnectBackoff(
        initial=0.2, maximum=10.0, jitter=lambda: 0.0, clock=clock, stable_after=10.0)
    for _ in range(4):
        backoff(1)
    backoff.link_up()
    clock.advance(9.9)
    assert backoff(1) == pytest.approx(0.2 * 1.5**5), "lost before 10 s: a failed attempt"
    backoff.link_up()
    clock.advance(10.5)
    assert backoff(1) == pytest.approx(0.2 * 1.5), "stayed up: the first delay again"
