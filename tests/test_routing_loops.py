"""
Routing loops (issue 11, item 3): the hop bound and the refusal of endpoints that are the
node's own listeners.  Pure functions first (hypothesis where natural), then the pipeline,
the HTTP front, the envelope and the roles on a MemoryReactorClock.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_capture_transparent import connect as transparent
from test_links import Pair
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, Logger
from zope.interface import implementer

from edgemesh.catalog._catalog import Catalog
from edgemesh.catalog._model import Endpoint, Node, Service, ServicePort
from edgemesh.exchange import MeshError, Reason, RequestHead, Role, SourceKind, TargetKind
from edgemesh.observability import MeshObserver
from edgemesh.observability._collector import MeshCollector
from edgemesh.roles import EdgeConfig, RouterConfig, build_edge, build_router
from edgemesh.routing import (
    DEFAULT_MAX_HOPS,
    Listening,
    OwnListeners,
    Pipeline,
    Resilience,
    Route,
    check_hops,
    own_endpoints,
)
from edgemesh.testing import RecordingResponder, ScriptedTarget
from edgemesh.transports._front import HTTPFrontFactory
from edgemesh.transports._peers import LinkTarget
from edgemesh.transports._upstream import HTTPUpstreamTarget
from edgemesh.wire import FrameDecoder, Limits, ProtocolError, Request, encode_hello, encode_request
from edgemesh.wire._connection import Connection

# --- the hop bound (pure) ------------------------------------------------------------------


@given(st.integers(0, 300), st.integers(1, 255))
def test_check_hops_counts_one_pass_and_refuses_past_the_bound(hops: int, bound: int) -> None:
    if hops < bound:
        assert check_hops(hops, bound, "edge-1", "shop/web") == hops + 1
        return
    with pytest.raises(MeshError) as caught:
        check_hops(hops, bound, "edge-1", "shop/web")
    error = caught.value
    assert error.reason is Reason.loop and error.status == 508 and error.reason.code == "loop"
    assert "shop/web" in error.detail and "edge-1" in error.detail and "\n" not in error.detail


def test_a_chain_of_nodes_stops_after_the_bound() -> None:
    """Fed back to itself the count allows exactly ``bound`` passes: the default is above the
    mesh's own longest path (edge, router, edge)."""
    hops, passes = 0, 0
    with pytest.raises(MeshError):
        while True:
            hops = check_hops(hops, DEFAULT_MAX_HOPS, "n", "s")
            passes += 1
    assert passes == DEFAULT_MAX_HOPS == Resilience().max_hops and passes >= 3


# --- own listeners (pure) ------------------------------------------------------------------

EDGE_LISTENING = (
    Listening("proxy", "0.0.0.0", 7781),
    Listening("hub", "::", 7701),
    Listening("admin", "127.0.0.1", 7790),
    Listening("transparent", "10.0.0.5", 15001),
)


def test_owner_of_wildcard_and_exact_binds() -> None:
    own = OwnListeners.of(EDGE_LISTENING, ["192.0.2.1"])
    # Wildcard: loopback (when this node connects), its addresses, its bound addresses.
    assert own.owner("127.0.0.1", 7781) == "proxy"
    assert own.owner("127.3.4.5", 7781) == "proxy"
    assert own.owner("::1", 7701) == "hub"
    assert own.owner("0.0.0.0", 7781) == "proxy"  # connecting to 0.0.0.0 reaches loopback
    assert own.owner("192.0.2.1", 7701) == "hub"
    assert own.owner("::ffff:192.0.2.1", 7781) == "proxy"
    assert own.owner("10.0.0.5", 7781) == "proxy"  # bound by the transparent listener
    # Another node's loopback, another host, another port.
    assert own.owner("127.0.0.1", 7781, local=False) is None
    assert own.owner("192.0.2.2", 7781) is None
    assert own.owner("192.0.2.1", 8080) is None
    # Exact binds: that address only.
    assert own.owner("127.0.0.1", 7790) == "admin"
    assert own.owner("127.0.0.2", 7790) is None
    assert own.owner("192.0.2.1", 7790) is None
    assert own.owner("10.0.0.5", 15001) == "transparent"
    assert own.owner("10.0.0.5", 15001, local=False) == "transparent"
    assert own.owner("127.0.0.1", 15001) is None
    assert own.owner("pod.example", 7781) is None


def test_a_node_known_by_a_loopback_address_owns_it_everywhere() -> None:
    """Nodes on one host (tests, the demo) advertise 127.0.0.1: another node's endpoint
    there is this node's listener too."""
    own = OwnListeners.of([Listening("proxy", "127.0.0.1", 7781)], ["127.0.0.1"])
    assert own.owner("127.0.0.1", 7781, local=False) == "proxy"


_ADDRESSES = st.one_of(
    st.sampled_from(["127.0.0.1", "127.9.9.9", "0.0.0.0", "::1", "::", "192.0.2.1", "192.0.2.9",
                     "10.0.0.5", "::ffff:127.0.0.1", "2001:db8::1", "pod.example"]),
    st.ip_addresses().map(str),
)
_BINDS = st.sampled_from(["0.0.0.0", "::", "127.0.0.1", "192.0.2.1", "10.0.0.5", "2001:db8::1"])


@given(
    st.lists(st.tuples(_BINDS, st.integers(1, 6)), max_size=5),
    st.lists(st.sampled_from(["192.0.2.1", "2001:db8::1"]), max_size=2),
    _ADDRESSES,
    st.integers(1, 6),
    st.booleans(),
)
def test_owner_matches_a_model(
    binds: list[tuple[str, int]], addresses: list[str], host: str, port: int, local: bool
) -> None:
    """The filter against a plain model: an endpoint is this node's when some socket has its
    port and accepts connections to its address from where they come."""
    own = OwnListeners.of([Listening(f"l{i}", h, p) for i, (h, p) in enumerate(binds)], addresses)
    try:
        ip: Any = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip is not None and ip.is_unspecified:
        ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    mine = {ipaddress.ip_address(a) for a in addresses} | {
        ipaddress.ip_address(h) for h, _ in binds
        if not ipaddress.ip_address(h).is_unspecified and not ipaddress.ip_address(h).is_loopback
    }
    reachable = ip is not None and (ip in mine or (local and ip.is_loopback))
    expected = reachable and any(
        p == port and (ipaddress.ip_address(h).is_unspecified or ipaddress.ip_address(h) == ip)
        for h, p in binds
    )
    assert (own.owner(host, port, local) is not None) == expected


HTTP = ServicePort("http", 80, 8080)
NODES = (
    Node("edge-1", True, "192.0.2.1", 7701),
    Node("edge-2", True, "192.0.2.2", 7701),
    Node("cloud-1", False, "10.0.9.1", 7701),
)
REAL = Endpoint("10.1.0.1", 8080, "edge-1")
REMOTE = Endpoint("10.2.0.1", 8080, "edge-2")
SELF_PROXY = Endpoint("192.0.2.1", 7781, "edge-1")
SELF_ON_EDGE_2 = Endpoint("192.0.2.1", 7701, "edge-2")  # edge-2's pod address is edge-1's hub
LOOP_ADMIN = Endpoint("127.0.0.1", 7790, "edge-1")
LOOP_ON_EDGE_2 = Endpoint("127.0.0.1", 7790, "edge-2")  # edge-2's own loopback
CLOUD_LOOP = Endpoint("127.0.0.1", 7780, "cloud-1")
EDGE_LOOP = Endpoint("127.0.0.1", 7780, "edge-2")


def service(name: str, *endpoints: Endpoint, cluster_ip: str | None = None) -> Service:
    return Service("shop", name, cluster_ip, (HTTP,), {"http": endpoints})


def catalog(*services: Service, revision: int = 1) -> Catalog:
    return Catalog(services, NODES, revision=revision)


def test_own_endpoints_of_an_edge_and_of_the_router() -> None:
    cat = catalog(
        service("web", REAL, SELF_PROXY, REMOTE),
        service("ping", SELF_ON_EDGE_2, LOOP_ON_EDGE_2),
        service("admin", LOOP_ADMIN),
        service("again", SELF_PROXY),
        service("cloud", CLOUD_LOOP, EDGE_LOOP),
    )
    found = own_endpoints(cat, "edge-1", EDGE_LISTENING, edge=True)
    assert {k: (v.listener, v.services) for k, v in found.items()} == {
        ("192.0.2.1", 7781): ("proxy", ("shop/web", "shop/again")),
        ("192.0.2.1", 7701): ("hub", ("shop/ping",)),
        ("127.0.0.1", 7790): ("admin", ("shop/admin",)),
    }
    router = own_endpoints(cat, "router", [Listening("http", "0.0.0.0", 7780)], edge=False)
    # The router connects to cloud endpoints itself; an edge's loopback is the edge's.
    assert {k: v.listener for k, v in router.items()} == {("127.0.0.1", 7780): "http"}
    assert own_endpoints(cat, "edge-1", (), edge=True) == {}


# --- the pipeline ---------------------------------------------------------------------------


def make_pipeline(
    role: Role, node: str, cat: Catalog, max_hops: int = 8
) -> tuple[Pipeline, dict[TargetKind, ScriptedTarget], MeshObserver, list[LogEvent]]:
    clock = MemoryReactorClock()
    events: list[LogEvent] = []

    class Logged(Pipeline):  # (a Pipeline's state is in slots: its log is the class's)
        log = Logger(observer=events.append)  # type: ignore[arg-type]

    pipeline = Logged(role, node, cat, clock=clock, settings=Resilience(max_hops=max_hops))
    kinds = ((TargetKind.service_bus, TargetKind.hub, TargetKind.tunnel) if role is Role.edge
             else (TargetKind.tunnel, TargetKind.cluster_ip))
    targets = {kind: ScriptedTarget(kind) for kind in kinds}
    for target in targets.values():
        pipeline.add_target(target)
    observer = MeshObserver(clock, role, node)
    observer.attach(pipeline)
    return pipeline, targets, observer, events


def head(authority: bytes = b"web.shop", hops: int = 0) -> RequestHead:
    return RequestHead(b"GET", b"/", authority, (), 0, "10.0.0.7", hops)


def responder() -> RecordingResponder:
    return RecordingResponder()


def test_every_pass_adds_a_hop_and_the_bound_answers_508() -> None:
    pipeline, targets, observer, _ = make_pipeline(Role.edge, "edge-1",
                                                   catalog(service("web", REAL)), max_hops=3)
    first = head()
    pipeline.dispatch(SourceKind.service_bus, first, responder())
    [sent] = [call.head for call in targets[TargetKind.service_bus].opened]
    # The head keeps the count it came with (nothing writes it); the pass is counted by the
    # target that forwards (hops + 1: test_forwarding_targets_send_the_count_plus_one).
    assert sent is first and sent.hops == 0
    pipeline.dispatch_resolved(SourceKind.hub, head(hops=2), responder(), "shop/web", 80, None)
    assert targets[TargetKind.service_bus].opened[-1].head.hops == 2
    for source, call in [
        (SourceKind.service_bus,
         lambda: pipeline.dispatch(SourceKind.service_bus, head(hops=3), responder())),
        (SourceKind.tunnel,
         lambda: pipeline.dispatch_resolved(SourceKind.tunnel, head(hops=200), responder(),
                                            "shop/web", 80, None)),
    ]:
        with pytest.raises(MeshError) as caught:
            call()
        assert caught.value.reason is Reason.loop, source
    assert len(targets[TargetKind.service_bus].opened) == 2  # nothing more went out
    assert observer.errors["loop"] == 2  # counted as the other mesh errors
    assert pipeline.resilience_view()["services"]["shop/web"]["requests"] == 2


def test_the_edge_never_chooses_its_own_listener() -> None:
    cat = catalog(service("web", SELF_PROXY, REAL), service("self", SELF_PROXY))
    pipeline, targets, _, events = make_pipeline(Role.edge, "edge-1", cat)
    pipeline.set_listening(EDGE_LISTENING)
    for _ in range(4):
        pipeline.dispatch(SourceKind.service_bus, head(), responder())
    assert {call.endpoint for call in targets[TargetKind.service_bus].opened} == {REAL}
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(SourceKind.service_bus, head(b"self.shop"), responder())
    assert caught.value.reason is Reason.no_endpoint
    assert "192.0.2.1:7781" in caught.value.detail
    assert "proxy listener of edge-1" in caught.value.detail
    # Another node's choice of that endpoint (a hint) is not honoured either.
    with pytest.raises(MeshError) as hinted:
        pipeline.dispatch_resolved(SourceKind.hub, head(b"self.shop"), responder(), "shop/self",
                                   80, ("192.0.2.1", 7781))
    assert hinted.value.reason is Reason.no_endpoint
    # One warning per endpoint, not one per catalog or request.
    warnings = [e for e in events if "refusing endpoint" in e["log_format"]]
    assert len(warnings) == 1 and warnings[0]["endpoint"] == "192.0.2.1:7781"
    pipeline.catalog = catalog(service("web", SELF_PROXY, REAL), service("self", SELF_PROXY),
                               revision=2)
    assert len([e for e in events if "refusing endpoint" in e["log_format"]]) == 1
    assert pipeline.resilience_view()["refused_endpoints"] == [
        {"endpoint": "192.0.2.1:7781", "listener": "proxy", "services": ["shop/web", "shop/self"]}
    ]
    # The endpoint gone from the catalog: nothing refused any more.
    pipeline.catalog = catalog(service("web", REAL), revision=3)
    assert pipeline.refused_endpoints() == []


def test_streams_never_reach_this_edges_own_listeners() -> None:
    """CONNECT, an Upgrade or a captured stream to a service whose endpoint is this edge's
    proxy would open another stream into the proxy (an Upgrade repeats itself until the
    service's cap), and one to its admin listener would open that to every node: both are
    refused as for exchanges, naming the listener; the real pod is still chosen."""
    from test_streams import FakeTarget, Side

    cat = catalog(service("web", SELF_PROXY, REAL), service("self", SELF_PROXY),
                  service("admin", LOOP_ADMIN))
    pipeline, _, _, _ = make_pipeline(Role.edge, "edge-1", cat)
    streams = FakeTarget()
    pipeline.add_stream_target(streams)
    pipeline.set_listening(EDGE_LISTENING)
    for _ in range(4):
        pipeline.dispatch_stream(SourceKind.service_bus, b"web.shop:80", "10.0.0.7", Side())
    assert {route.endpoint for route, *_ in streams.opened} == {REAL}
    for authority, listener in ((b"self.shop:80", "proxy"), (b"admin.shop:80", "admin")):
        with pytest.raises(MeshError) as caught:
            pipeline.dispatch_stream(SourceKind.service_bus, authority, "10.0.0.7", Side())
        assert caught.value.reason is Reason.no_endpoint
        assert f"{listener} listener of edge-1" in caught.value.detail
    # Another node's choice of that endpoint (a hint) is not honoured either.
    with pytest.raises(MeshError) as hinted:
        pipeline.dispatch_stream_resolved(SourceKind.hub, "shop/admin", 80,
                                          ("127.0.0.1", 7790), "10.0.0.7", Side())
    assert hinted.value.reason is Reason.no_endpoint
    assert len(streams.opened) == 4


def test_a_remote_endpoint_at_this_edges_address_is_refused() -> None:
    """edge-2's pod address is edge-1's hub: edge-1 does not send there (A → B → A)."""
    cat = catalog(service("ping", SELF_ON_EDGE_2))
    pipeline, targets, _, _ = make_pipeline(Role.edge, "edge-1", cat)
    pipeline.set_listening(EDGE_LISTENING)
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(SourceKind.service_bus, head(b"ping.shop"), responder())
    assert caught.value.reason is Reason.no_endpoint
    assert targets[TargetKind.hub].opened == []


def test_the_router_refuses_its_own_http_port() -> None:
    cat = catalog(service("cloud", CLOUD_LOOP), service("edge", EDGE_LOOP))
    pipeline, targets, _, _ = make_pipeline(Role.router, "router", cat)
    pipeline.set_listening([Listening("http", "0.0.0.0", 7780)])
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(SourceKind.router, head(b"cloud.shop"), responder())
    assert caught.value.reason is Reason.no_endpoint and "http listener of router" in \
        caught.value.detail
    pipeline.dispatch(SourceKind.router, head(b"edge.shop"), responder())  # edge-2's loopback
    [route] = [call.route for call in targets[TargetKind.tunnel].opened]
    assert route.peer == "edge-2"


# --- the HTTP front ---------------------------------------------------------------------------


def front(request: bytes) -> tuple[list[RequestHead], bytes]:
    target = ScriptedTarget()
    clock = MemoryReactorClock()
    peer = IPv4Address("TCP", "10.1.2.3", 40000)
    protocol = HTTPFrontFactory(clock, SourceKind.service_bus, target).buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    return [call.head for call in target.opened], transport.value()


@pytest.mark.parametrize(("fields", "hops"), [
    (b"", 0),
    (b"X-Edgemesh-Hops: 3\r\n", 3),
    (b"x-edgemesh-hops:  7 \r\n", 7),
    (b"X-Edgemesh-Hops: 2\r\nX-Edgemesh-Hops: 5\r\n", 5),
])
def test_the_front_takes_the_hop_count_out_of_the_head(fields: bytes, hops: int) -> None:
    [head], _ = front(b"GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n" + fields + b"\r\n")
    assert head.hops == hops
    assert head.headers == ((b"Host", b"web"), (b"X-A", b"1"))


@pytest.mark.parametrize("value", [b"x", b"-1", b"1000", b"1 2", b""])
def test_a_malformed_hop_count_is_a_bad_request(value: bytes) -> None:
    heads, written = front(
        b"GET / HTTP/1.1\r\nHost: web\r\nX-Edgemesh-Hops: " + value + b"\r\n\r\n")
    assert heads == []
    assert written.startswith(b"HTTP/1.1 400 ") and b"X-Edgemesh-Error: bad-request" in written
    assert b"malformed X-Edgemesh-Hops" in written


# --- the envelope ------------------------------------------------------------------------------


def decode(data: bytes) -> Request:
    [frame] = FrameDecoder(Limits()).feed(data)
    assert isinstance(frame, Request)
    return frame


@given(st.integers(0, 255), st.booleans())
def test_the_request_frame_carries_the_hop_count(hops: int, end: bool) -> None:
    args: tuple[Any, ...] = (7, end, b"GET", b"/", b"web", ((b"A", b"b"),), 0, "10.0.0.1",
                             "shop/web", 80, ("10.1.0.1", 8080), b"")
    assert decode(encode_request(*args, hops)).hops == hops
    old = encode_request(*args)  # what a peer of an older version sends
    assert decode(old).hops == 0
    assert decode(old).endpoint == decode(encode_request(*args, hops)).endpoint


def test_a_hop_count_out_of_range_is_a_protocol_error() -> None:
    for bad in (-1, 256, "1", None):
        payload = msgpack.packb((1, 7, 0, b"GET", b"/", b"web", [], 0, "", "shop/web", 80, None,
                                 None, b"", bad), use_bin_type=True)
        with pytest.raises(ProtocolError, match="hops"):
            FrameDecoder(Limits()).feed(len(payload).to_bytes(4, "big") + payload)


def test_the_hop_count_goes_only_to_peers_that_read_it() -> None:
    """An older peer's hello lacks the setting: it gets the REQUEST it knows (14 fields)."""
    new = Connection(client=False)
    new.receive(Connection(client=True).hello("edge-1", "edge"))
    assert new.peer_hops
    old = Connection(client=False)
    old.receive(encode_hello("edge-1", "edge", {"initial_window": 65536, "max_frame": 1 << 18,
                                                "max_streams": 8}))
    assert not old.peer_hops


def test_links_send_the_hop_count_and_deliver_it() -> None:
    pair = Pair()
    assert pair.client.connection.peer_hops and pair.server.connection.peer_hops
    before = len(pair.from_client)
    pair.client.open(RequestHead(b"GET", b"/", b"web", (), 0, "10.0.0.9", 5), "shop/web", 80,
                     None, responder())
    pair.pump()
    [request] = [f for f in pair.from_client[before:] if isinstance(f, Request)]
    assert request.hops == 5 and pair.inbound().request.hops == 5
    # To a peer that did not say it reads hop counts, the field is left out.
    pair.client.connection.peer_hops = False
    raw = len(pair.client_transport.value())
    pair.client.open(RequestHead(b"GET", b"/", b"web", (), 0, "10.0.0.9", 5), "shop/web", 80,
                     None, responder())
    pair.clock.advance(0)  # the end of the reactor turn: the frame goes out
    sent = pair.client_transport.value()[raw:]
    assert decode(sent).hops == 0
    assert sent[4] == 0x9E  # a 14-element array, as older decoders require


def test_a_routed_head_is_never_written_and_forwarding_targets_send_one_more() -> None:
    """The pipeline checks the count it received and leaves the head as it came (so that a
    decoder or a front may share one head across exchanges); the two targets that forward
    (a link: the frame's hops; a cluster IP: the header) send ``hops + 1``."""
    web = service("web", REAL, cluster_ip="10.96.0.10")
    pipeline, targets, _, _ = make_pipeline(Role.edge, "edge-1", catalog(web), max_hops=8)
    sent = head(hops=4)
    before = RequestHead(*(getattr(sent, name) for name in RequestHead.__slots__))
    for _ in range(2):  # the same head again, as a front or a decoder hands it
        pipeline.dispatch_resolved(SourceKind.hub, sent, responder(), "shop/web", 80, None)
    routed = [call.head for call in targets[TargetKind.service_bus].opened]
    assert routed == [sent, sent] and all(h is sent for h in routed) and sent == before
    # Over a link: the peer gets 5, and its decoded frame's head says 5; ours still says 4.
    pair = Pair()
    link_route = Route(TargetKind.hub, web, HTTP, None, "edge-2")
    LinkTarget(TargetKind.hub, {"edge-2": pair.client}).open(link_route, sent, responder())
    pair.pump()
    request = pair.inbound().request
    assert request.hops == 5 and request.head is not None and request.head.hops == 5
    assert sent == before
    # To a cluster IP: the header says 5.
    connected: list[Any] = []

    @implementer(IStreamClientEndpoint)
    class _Dialled:
        def connect(self, factory: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            connected.append((d, factory))
            return d

    upstream = HTTPUpstreamTarget(MemoryReactorClock(), TargetKind.cluster_ip,
                                  endpoint_factory=lambda host, port: _Dialled())
    upstream.open(Route(TargetKind.cluster_ip, web, HTTP, None, None), sent, responder())
    [(d, factory)] = connected
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    d.callback(protocol)
    assert b"\r\nX-Edgemesh-Hops: 5\r\n" in transport.value()
    assert sent == before and sent.headers == ()


# --- the roles ---------------------------------------------------------------------------------


def test_an_edge_refuses_its_listeners_once_bound(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    cat = catalog(service("web", SELF_PROXY, REAL), service("hub", Endpoint("127.0.0.1", 7701,
                                                                             "edge-1")))
    node = build_edge(reactor, EdgeConfig(node="edge-1", state_dir=str(tmp_path), router=None,
                                          proxy="tcp:7781", hub="tcp:7701",
                                          admin="tcp:7790:interface=127.0.0.1", catalog=cat))
    assert node.pipeline.refused_endpoints() == []
    node.privilegedStartService()  # type: ignore[no-untyped-call]
    node.startService()
    try:
        names = {(entry.name, entry.port) for entry in node.listening()}
        assert names >= {("proxy", 7781), ("hub", 7701), ("admin", 7790)}
        refused = {r["endpoint"]: r["listener"] for r in node.pipeline.refused_endpoints()}
        assert refused == {"192.0.2.1:7781": "proxy", "127.0.0.1:7701": "hub"}
        families = {f.name: f for f in MeshCollector(node.observer, lambda: node.catalog).collect()}
        [sample] = families["edgemesh_catalog_refused_endpoints"].samples
        assert sample.value == 2
    finally:
        node.stopService()


def test_the_router_refuses_its_listeners_once_bound() -> None:
    reactor = MemoryReactorClock()
    cat = catalog(service("cloud", CLOUD_LOOP), service("edge", EDGE_LOOP))
    node = build_router(reactor, RouterConfig(catalog=cat, tunnel="tcp:7700", http="tcp:7780"))
    node.privilegedStartService()  # type: ignore[no-untyped-call]
    node.startService()
    try:
        assert [r["endpoint"] for r in node.pipeline.refused_endpoints()] == ["127.0.0.1:7780"]
    finally:
        node.stopService()


def test_the_transparent_listener_reads_the_hop_count_too() -> None:
    transport, routed = transparent(("10.96.0.11", 9090))
    transport.protocol.dataReceived(  # type: ignore[attr-defined]
        b"GET /x HTTP/1.1\r\nHost: web\r\nX-Edgemesh-Hops: 4\r\n\r\n")
    [(_, head, _, _)] = routed.calls
    assert head.hops == 4 and head.headers == ((b"Host", b"web"),)
