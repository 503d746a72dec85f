"""Router replicas (issue 13): router links, which replica holds each edge (EDGES frames,
EdgeHomes), forwarding over the router link, edges failing over between replicas.

Two routers and their edges on one MemoryReactorClock, joined by twisted.test.iosim as in
test_roles (distinct ports: the completer joins a dial to the listener on its port).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_roles import answer_upstream, edge_config, http_client, make_catalog, router_config, start
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.test.iosim import ConnectionCompleter, IOPump

from edgemesh.catalog import Endpoint
from edgemesh.exchange import MeshError, Reason, RequestHead, Role, SourceKind, TargetKind
from edgemesh.roles import EdgeNode, RouterNode, build_edge, build_router, edge_tap, router_tap
from edgemesh.roles._admin import admin_site
from edgemesh.roles._node import RotatingEndpoint, router_entry
from edgemesh.routing import REPLICA_RULES, ROUTER_RULES, EdgeHomes, RoundRobin, decide
from edgemesh.wire import EdgeSet, Limits, ProtocolError, decode_payload, encode_edges
from edgemesh.wire._frames import MAX_EDGES_PER_FRAME, PREFIX_SIZE

PEERS = (("router-a", "tcp:127.0.0.1:7800"), ("router-b", "tcp:127.0.0.1:7810"))
TUNNELS = {"router-a": 7700, "router-b": 7710}


def replica(reactor: MemoryReactorClock, name: str, **overrides: Any) -> RouterNode:
    index = 0 if name == "router-a" else 1
    config = router_config(
        node=name, tunnel=f"tcp:{TUNNELS[name]}", http=f"tcp:{7780 + 100 * index}",
        peer_listen=f"tcp:{7800 + 10 * index}", peer_routers=PEERS, **overrides)
    router = build_router(reactor, config)
    start(router)
    return router


class Replicas:
    """router-a and router-b, edges dialling one (or both, in turn)."""

    def __init__(self, reactor: MemoryReactorClock, tmp_path: Path) -> None:
        self.reactor = reactor
        self.tmp_path = tmp_path
        self.a = replica(reactor, "router-a")
        self.b = replica(reactor, "router-b")
        self.pumps: list[IOPump] = []

    def edge(self, node: str, first: str, *, more: tuple[str, ...] = ()) -> EdgeNode:
        routers = tuple(f"{name}=tcp:127.0.0.1:{TUNNELS[name]}" for name in more)
        edge = build_edge(self.reactor, edge_config(
            self.tmp_path / node, node, router=f"{first}=tcp:127.0.0.1:{TUNNELS[first]}",
            routers=routers))
        start(edge)
        return edge

    def connect_all(self) -> None:
        """Complete every pending dial that has a listener."""
        for _ in range(20):
            pump = ConnectionCompleter(self.reactor).succeedOnce()
            if pump is None:
                return
            self.pumps.append(pump)
            self.flush()

    def flush(self) -> None:
        for _ in range(3):  # a frame answered by a frame, answered by a frame
            for pump in self.pumps:
                pump.flush()

    def kill(self, router: RouterNode) -> None:
        """The replica dies: every link of it drops (its listeners stay in the memory
        reactor, but nobody dials them again in these tests)."""
        for link in [*router.links.values(), *router.router_links.values()]:
            link.close_now("killed")
        self.flush()


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def replicas(reactor: MemoryReactorClock, tmp_path: Path) -> Replicas:
    return Replicas(reactor, tmp_path)


def dials(reactor: MemoryReactorClock) -> list[int]:
    return [port for _, port, *_ in reactor.tcpClients]


# --- router links ---------------------------------------------------------------------


def test_the_smaller_name_dials_one_link_per_pair(replicas: Replicas,
                                                  reactor: MemoryReactorClock) -> None:
    assert dials(reactor) == [7810], "router-a dials router-b; router-b dials nobody"
    replicas.connect_all()
    assert list(replicas.a.router_links) == ["router-b"]
    assert list(replicas.b.router_links) == ["router-a"]
    assert replicas.a.pipeline.rules == REPLICA_RULES
    assert replicas.a.routers_status()["peers"] == 1
    assert replicas.b.routers_status()["configured"] == ["router-a"]


def test_a_single_router_keeps_its_rules(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor, router_config())
    assert router.pipeline.rules == ROUTER_RULES
    assert TargetKind.router_link not in router.pipeline.targets
    assert "routers" not in router.status_parts


def test_router_link_refuses_an_edge(replicas: Replicas, reactor: MemoryReactorClock) -> None:
    from test_roles import fake_peer

    factory = replicas.b.listeners["peer"].factory
    _link, recorder, _ = fake_peer(
        reactor, factory, node="edge-1", role=Role.edge.value, dialing=True)
    assert recorder.lost and "edge-1" not in replicas.b.router_links


def test_each_replica_learns_the_edges_of_the_other(replicas: Replicas) -> None:
    replicas.edge("edge-1", "router-a")
    replicas.edge("edge-2", "router-b")
    replicas.connect_all()
    assert sorted(replicas.a.edges) == ["edge-1"] and sorted(replicas.b.edges) == ["edge-2"]
    assert replicas.b.homes.home("edge-1") == "router-a"
    assert replicas.a.homes.home("edge-2") == "router-b"
    assert replicas.a.homes.home("edge-1") is None, "its own edge: no forwarding"
    view = {row["node"]: (row["replica"], row["local"]) for row in replicas.b.all_edges_view()}
    assert view == {"edge-1": ("router-a", False), "edge-2": ("router-b", True)}


def test_a_link_that_comes_up_late_gets_the_full_set(replicas: Replicas,
                                                     reactor: MemoryReactorClock) -> None:
    replicas.edge("edge-1", "router-a")
    # The edge's dial first; the router link's dial (older) stays pending for now.
    (index,) = [i for i, c in enumerate(reactor.tcpClients) if c[1] == 7700]
    reactor.tcpClients.insert(0, reactor.tcpClients.pop(index))
    reactor.connectors.insert(0, reactor.connectors.pop(index))
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    replicas.pumps.append(pump)
    replicas.flush()
    assert "edge-1" in replicas.a.edges and replicas.b.homes.home("edge-1") is None
    replicas.connect_all()
    assert replicas.b.homes.home("edge-1") == "router-a"


# --- forwarding -------------------------------------------------------------------------


def test_cloud_to_edge_through_the_other_replica(replicas: Replicas,
                                                 reactor: MemoryReactorClock) -> None:
    replicas.edge("edge-1", "router-a")
    replicas.connect_all()
    client, transport = http_client(replicas.b.listeners["http"].factory)
    client.dataReceived(b"GET /hello HTTP/1.1\r\nHost: web\r\n\r\n")
    replicas.flush()
    request = answer_upstream(reactor, replicas, ("10.1.0.1", 8080))  # type: ignore[arg-type]
    replicas.flush()
    assert request.startswith(b"GET /hello HTTP/1.1\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.value().endswith(b"\r\n\r\nhello")
    assert (replicas.b.forwarded_out, replicas.a.forwarded_in) == (1, 1)
    assert (replicas.a.forwarded_out, replicas.b.forwarded_in) == (0, 0)


def test_a_streamed_body_crosses_the_router_link(replicas: Replicas,
                                                 reactor: MemoryReactorClock) -> None:
    replicas.edge("edge-1", "router-a")
    replicas.connect_all()
    client, transport = http_client(replicas.b.listeners["http"].factory)
    # More than the links' initial window (512 KiB): credit must come back over both links.
    body = bytes(range(256)) * 8192
    client.dataReceived(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(body))
    replicas.flush()
    (entry,) = [c for c in reactor.tcpClients if (c[0], c[1]) == ("10.1.0.1", 8080)]
    pod: Any = entry[2].buildProtocol(None)
    pod_transport = StringTransport()
    pod.makeConnection(pod_transport)
    replicas.flush()
    for start_at in range(0, len(body), 65_536):
        client.dataReceived(body[start_at:start_at + 65_536])
        replicas.flush()
    received = pod_transport.value()
    assert received.startswith(b"POST /up HTTP/1.1\r\n")
    assert received.endswith(body)
    pod.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    replicas.flush()
    assert transport.value().startswith(b"HTTP/1.1 201 Created\r\n")


def test_edge_relay_forwarded_to_the_replica_holding_the_target(replicas: Replicas,
                                                               reactor: MemoryReactorClock) -> None:
    """An edge → edge relay that arrives (over a tunnel) at a replica without the target
    edge goes over the router link, the endpoint the sender chose kept."""
    replicas.edge("edge-1", "router-a")
    replicas.connect_all()
    responder = Answers()
    replicas.b.pipeline.dispatch_resolved(
        SourceKind.tunnel, RequestHead(b"GET", b"/r", b"web", (), 0), responder, "default/web", 80,
        ("10.1.0.1", 8080))
    replicas.flush()
    answer_upstream(reactor, replicas, ("10.1.0.1", 8080))  # type: ignore[arg-type]
    replicas.flush()
    assert responder.status == 200
    assert replicas.b.forwarded_out == 1


def test_a_forwarded_exchange_is_never_forwarded_again(replicas: Replicas) -> None:
    """router-a believes edge-2 is on router-b; an exchange that router-b forwarded for
    edge-2 (which left router-b meanwhile) fails on router-a instead of going back."""
    replicas.edge("edge-2", "router-b")
    replicas.connect_all()
    assert replicas.a.homes.home("edge-2") == "router-b"
    responder = Answers()
    with pytest.raises(MeshError) as raised:
        replicas.a.pipeline.dispatch_resolved(
            SourceKind.router_link, RequestHead(b"GET", b"/", b"api", (), 0), responder,
            "default/api", 80, ("10.2.0.1", 9090))
    assert raised.value.reason is Reason.peer_unavailable
    assert replicas.a.forwarded_out == 0


def test_decide_never_forwards_what_came_over_a_router_link() -> None:
    catalog = make_catalog()
    service = catalog.services["default/web"]
    port = service.ports[0]

    def elsewhere(edge: str) -> str | None:
        return "router-z"

    for source, target in [(SourceKind.router, TargetKind.router_link),
                           (SourceKind.tunnel, TargetKind.router_link),
                           (SourceKind.router_link, TargetKind.tunnel)]:
        route = decide(catalog, Role.router, "router-a", source, service, port, ("10.1.0.1", 8080),
                       RoundRobin(), home=elsewhere)
        assert route.target is target, source
        assert route.peer == ("router-z" if target is TargetKind.router_link else "edge-1")
        assert route.endpoint == Endpoint("10.1.0.1", 8080, "edge-1", pod="default/web-0")
    assert REPLICA_RULES[SourceKind.router_link] == frozenset({TargetKind.tunnel})


# --- failover -----------------------------------------------------------------------------


def test_edge_fails_over_to_the_next_replica(replicas: Replicas,
                                             reactor: MemoryReactorClock) -> None:
    edge = replicas.edge("edge-1", "router-a", more=("router-b",))
    replicas.connect_all()
    assert "edge-1" in replicas.a.edges and replicas.b.homes.home("edge-1") == "router-a"
    replicas.kill(replicas.a)
    assert replicas.b.homes.home("edge-1") is None and not replicas.b.router_links
    assert 7710 not in dials(reactor), "the edge's ClientService waits before its next dial"
    # ClientService's jittered backoff after a lost connection: 0.75 s + [0, 1) s.
    reactor.advance(1.8)
    assert 7710 in dials(reactor), "the next dial goes to router-b"
    replicas.connect_all()
    assert "edge-1" in replicas.b.edges and "router" in edge.links
    client, transport = http_client(replicas.b.listeners["http"].factory)
    client.dataReceived(b"GET /back HTTP/1.1\r\nHost: web\r\n\r\n")
    replicas.flush()
    answer_upstream(reactor, replicas, ("10.1.0.1", 8080))  # type: ignore[arg-type]
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")


def test_edge_moving_while_both_replicas_live(replicas: Replicas) -> None:
    """The new replica's word arrives before the old one's goodbye: the newer holder stays."""
    homes = replicas.b.homes
    replicas.connect_all()
    homes.update("router-a", True, ["edge-1"], [])
    homes.update("router-c", False, ["edge-1"], [])
    homes.update("router-a", False, [], ["edge-1"])
    assert homes.home("edge-1") == "router-c"


# --- EdgeHomes (sans-IO) ----------------------------------------------------------------------


def test_edge_homes_rules() -> None:
    local: set[str] = set()
    homes = EdgeHomes(lambda edge: edge in local)
    homes.update("r1", True, ["e1", "e2"], [])
    homes.update("r2", True, ["e3"], [])
    assert (homes.home("e1"), homes.home("e3"), homes.home("nope")) == ("r1", "r2", None)
    homes.update("r2", False, ["e1"], [])  # e1 moved to r2: the latest word wins
    assert homes.home("e1") == "r2"
    homes.forget("r2")  # r2's link dropped: r1 still says it has e1
    assert homes.home("e1") == "r1" and homes.home("e3") is None
    local.add("e2")
    assert homes.home("e2") is None, "an edge with its tunnel here is never forwarded"
    homes.update("r1", True, ["e9"], [])  # a full set replaces what r1 said before
    assert homes.home("e1") is None and homes.home("e9") == "r1"
    assert homes.remote() == {"e9": "r1"} and homes.count("r1") == 1


@given(st.lists(st.tuples(st.sampled_from(["r1", "r2", "r3"]), st.booleans(),
                          st.lists(st.sampled_from(["e1", "e2", "e3"]), max_size=3),
                          st.lists(st.sampled_from(["e1", "e2", "e3"]), max_size=3)), max_size=30))
def test_edge_homes_holder_always_says_it_holds_the_edge(
        steps: list[tuple[str, bool, list[str], list[str]]]) -> None:
    homes = EdgeHomes(lambda edge: False)
    said: dict[str, set[str]] = {}
    for replica_name, reset, added, removed in steps:
        homes.update(replica_name, reset, added, removed)
        edges = said.setdefault(replica_name, set())
        if reset:
            edges.clear()
        edges.difference_update(removed)
        edges.update(added)
        for edge in ["e1", "e2", "e3"]:
            holder = homes.home(edge)
            holders = {r for r, e in said.items() if edge in e}
            assert (holder is None) == (not holders)
            assert holder is None or holder in holders


# --- the EDGES frame ----------------------------------------------------------------------------


def frames_of(data: bytes) -> list[EdgeSet]:
    out = []
    while data:
        size = int.from_bytes(data[:PREFIX_SIZE], "big")
        frame = decode_payload(data[PREFIX_SIZE:PREFIX_SIZE + size], Limits())
        assert isinstance(frame, EdgeSet)
        out.append(frame)
        data = data[PREFIX_SIZE + size:]
    return out


def test_edges_frame_round_trip_and_chunks() -> None:
    (frame,) = frames_of(encode_edges(False, ["a"], ["b", "c"]))
    assert frame == EdgeSet(False, ("a",), ("b", "c"))
    (empty,) = frames_of(encode_edges(True, [], []))
    assert empty == EdgeSet(True, (), ()), "an empty full set still resets"
    names = [f"edge-{i}" for i in range(MAX_EDGES_PER_FRAME * 2 + 5)]
    frames = frames_of(encode_edges(True, names, []))
    assert len(frames) == 3 and [f.reset for f in frames] == [True, False, False]
    assert [n for f in frames for n in f.added] == names


@pytest.mark.parametrize("fields", [
    b"\x94\x0b\x02\x90\x90",  # reset out of range
    b"\x93\x0b\x00\x90",  # too few fields
    b"\x94\x0b\x00\x91\x01\x90",  # a name that is not a string
    b"\x94\x0b\x00\xa1x\x90",  # names not an array
])
def test_bad_edges_frames_are_refused(fields: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(fields, Limits())


# --- options, rotation, admin -------------------------------------------------------------------


def test_router_entry() -> None:
    assert router_entry("router-b=tcp:10.0.0.2:7700", "router") == ("router-b", "tcp:10.0.0.2:7700")
    assert router_entry("tcp:10.0.0.2:7700", "router") == ("router", "tcp:10.0.0.2:7700")
    assert router_entry("tcp:h:7700:timeout=5", "router") == ("router", "tcp:h:7700:timeout=5")


class Dialled:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def connect(self, factory: Any) -> Deferred[Any]:
        self.log.append(self.name)
        return succeed(None)


def test_rotating_endpoint_tries_the_next_router_on_each_dial() -> None:
    log: list[str] = []
    rotating = RotatingEndpoint([(n, Dialled(n, log)) for n in ["a", "b", "c"]])  # type: ignore[misc]
    for _ in range(4):
        rotating.connect(Factory.forProtocol(Protocol))
    assert log == ["a", "b", "c", "a"] and rotating.current == "a"
    with pytest.raises(ValueError):
        RotatingEndpoint([])


def test_edge_router_option_is_repeatable(tmp_path: Path) -> None:
    options = edge_tap.Options()
    options.parseOptions(["--node", "edge-1", "--state-dir", str(tmp_path), "--insecure",
                          "--router", "router-a=tcp:10.0.0.1:7700", "--router",
                          "router-b=tcp:10.0.0.2:7700"])
    assert options["router"] == "router-a=tcp:10.0.0.1:7700"
    assert options["more_routers"] == ("router-b=tcp:10.0.0.2:7700",)
    single = edge_tap.Options()
    single.parseOptions(["--node", "edge-1", "--state-dir", str(tmp_path), "--insecure"])
    assert single["router"] is None and single["more_routers"] == ()


def test_router_peer_options(tmp_path: Path) -> None:
    catalog = tmp_path / "c.yaml"
    catalog.write_text("[]\n")
    base = ["--catalog", str(catalog), "--insecure", "--node", "router-a"]
    options = router_tap.Options()
    options.parseOptions([*base, "--peer-listen", "tcp:7702", "--peer-router",
                          "router-b=tcp:10.0.0.2:7702",
                          "--peer-router", "router-a=tcp:10.0.0.1:7702"])
    assert options["peer_routers_value"] == [("router-b", "tcp:10.0.0.2:7702"),
                                             ("router-a", "tcp:10.0.0.1:7702")]
    for bad in ["tcp:10.0.0.2:7702", "=tcp:x:1", "router-b="]:
        with pytest.raises(usage.UsageError, match="NAME=ENDPOINT"):
            router_tap.Options().parseOptions([*base, "--peer-router", bad])


def get_json(site: Any, path: bytes) -> Any:
    import json

    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest(path.strip(b"/").split(b"/"))
    resource = site.resource
    for segment in request.postpath:
        resource = resource.getChildWithDefault(segment, request)
    return json.loads(resource.render_GET(request))


def test_admin_readyz_edges_and_metrics(replicas: Replicas) -> None:
    replicas.edge("edge-1", "router-a")
    replicas.connect_all()
    site = admin_site(replicas.b)
    ready = get_json(site, b"/readyz")
    assert ready["leader"] is None, "no election (file catalog)"
    assert ready["routers"]["peers"] == 1 and ready["routers"]["linked"] == ["router-a"]
    assert ready["routers"]["edges_elsewhere"] == {"router-a": 1}
    assert get_json(site, b"/edges") == [{"node": "edge-1", "replica": "router-a", "local": False}]
    from prometheus_client import generate_latest

    from edgemesh.observability import MeshCollector, node_registry
    from edgemesh.roles._admin import replica_view

    text = generate_latest(node_registry(MeshCollector(
        replicas.b.observer, lambda: replicas.b.catalog, replicas.b.edges_view,
        replicas=lambda: replica_view(replicas.b)), process=False)).decode()
    assert "edgemesh_router_links 1.0" in text
    assert 'edgemesh_router_forwarded_exchanges_total{direction="out"} 0.0' in text
    assert 'edgemesh_router_peer_edges{replica="router-a"} 1.0' in text
    assert 'edgemesh_peer_up{link="router",peer="router-a"} 1.0' in text


class Answers:
    """A responder that records the head and what fails."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.error: MeshError | None = None
        self.body = b""

    def head(self, head: Any) -> None:
        self.status = head.status

    def write(self, data: bytes) -> None:
        self.body += data

    def end(self) -> None:
        pass

    def fail(self, error: MeshError) -> None:
        self.error = error

    def setProducer(self, producer: Any) -> None:
        pass


# --- discovery through the API: one Lease per replica ---------------------------------------


def test_replica_lease_body_and_liveness() -> None:
    from edgemesh.sources._discovery import LINK_ANNOTATION, REPLICA_LABEL, Peer, ReplicaLeases

    mine = ReplicaLeases("router-a", "tcp:10.0.0.1:7702", "edgemesh", duration=15.0)
    body = mine.body(None, 100.0)
    assert body["metadata"]["name"] == "edgemesh-router-router-a"
    assert body["metadata"]["labels"] == {REPLICA_LABEL: "true"}
    assert body["metadata"]["annotations"][LINK_ANNOTATION] == "tcp:10.0.0.1:7702"
    assert body["spec"]["holderIdentity"] == "router-a"
    assert body["spec"]["leaseDurationSeconds"] == 15
    renewed = mine.body({**body, "metadata": {**body["metadata"], "resourceVersion": "7"}}, 102.0)
    assert renewed["metadata"]["resourceVersion"] == "7"
    assert renewed["spec"]["acquireTime"] == body["spec"]["acquireTime"], "kept across renewals"
    assert renewed["spec"]["renewTime"] != body["spec"]["renewTime"]

    other = ReplicaLeases("router-b", "tcp:10.0.0.2:7702", "edgemesh", duration=15.0)
    # Its clock is an hour ahead: liveness is timed on ours, from when the record changed.
    b_lease = other.body(None, 3700.0)
    assert mine.peers([body, b_lease], 100.0) == [Peer("router-b", "tcp:10.0.0.2:7702")]
    assert mine.peers([body, b_lease], 114.0) == [Peer("router-b", "tcp:10.0.0.2:7702")]
    assert mine.peers([body, b_lease], 115.5) == [], "not renewed for its duration: stale"
    renewed_b = other.body(b_lease, 3716.0)
    assert mine.peers([renewed_b], 116.0) == [Peer("router-b", "tcp:10.0.0.2:7702")]
    broken = {"metadata": {"name": "edgemesh-router-x"}, "spec": {}}
    assert mine.peers([broken], 117.0) == [], "no link annotation: ignored"


def test_replicas_find_each_other_through_their_leases() -> None:
    from test_sources_election import LeaseStore, StoreAPI
    from twisted.internet.task import Clock

    from edgemesh.sources import ListResult
    from edgemesh.sources._discovery import REPLICA_LABEL, ReplicaDiscovery, ReplicaLeases

    class ListingAPI(StoreAPI):
        def list(self, resource: Any, namespace: Any = None, *, label_selector: Any = None,
                 **_: Any) -> Deferred[Any]:
            assert label_selector == f"{REPLICA_LABEL}=true"
            return self._call(lambda: ListResult(list(self.store.objects.values()), "1"))

        def delete(self, resource: Any, namespace: Any, name: str, **_: Any) -> Deferred[Any]:
            return self._call(lambda: self.store.objects.pop(name) and None)

    clock, store = Clock(), LeaseStore()
    seen: dict[str, list[list[str]]] = {"router-a": [], "router-b": []}
    services = {}
    for name, ip in [("router-a", "10.0.0.1"), ("router-b", "10.0.0.2")]:
        def found(peers: list[Any], name: str = name) -> None:
            seen[name].append([f"{p.node}@{p.endpoint}" for p in peers])

        services[name] = ReplicaDiscovery(
            clock, ListingAPI(clock, store),
            ReplicaLeases(name, f"tcp:{ip}:7702", "edgemesh", 15.0), found, period=2.0)
        services[name].startService()
    clock.advance(0)
    clock.advance(2.0)
    assert seen["router-a"][-1] == ["router-b@tcp:10.0.0.2:7702"]
    assert seen["router-b"][-1] == ["router-a@tcp:10.0.0.1:7702"]
    assert sorted(store.objects) == ["edgemesh-router-router-a", "edgemesh-router-router-b"]
    # router-b stops cleanly: its Lease goes, router-a stops linking to it at the next round.
    services["router-b"].stopService()
    clock.advance(2.0)
    assert sorted(store.objects) == ["edgemesh-router-router-a"]
    assert seen["router-a"][-1] == []
    assert services["router-a"].status()["discovered"] == []


def test_set_peers_adds_and_stops_diallers(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor, router_config(node="router-b", peer_listen="tcp:7810"))
    start(router)
    assert router.diallers == {}
    router.set_peers([("router-a", "tcp:127.0.0.1:7800"), ("router-c", "tcp:127.0.0.1:7820")])
    assert list(router.diallers) == ["router-c"], "only the larger name is dialled"
    assert dials(reactor) == [7820]
    router.set_peers([("router-c", "tcp:127.0.0.1:7830")])  # it moved
    assert router.diallers["router-c"][0] == "tcp:127.0.0.1:7830"
    router.set_peers([])
    assert router.diallers == {} and router.routers_status()["dialling"] == []


def test_peer_advertise_defaults(tmp_path: Path) -> None:
    from edgemesh.roles.router_tap import peer_advertise

    options = router_tap.Options()
    catalog = tmp_path / "c.yaml"
    catalog.write_text("[]\n")
    options.parseOptions(["--catalog", str(catalog), "--insecure", "--peer-listen", "tcp:7702"])
    options["advertise_value"] = "10.1.2.3"
    assert peer_advertise(options) == "tcp:10.1.2.3:7702"
    options["advertise_value"] = "fd00::5"
    assert peer_advertise(options) == "tcp:fd00\\:\\:5:7702"
    options["peer-advertise"] = "tcp:router-0.routers:7702"
    assert peer_advertise(options) == "tcp:router-0.routers:7702"


def test_the_leaders_slices_list_every_live_replica() -> None:
    """Replica discovery tells the controller every live replica's --advertise address."""
    from test_sources_fakes import FakeAPI
    from twisted.internet.task import Clock

    from edgemesh.sources import EdgeServiceController
    from edgemesh.sources._discovery import HTTP_ANNOTATION, Peer, ReplicaLeases

    mine = ReplicaLeases("router-a", "tcp:10.0.0.1:7702", "edgemesh", 15.0, "10.0.0.1")
    other = ReplicaLeases("router-b", "tcp:10.0.0.2:7702", "edgemesh", 15.0, "10.0.0.2")
    body = other.body(None, 0.0)
    assert body["metadata"]["annotations"][HTTP_ANNOTATION] == "10.0.0.2"
    assert mine.peers([body], 0.0) == [Peer("router-b", "tcp:10.0.0.2:7702", "10.0.0.2")]
    controller = EdgeServiceController(Clock(), FakeAPI(), ["10.0.0.1"], 7780)  # type: ignore[arg-type]
    controller.set_addresses(["10.0.0.1", "10.0.0.2", "fd00::1"])
    assert controller.addresses == ["10.0.0.1", "10.0.0.2"], "one family per slice"
    controller.catalog = make_catalog()
    slices = controller.desired()
    assert slices and all(
        [e["addresses"] for e in s["endpoints"]] == [["10.0.0.1"], ["10.0.0.2"]]
        for s in slices.values())


@given(st.booleans(),
       st.lists(st.text(min_size=1, max_size=40), max_size=1200),
       st.lists(st.text(min_size=1, max_size=40), max_size=300))
def test_edges_frames_round_trip(reset: bool, added: list[str], removed: list[str]) -> None:
    frames = frames_of(encode_edges(reset, added, removed))
    assert [f.reset for f in frames] == [reset] + [False] * (len(frames) - 1)
    assert [n for f in frames for n in f.added] == added
    assert [n for f in frames for n in f.removed] == removed
    assert all(len(f.added) + len(f.removed) <= MAX_EDGES_PER_FRAME for f in frames)


def test_an_edge_shows_every_router_it_dials(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = build_edge(reactor, edge_config(tmp_path, "edge-1", router="router-a=tcp:127.0.0.1:7700",
                                           routers=("router-b=tcp:127.0.0.1:7710",)))
    (tunnel,) = [s for s in edge.pipeline.sources if s.kind is SourceKind.tunnel]
    assert tunnel.description == "router-a=tcp:127.0.0.1:7700, router-b=tcp:127.0.0.1:7710"
    start(edge)
    assert dials(reactor) == [7700], "the first router first"


def test_a_router_link_lost_mid_exchange_fails_it_at_once(replicas: Replicas) -> None:
    replicas.edge("edge-1", "router-a")
    replicas.connect_all()
    client, transport = http_client(replicas.b.listeners["http"].factory)
    client.dataReceived(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
    replicas.flush()
    assert replicas.b.forwarded_out == 1 and transport.value() == b""
    replicas.b.router_links["router-a"].close_now("test")
    replicas.flush()
    assert transport.value().startswith(b"HTTP/1.1 502 ")
    assert replicas.b.homes.home("edge-1") is None, "router-a's edges are forgotten with the link"
    assert replicas.a.edges, "router-a keeps its own edges"


# --- drain: a router that stops moves its edges (item 5) ----------------------------------------


def test_a_draining_router_moves_its_edges_without_refusing(replicas: Replicas,
                                                              reactor: MemoryReactorClock) -> None:
    edge = replicas.edge("edge-1", "router-a", more=("router-b",))
    replicas.connect_all()
    assert edge.mover is not None and "edge-1" in replicas.a.edges
    stopped = replicas.a.stopService()  # SIGTERM: drain
    assert stopped is not None
    done: list[object] = []
    stopped.addBoth(done.append)
    replicas.flush()
    assert edge.mover.moves == 1 and "router" not in edge.links
    assert 7710 in dials(reactor), "the next replica is dialled at once, no backoff"
    assert "edge-1" in replicas.a.edges, "the old tunnel stays until the new one is up"
    assert done == [], "the draining router waits for the edge it told to move"
    # An exchange that needs the tunnel now waits for the new one instead of failing.
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(b"GET /c HTTP/1.1\r\nHost: cloud\r\n\r\n")
    replicas.flush()
    assert transport.value() == b"" and edge.mover.status()["waiting"] == 1
    replicas.connect_all()
    assert "edge-1" in replicas.b.edges and edge.mover.status() == {
        "moves": 1, "moving": False, "waiting": 0}
    assert replicas.a.edges == {}, "then the old tunnel closed (it was idle)"
    assert done == [None], "and the drain ended"
    request = answer_upstream(reactor, replicas, ("10.96.0.20", 8000))  # type: ignore[arg-type]
    assert request.startswith(b"GET /c HTTP/1.1\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    tunnels = [s for s in edge.pipeline.sources if s.kind is SourceKind.tunnel]
    assert len(tunnels) == 1 and tunnels[0] is edge.mover.tunnel
    reactor.advance(60)
    assert [p for p in dials(reactor) if p in (7700, 7710)] == [], "the old TunnelClient stopped"


def test_the_hint_spreads_edges_over_the_least_loaded_replicas(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor, router_config(node="router-a", peer_listen="tcp:7800"))
    router.homes.update("router-b", True, ["e1", "e2"], [])
    router.homes.update("router-c", True, [], [])

    class FakeLink:
        def __init__(self, role: str) -> None:
            self.peer = type("Hello", (), {"role": role, "node": "x"})()

    router.router_links.update({"router-b": object(), "router-c": object()})  # type: ignore[dict-item]
    hints = [router.move_hint(FakeLink("edge")) for _ in range(4)]  # type: ignore[arg-type]
    assert hints == ["router-c", "router-c", "router-b", "router-c"]
    assert router.move_hint(FakeLink("router")) is None  # type: ignore[arg-type]


def test_goaway_move_to_is_optional_on_the_wire() -> None:
    from edgemesh.wire import GoAway, encode_goaway

    for frame, expected in [
        (encode_goaway("draining"), GoAway("draining")),
        (encode_goaway("draining", move_to="router-b"), GoAway("draining", move_to="router-b")),
        # With a retry-after too (a refusal that names where to go): the fourth field.
        (encode_goaway("not-ready: x", 2, "router-b"), GoAway("not-ready: x", 2, "router-b")),
    ]:
        assert decode_payload(frame[PREFIX_SIZE:], Limits()) == expected
    # The three-field form is the retry-after alone (an older router's refusal).
    assert decode_payload(encode_goaway("not-ready: x", 5)[PREFIX_SIZE:], Limits()) == GoAway(
        "not-ready: x", 5)


def test_with_one_router_goaway_moves_nothing(replicas: Replicas) -> None:
    edge = replicas.edge("edge-1", "router-a")
    assert edge.mover is None


def test_a_drain_does_not_wait_for_an_edge_that_cannot_move(replicas: Replicas) -> None:
    replicas.edge("edge-1", "router-a")  # one router: its hello does not say "move"
    replicas.connect_all()
    stopped = replicas.a.stopService()
    assert stopped is not None
    done: list[object] = []
    stopped.addBoth(done.append)
    replicas.flush()
    assert done == [None] and replicas.a._moving == set()


def test_a_draining_replica_still_serves_what_its_edges_sent_before_goaway(
        replicas: Replicas, reactor: MemoryReactorClock) -> None:
    replicas.edge("edge-1", "router-a", more=("router-b",))
    replicas.connect_all()
    replicas.a.stopService()
    assert replicas.a.pipeline.draining
    responder = Answers()
    replicas.a.pipeline.dispatch_resolved(
        SourceKind.tunnel, RequestHead(b"GET", b"/c", b"cloud", (), 0), responder,
        "default/cloud", 8000, None)
    assert responder.error is None, "not refused with 503 draining"
    assert ("10.96.0.20", 8000) in [(h, p) for h, p, *_ in reactor.tcpClients]
    single = build_router(reactor, router_config())
    single.pipeline.start_drain()
    with pytest.raises(MeshError) as raised:
        single.pipeline.dispatch_resolved(
            SourceKind.tunnel, RequestHead(b"GET", b"/c", b"cloud", (), 0), Answers(),
            "default/cloud", 8000, None)
    assert raised.value.reason is Reason.draining, "a lone router still refuses (unchanged)"


def test_the_drain_waits_for_a_moving_edge_no_longer_than_its_timeout(
        replicas: Replicas, reactor: MemoryReactorClock) -> None:
    """An edge that says it can move but never leaves: the drain ends at --drain-timeout."""
    from test_roles import Recorder
    from twisted.internet.address import IPv4Address
    from twisted.test.iosim import connect, makeFakeClient, makeFakeServer

    from edgemesh.transports import EnvelopeLink
    from edgemesh.wire import GoAway

    replicas.connect_all()
    recorder = Recorder()
    edge = EnvelopeLink(reactor, recorder, node="edge-1", role="edge", client=True)
    edge.hello_settings = {"move": 1}
    router = replicas.a.listeners["tunnel"].factory.buildProtocol(
        IPv4Address("TCP", "127.0.0.1", 1))
    pump = connect(router, makeFakeServer(router), edge, makeFakeClient(edge), greet=False,
                   clock=reactor)
    pump.flush()
    replicas.pumps.append(pump)
    assert "edge-1" in replicas.a.edges
    stopped = replicas.a.stopService()
    assert stopped is not None
    done: list[object] = []
    stopped.addBoth(done.append)
    replicas.flush()
    assert recorder.controls[-1] == GoAway("draining", move_to="router-b")
    reactor.advance(replicas.a.pipeline.settings.drain_timeout - 0.5)
    assert done == []
    reactor.advance(1.0)
    replicas.flush()  # the children stop: its router link closes over the pump
    assert done == [None]
