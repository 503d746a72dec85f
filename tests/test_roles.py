"""The roles layer: build_router / build_edge, their listeners, registries and catalog links.

Everything runs on one MemoryReactorClock per test: listeners land in ``tcpServers``, dials
in ``tcpClients``, and twisted.test.iosim's ConnectionCompleter joins a dial to the listener
on the same port, so a router and edges talk over real EnvelopeLinks with no socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.test.iosim import ConnectionCompleter, IOPump, connect, makeFakeClient, makeFakeServer
from zope.interface.verify import verifyObject

from edgemesh.catalog import (
    Catalog,
    CatalogStore,
    Endpoint,
    Node,
    Service,
    ServicePort,
    catalog_to_wire,
)
from edgemesh.catalog._store import STORE_FILE
from edgemesh.exchange import (
    IRequestBody,
    IResponder,
    ISource,
    ITarget,
    Role,
    SourceKind,
    TargetKind,
)
from edgemesh.roles import EdgeConfig, EdgeNode, RouterConfig, RouterNode, build_edge, build_router
from edgemesh.roles._node import Listener, TunnelClient
from edgemesh.routing import EDGE_RULES, ROUTER_PEER, ROUTER_RULES
from edgemesh.transports import EnvelopeLink
from edgemesh.wire import Ack, CatalogPush, GoAway, Request, encode_catalog

# --- fixtures --------------------------------------------------------------------------


def make_catalog(revision: int = 1, extra: bool = False) -> Catalog:
    nodes = [
        Node("edge-1", True, "127.0.0.1", 7701),
        Node("edge-2", True, "127.0.0.2", 7701),
        Node("cloud-1", False, None, 7701),
    ]
    services = [
        Service(
            "default", "web", "10.96.0.10", (ServicePort("http", 80, 8080),),
            {"http": (Endpoint("10.1.0.1", 8080, "edge-1", pod="default/web-0"),)},
        ),
        Service(
            "default", "api", "10.96.0.11", (ServicePort("", 80, 9090),),
            {"": (Endpoint("10.2.0.1", 9090, "edge-2"),)},
        ),
    ]
    services.append(
        Service(
            "default", "cloud", "10.96.0.20", (ServicePort("", 8000, 8000),),
            {"": (Endpoint("10.3.0.1", 8000, "cloud-1"),)},
        )
    )
    if extra:
        services.append(
            Service("default", "late", "10.96.0.12", (ServicePort("", 80, 80),),
                    {"": (Endpoint("10.1.0.9", 80, "edge-1"),)})
        )
    return Catalog(services=services, nodes=nodes, revision=revision)


def router_config(**overrides: Any) -> RouterConfig:
    return RouterConfig(catalog=overrides.pop("catalog", make_catalog()), **overrides)


def edge_config(state_dir: Path, node: str = "edge-1", **overrides: Any) -> EdgeConfig:
    overrides.setdefault("router", "tcp:127.0.0.1:7700")
    overrides.setdefault("hub", f"tcp:{7701 if node == 'edge-1' else 7702}")
    overrides.setdefault("proxy", f"tcp:{7781 if node == 'edge-1' else 7782}")
    return EdgeConfig(node=node, state_dir=str(state_dir), **overrides)


def bind(node: Any) -> None:
    """privilegedStartService, where twistd binds privileged ports (Twisted leaves it untyped)."""
    node.privilegedStartService()


def start(node: Any) -> None:
    bind(node)
    node.startService()


@dataclass
class Recorder:
    """A LinkHandler for hand-made peers: records what the node under test sends it."""

    ready: list[EnvelopeLink] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    controls: list[CatalogPush | Ack | GoAway] = field(default_factory=list)

    def link_ready(self, link: EnvelopeLink) -> None:
        self.ready.append(link)

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        self.lost.append(reason)

    def inbound(self, link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        raise AssertionError("no exchanges in these tests")

    def control(self, link: EnvelopeLink, frame: CatalogPush | Ack | GoAway) -> None:
        self.controls.append(frame)


def fake_peer(
    reactor: MemoryReactorClock, factory: Any, *, node: str, role: str,
    dialing: bool, flush: bool = True
) -> tuple[EnvelopeLink, Recorder, IOPump]:
    """A hand-made EnvelopeLink connected to ``factory`` (a node's listener factory, when
    ``dialing``; else a node's dialling factory, with the fake peer accepting)."""
    recorder = Recorder()
    peer = EnvelopeLink(reactor, recorder, node=node, role=role, client=dialing)
    theirs = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7700))
    if dialing:
        server, client = theirs, peer
    else:
        server, client = peer, theirs
    pump = connect(
        server, makeFakeServer(server), client, makeFakeClient(client), greet=False, clock=reactor)
    if flush:
        pump.flush()
    return peer, recorder, pump


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


class Mesh:
    """A router and edges on one memory reactor, connected on demand."""

    def __init__(self, reactor: MemoryReactorClock, tmp_path: Path) -> None:
        self.reactor = reactor
        self.tmp_path = tmp_path
        self.router = build_router(reactor, router_config())
        start(self.router)
        self.pumps: list[IOPump] = []

    def edge(self, node: str = "edge-1", state: str | None = None, **overrides: Any) -> EdgeNode:
        edge = build_edge(
            self.reactor, edge_config(self.tmp_path / (state or node), node, **overrides))
        start(edge)
        return edge

    def connect(self) -> IOPump:
        """Complete the oldest pending dial to the router's tunnel."""
        pump = ConnectionCompleter(self.reactor).succeedOnce()
        assert pump is not None, "no dial to complete"
        pump.flush()
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


@pytest.fixture
def mesh(reactor: MemoryReactorClock, tmp_path: Path) -> Mesh:
    return Mesh(reactor, tmp_path)


# --- listeners ---------------------------------------------------------------------------


def test_router_listeners_bind_at_privileged_start(reactor: MemoryReactorClock) -> None:
    router = build_router(
        reactor,
        router_config(tunnel="tcp:7000:interface=127.0.0.1", http="tcp:7080", admin="tcp:7090")
    )
    assert reactor.tcpServers == []
    assert all(listener.port is None for listener in router.listeners.values())
    bind(router)
    bound = {port: (factory, interface) for port, factory, _, interface in reactor.tcpServers}
    assert sorted(bound) == [7000, 7080, 7090]
    assert bound[7000][1] == "127.0.0.1"
    for name, port in [("tunnel", 7000), ("http", 7080), ("admin", 7090)]:
        listener = router.listeners[name]
        assert bound[port][0] is listener.factory
        assert listener.address.port == port
    # startService after privilegedStartService binds nothing twice.
    router.startService()
    assert len(reactor.tcpServers) == 3
    assert router.serving and router.running


def test_router_start_without_privileged_start_binds_too(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor, router_config(http=None))
    router.startService()
    assert [port for port, *_ in reactor.tcpServers] == [7700]
    assert list(router.listeners) == ["tunnel"]


def test_router_stop_releases_listeners(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor, router_config())
    start(router)
    router.stopService()
    assert not router.serving
    assert all(listener.port is None for listener in router.listeners.values())


def test_edge_listeners_and_tunnel_dial(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = build_edge(reactor, edge_config(tmp_path, router="tcp:10.0.0.1:7700", admin="tcp:7791"))
    assert reactor.tcpServers == [] and reactor.tcpClients == []
    bind(edge)
    assert sorted(port for port, *_ in reactor.tcpServers) == [7701, 7781, 7791]
    assert reactor.tcpClients == [], "the tunnel dials at startService, not before"
    edge.startService()
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("10.0.0.1", 7700)]
    assert sorted(edge.listeners) == ["admin", "hub", "proxy"]


def test_edge_without_optional_listeners(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = build_edge(
        reactor, EdgeConfig(node="edge-1", state_dir=str(tmp_path), proxy=None, hub=None))
    start(edge)
    assert reactor.tcpServers == [] and reactor.tcpClients == []
    assert edge.listeners == {}


class BusyPortReactor(MemoryReactorClock):
    """Refuses to listen on one port, as the real reactor does when it is taken."""

    def __init__(self, busy: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.busy = busy

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port == self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)  # type: ignore[no-untyped-call]


def test_busy_port_raises_at_start() -> None:
    router = build_router(BusyPortReactor(7780), router_config())
    with pytest.raises(CannotListenError):
        bind(router)


def test_busy_port_raises_at_start_for_an_edge(tmp_path: Path) -> None:
    edge = build_edge(BusyPortReactor(7701), edge_config(tmp_path))
    with pytest.raises(CannotListenError):
        bind(edge)


@pytest.mark.parametrize("description", ["tcp:notaport", "bogus:7700", "tcp:7700:nosuchkey=1"])
def test_invalid_endpoint_string_raises_at_start(reactor: MemoryReactorClock,
                                                 description: str) -> None:
    router = build_router(reactor, router_config(tunnel=description))
    with pytest.raises((ValueError, TypeError)):
        bind(router)


def test_listener_and_tunnel_client_are_sources(reactor: MemoryReactorClock,
                                                tmp_path: Path) -> None:
    edge = build_edge(reactor, edge_config(tmp_path))
    for source in edge.pipeline.sources:
        assert verifyObject(ISource, source)
    for target in edge.pipeline.targets.values():
        assert verifyObject(ITarget, target)


# --- registries and rules ---------------------------------------------------------------


def test_router_pipeline_registry(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor, router_config(admin="tcp:7790"))
    pipeline = router.pipeline
    assert pipeline.role is Role.router and pipeline.node == "router"
    assert set(pipeline.targets) == {TargetKind.cluster_ip, TargetKind.tunnel}
    for kind, target in pipeline.targets.items():
        assert target.kind is kind
    # The admin listener is not a source: it never carries exchanges.
    assert [(s.kind, s.description) for s in pipeline.sources] == [
        (SourceKind.tunnel, "tcp:7700"),
        (SourceKind.router, "tcp:7780"),
    ]
    assert all(isinstance(s, Listener) for s in pipeline.sources)
    assert pipeline.rules == ROUTER_RULES
    assert pipeline.describe()["targets"] == ["cluster-ip", "tunnel"]


def test_edge_pipeline_registry(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = build_edge(reactor, edge_config(tmp_path, router="tcp:10.0.0.1:7700", admin="tcp:7791"))
    pipeline = edge.pipeline
    assert pipeline.role is Role.edge and pipeline.node == "edge-1"
    assert set(pipeline.targets) == {TargetKind.service_bus, TargetKind.hub, TargetKind.tunnel}
    for kind, target in pipeline.targets.items():
        assert target.kind is kind
    assert [(s.kind, s.description) for s in pipeline.sources] == [
        (SourceKind.tunnel, "tcp:10.0.0.1:7700"),
        (SourceKind.hub, "tcp:7701"),
        (SourceKind.service_bus, "tcp:7781"),
    ]
    assert isinstance(pipeline.sources[0], TunnelClient)
    assert pipeline.rules == EDGE_RULES


def test_edge_without_router_has_no_tunnel_source(reactor: MemoryReactorClock,
                                                  tmp_path: Path) -> None:
    edge = build_edge(reactor, edge_config(tmp_path, router=None))
    assert [s.kind for s in edge.pipeline.sources] == [SourceKind.hub, SourceKind.service_bus]
    # The tunnel target stays: without a link it answers peer-unavailable, it does not vanish.
    assert TargetKind.tunnel in edge.pipeline.targets


# --- router ↔ edge: catalog push and ack --------------------------------------------------


def test_router_pushes_snapshot_on_link_ready_and_records_ack(mesh: Mesh) -> None:
    edge = mesh.edge()
    assert edge.catalog == Catalog.empty()
    mesh.connect()
    state = mesh.router.edges["edge-1"]
    assert state.sent == 1
    assert state.acked == 1
    assert edge.catalog == mesh.router.catalog
    assert mesh.router.links == {"edge-1": state.link}
    router_hello = edge.links[ROUTER_PEER].peer
    assert router_hello is not None and router_hello.role == Role.router.value


def test_set_catalog_pushes_to_every_edge(mesh: Mesh) -> None:
    edge1, edge2 = mesh.edge("edge-1"), mesh.edge("edge-2")
    mesh.connect()
    mesh.connect()
    newer = make_catalog(revision=2, extra=True)
    mesh.router.set_catalog(newer)
    # Nothing moves until the pumps run: the acks still say 1.
    assert [mesh.router.edges[n].acked for n in ("edge-1", "edge-2")] == [1, 1]
    assert [mesh.router.edges[n].sent for n in ("edge-1", "edge-2")] == [2, 2]
    mesh.flush()
    assert edge1.catalog == newer and edge2.catalog == newer
    assert [mesh.router.edges[n].acked for n in ("edge-1", "edge-2")] == [2, 2]


def test_edge_persists_the_push_before_acking(mesh: Mesh, tmp_path: Path) -> None:
    edge = mesh.edge()
    pump = mesh.connect()
    events: list[str] = []
    link = edge.links[ROUTER_PEER]
    save, send_control = edge.store.save, link.send_control

    def recording_save(catalog: Catalog) -> None:
        save(catalog)
        events.append(f"saved {catalog.revision}")

    def recording_send(data: bytes) -> None:
        events.append("ack sent")
        send_control(data)

    edge.store.save = recording_save  # type: ignore[method-assign]
    link.send_control = recording_send  # type: ignore[method-assign]
    mesh.router.set_catalog(make_catalog(revision=5))
    pump.flush()
    assert events == ["saved 5", "ack sent"]
    stored, problems = CatalogStore(str(tmp_path / "edge-1")).load()
    assert problems == []
    assert stored == make_catalog(revision=5)
    assert mesh.router.edges["edge-1"].acked == 5


def test_a_refused_catalog_write_is_tried_again_until_the_disk_takes_it(
        mesh: Mesh, reactor: MemoryReactorClock) -> None:
    """A full or read-only disk refused the write: nothing else would write it again (only a
    next push), so an edge restarted offline served the older catalog, the router saw the
    lag forever, and /readyz said nothing.  The write is tried again, backing off, and
    /readyz says why it is not on disk meanwhile."""
    from edgemesh.roles._admin import readiness

    edge = mesh.edge()
    pump = mesh.connect()
    real_save = edge.store.save
    disk_full = [True]

    def save(catalog: Catalog) -> None:
        if disk_full[0]:
            raise OSError(28, "No space left on device")
        real_save(catalog)

    edge.store.save = save  # type: ignore[method-assign]
    with capturedLogs() as events:
        mesh.router.set_catalog(make_catalog(revision=6))
        pump.flush()
        for _ in range(20):  # retried after 1, 2, 4 and 8 s: still full
            reactor.advance(1)  # (a second at a time: the heartbeats flow meanwhile)
            pump.flush()
        ready, _, detail = readiness(edge)
        assert ready and "catalog revision 6 not on disk: [Errno 28]" in detail["catalog_store"]
        assert mesh.router.edges["edge-1"].acked == 1
        disk_full[0] = False
        for _ in range(20):  # the next try, 16 s after the last
            reactor.advance(1)
            pump.flush()
    assert mesh.router.edges["edge-1"].acked == 6
    assert CatalogStore(edge.store.directory).load()[0] == edge.catalog
    assert "catalog_store" not in readiness(edge)[2]
    errors = [e for e in events if e["log_level"] is LogLevel.error]
    assert len(errors) == 1, "the retries of one failure log nothing more"
    assert any("persisted after" in e.get("log_format", "") for e in events)


def test_edge_does_not_ack_what_it_could_not_save(mesh: Mesh) -> None:
    edge = mesh.edge()
    pump = mesh.connect()

    def failing_save(catalog: Catalog) -> None:
        raise OSError(28, "No space left on device")

    edge.store.save = failing_save  # type: ignore[method-assign]
    with capturedLogs() as events:
        mesh.router.set_catalog(make_catalog(revision=6))
        pump.flush()
    assert mesh.router.edges["edge-1"].sent == 6
    assert mesh.router.edges["edge-1"].acked == 1
    assert mesh.router.edges_view()[0]["lag"] == 5
    assert any(e["log_level"] is LogLevel.error and e.get("revision") == 6 for e in events)
    # The link stays up: the next push may be saved.
    assert ROUTER_PEER in edge.links


def test_duplicate_push_is_idempotent(mesh: Mesh, tmp_path: Path) -> None:
    edge = mesh.edge()
    pump = mesh.connect()
    state = mesh.router.edges["edge-1"]
    for _ in range(2):
        state.link.send_control(encode_catalog(1, "snapshot", catalog_to_wire(mesh.router.catalog)))
        pump.flush()
    assert edge.catalog == make_catalog(revision=1)
    assert state.acked == 1 and ROUTER_PEER in edge.links
    assert CatalogStore(str(tmp_path / "edge-1")).load() == (make_catalog(revision=1), [])


@pytest.mark.parametrize(
    "payload",
    [
        {"format": "something-else"},
        {**catalog_to_wire(make_catalog()), "nodes": [["edge-1", "yes", None, 7701, None]]},
        {**catalog_to_wire(make_catalog()), "services": "nope"},
    ],
    ids=["format", "node-field", "services-type"],
)
def test_edge_closes_the_link_on_an_invalid_push(
    mesh: Mesh, tmp_path: Path, payload: dict[str, Any]
) -> None:
    edge = mesh.edge()
    pump = mesh.connect()
    stored_before = (tmp_path / "edge-1" / STORE_FILE).read_bytes()
    state = mesh.router.edges["edge-1"]
    with capturedLogs() as events:
        state.link.send_control(encode_catalog(9, "snapshot", payload))
        pump.flush()
    assert edge.catalog == make_catalog(revision=1), "the served catalog is unchanged"
    assert ROUTER_PEER not in edge.links
    assert "edge-1" not in mesh.router.edges, "the router saw the link close"
    assert state.link.closed
    assert state.acked == 1
    assert (tmp_path / "edge-1" / STORE_FILE).read_bytes() == stored_before
    assert any("invalid catalog push" in e.get("log_format", "") for e in events)


def test_restarted_edge_serves_the_persisted_catalog_without_router(
    mesh: Mesh, reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    edge = mesh.edge()
    mesh.connect()
    mesh.router.set_catalog(make_catalog(revision=3, extra=True))
    mesh.flush()
    edge.stopService()

    later = MemoryReactorClock()
    again = build_edge(later, edge_config(tmp_path / "edge-1", router=None))
    start(again)
    assert again.catalog == make_catalog(revision=3, extra=True)
    # It serves: a local app asking for "late" (only in the pushed catalog) is sent to the pod.
    proxy: Any = again.listeners["proxy"].factory.buildProtocol(
        IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    proxy.makeConnection(transport)
    proxy.dataReceived(b"GET /x HTTP/1.1\r\nHost: late\r\n\r\n")
    assert [(host, port) for host, port, *_ in later.tcpClients] == [("10.1.0.9", 80)]
    assert transport.value() == b"", "no error answer: the request went upstream"


def test_edge_starts_from_the_seed_catalog_when_the_store_is_empty(
    reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    seed = make_catalog(revision=0)
    edge = build_edge(reactor, edge_config(tmp_path, router=None, catalog=seed))
    assert edge.catalog is seed
    # The seed is not written: only what a router pushed (and the edge acked) is persisted.
    assert not (tmp_path / STORE_FILE).exists()


def test_persisted_catalog_wins_over_the_seed(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    CatalogStore(str(tmp_path)).save(make_catalog(revision=7))
    edge = build_edge(
        reactor, edge_config(tmp_path, router=None, catalog=make_catalog(revision=0, extra=True)))
    assert edge.catalog == make_catalog(revision=7)


def test_corrupt_store_falls_back_to_the_seed_with_a_warning(
    reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    (tmp_path / STORE_FILE).write_bytes(b"\x00garbage")
    seed = make_catalog(revision=0)
    with capturedLogs() as events:
        edge = build_edge(reactor, edge_config(tmp_path, router=None, catalog=seed))
    assert edge.catalog is seed
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert any(STORE_FILE in str(e.get("problem")) for e in warnings)


def test_router_refuses_a_link_that_is_not_an_edge(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    tunnel = mesh.router.listeners["tunnel"].factory
    for role in (Role.router.value, "bogus"):
        peer, recorder, _ = fake_peer(reactor, tunnel, node="edge-1", role=role, dialing=True)
        assert mesh.router.edges == {} and mesh.router.links == {}
        assert [type(c) for c in recorder.controls] == [GoAway], (
            "no catalog for a non-edge, a refusal")
        assert peer.closed
        assert recorder.lost


def test_refused_impostor_does_not_drop_the_real_edge(mesh: Mesh,
                                                      reactor: MemoryReactorClock) -> None:
    mesh.edge()
    mesh.connect()
    real = mesh.router.edges["edge-1"].link
    tunnel = mesh.router.listeners["tunnel"].factory
    impostor, _, _ = fake_peer(reactor, tunnel, node="edge-1", role=Role.router.value, dialing=True)
    assert impostor.closed
    assert mesh.router.edges["edge-1"].link is real and not real.closed


def test_edge_refuses_a_tunnel_peer_that_is_not_a_router(
    reactor: MemoryReactorClock, tmp_path: Path
) -> None:
    edge = build_edge(reactor, edge_config(tmp_path))
    start(edge)
    dial = reactor.tcpClients[0][2]
    peer, recorder, pump = fake_peer(
        reactor, dial, node="router", role=Role.edge.value, dialing=False, flush=False
    )
    # Pump the hellos but not the disconnect (see the xfail test below for why).
    while not pump.clientIO.disconnecting:
        assert pump.pump(), "the edge never closed the link"
    assert ROUTER_PEER not in edge.links
    assert recorder.ready == [peer], "the peer's side finished its handshake"


@pytest.mark.parametrize(
    "role", [Role.edge.value, None], ids=["refused-peer", "closed-before-hello"])
def test_tunnel_lost_during_handshake_is_retried_quietly(
    reactor: MemoryReactorClock, tmp_path: Path, role: str | None
) -> None:
    edge = build_edge(reactor, edge_config(tmp_path))
    start(edge)
    dial = reactor.tcpClients.pop(0)[2]
    reactor.connectors.pop(0)
    if role is None:
        # The far end accepts and closes at once: no hello ever arrives.
        theirs: Any = dial.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7700))
        transport = makeFakeClient(theirs)
        theirs.makeConnection(transport)
        transport.disconnectReason = ConnectionDone("closed before hello")
        transport.reportDisconnect()
    else:
        fake_peer(reactor, dial, node="router", role=role, dialing=False)
    assert ROUTER_PEER not in edge.links
    reactor.advance(30)  # the tunnel's backoff
    assert len(reactor.tcpClients) == 1, "the edge dials again"


def test_edge_ignores_a_catalog_push_from_a_hub_peer(reactor: MemoryReactorClock,
                                                     tmp_path: Path) -> None:
    edge = build_edge(reactor, edge_config(tmp_path, router=None))
    start(edge)
    hub = edge.listeners["hub"].factory
    peer, recorder, pump = fake_peer(
        reactor, hub, node="edge-2", role=Role.edge.value, dialing=True)
    assert not peer.closed, "another edge may connect to the hub"
    peer.send_control(encode_catalog(4, "snapshot", catalog_to_wire(make_catalog(revision=4))))
    pump.flush()
    assert edge.catalog == Catalog.empty()
    assert recorder.controls == [], "no ack"
    assert not (tmp_path / STORE_FILE).exists()


def test_edge_replaces_a_stale_link(mesh: Mesh) -> None:
    mesh.edge("edge-1")
    mesh.edge("edge-1", state="edge-1-again")
    first_pump = mesh.connect()
    stale = mesh.router.edges["edge-1"].link
    mesh.connect()
    fresh = mesh.router.edges["edge-1"].link
    assert fresh is not stale
    assert stale.closed
    assert mesh.router.links == {"edge-1": fresh}
    # The stale connection's loss, reported later, does not remove its successor.
    first_pump.flush()
    assert mesh.router.edges["edge-1"].link is fresh
    assert mesh.router.edges["edge-1"].acked == 1


def test_edge_loss_removes_it_from_the_router(mesh: Mesh) -> None:
    edge = mesh.edge()
    pump = mesh.connect()
    edge.stopService()
    pump.flush()
    assert mesh.router.edges == {} and mesh.router.links == {}
    assert ROUTER_PEER not in edge.links


def test_edge_reconnects_its_tunnel(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    edge = mesh.edge()
    pump = mesh.connect()
    mesh.router.edges["edge-1"].link.close_now("test")
    pump.flush()
    assert ROUTER_PEER not in edge.links
    assert reactor.tcpClients == []
    reactor.advance(30)  # ClientService's backoff
    assert len(reactor.tcpClients) == 1
    mesh.connect()
    assert mesh.router.edges["edge-1"].acked == 1
    assert ROUTER_PEER in edge.links


def test_edges_view(mesh: Mesh) -> None:
    mesh.edge("edge-2")
    mesh.edge("edge-1")
    mesh.connect()
    mesh.connect()
    view = mesh.router.edges_view()
    assert [row["node"] for row in view] == ["edge-1", "edge-2"], "sorted by node"
    for row in view:
        assert set(row) == {
            "node", "connected_since", "connected_for", "acked_revision", "lag", "rtt"}
        assert row["acked_revision"] == 1
        assert row["lag"] == 0
        assert row["rtt"] is None, "no heartbeat yet"
        assert isinstance(row["connected_since"], float)
        assert isinstance(row["connected_for"], float) and row["connected_for"] >= 0
    mesh.router.edges["edge-2"].acked = None
    assert mesh.router.edges_view()[1]["lag"] is None


def test_edges_view_rtt_after_a_heartbeat(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    mesh.edge()
    pump = mesh.connect()
    reactor.advance(5)  # the router's heartbeat ping
    pump.flush()
    assert mesh.router.edges_view()[0]["rtt"] == pytest.approx(0.0)


def test_edges_view_follows_the_injected_clock(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    reactor.advance(1000)
    mesh.edge()
    mesh.connect()
    for _ in range(60):  # a second at a time, so that the heartbeats keep the link up
        reactor.advance(1)
        mesh.flush()
    row = mesh.router.edges_view()[0]
    assert row["connected_since"] == 1000.0
    assert row["connected_for"] == 60.0


def test_status(mesh: Mesh) -> None:
    edge = mesh.edge()
    mesh.connect()
    assert mesh.router.status() == {
        "role": "router", "node": "router", "serving": True, "catalog_revision": 1,
        "links": ["edge-1"],
    }
    assert edge.status() == {
        "role": "edge", "node": "edge-1", "serving": True, "catalog_revision": 1,
        "links": ["router"],
    }


def test_isinstances(mesh: Mesh) -> None:
    assert isinstance(mesh.router, RouterNode)
    assert isinstance(mesh.edge(), EdgeNode)


# --- whole exchanges over the links -------------------------------------------------------


def http_client(listener_factory: Any) -> tuple[Any, StringTransport]:
    """A client connection to an HTTP front listener, over a StringTransport."""
    protocol = listener_factory.buildProtocol(IPv4Address("TCP", "10.9.9.9", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def answer_upstream(reactor: MemoryReactorClock, mesh: Mesh, address: tuple[str, int]) -> bytes:
    """Accept the node's pending connection to ``address`` as a pod would: return the request
    it sends, and answer it."""
    (entry,) = [c for c in reactor.tcpClients if (c[0], c[1]) == address]
    pod: Any = entry[2].buildProtocol(None)
    transport = StringTransport()
    pod.makeConnection(transport)
    mesh.flush()
    request: bytes = transport.value()
    pod.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Pod: p\r\n\r\nhello")
    mesh.flush()
    return request


def test_cloud_to_edge_exchange(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    mesh.edge("edge-1")
    mesh.connect()
    client, transport = http_client(mesh.router.listeners["http"].factory)
    client.dataReceived(b"GET /hello HTTP/1.1\r\nHost: web\r\n\r\n")
    mesh.flush()
    request = answer_upstream(reactor, mesh, ("10.1.0.1", 8080))
    assert request.startswith(b"GET /hello HTTP/1.1\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.value().endswith(b"\r\n\r\nhello")


def test_edge_to_cloud_exchange(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    edge = mesh.edge("edge-1")
    mesh.connect()
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(b"GET /c HTTP/1.1\r\nHost: cloud\r\n\r\n")
    mesh.flush()
    # The router reaches a cloud endpoint through the service's ClusterIP.
    request = answer_upstream(reactor, mesh, ("10.96.0.20", 8000))
    assert request.startswith(b"GET /c HTTP/1.1\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")


def test_edge_to_edge_exchange_over_the_hub(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    edge1 = mesh.edge("edge-1", hub=None)
    # Listening on the catalog's hub port for edge-2; no router: it starts from the seed.
    edge2 = mesh.edge("edge-2", hub="tcp:7701", router=None, catalog=make_catalog())
    mesh.connect()  # edge-1's tunnel: it learns the catalog
    client, transport = http_client(edge1.listeners["proxy"].factory)
    client.dataReceived(b"GET /api HTTP/1.1\r\nHost: api\r\n\r\n")
    dials = [(host, port, timeout) for host, port, _, timeout, _ in reactor.tcpClients]
    assert ("127.0.0.2", 7701, 5.0) in dials
    mesh.connect()  # edge-1's hub dial to edge-2's hub listener
    request = answer_upstream(reactor, mesh, ("10.2.0.1", 9090))
    assert request.startswith(b"GET /api HTTP/1.1\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert "edge-2" in edge1.links, "the hub link is kept for the next exchange"
    assert edge2.links == {}, "an inbound hub link is not a way out"


def test_edge_without_a_tunnel_answers_peer_unavailable(mesh: Mesh) -> None:
    edge = mesh.edge("edge-1", router=None, catalog=make_catalog())
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: cloud\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 502 ")
    assert b"peer-unavailable" in transport.value()


def test_hub_dial_keeps_a_fractional_connect_timeout(mesh: Mesh,
                                                     reactor: MemoryReactorClock) -> None:
    edge = mesh.edge("edge-1", connect_timeout=0.5, router=None, catalog=make_catalog())
    endpoint = edge.hub_endpoint("edge-2")
    assert endpoint is not None
    endpoint.connect(Factory.forProtocol(Protocol))
    host, port, _, timeout, _ = reactor.tcpClients[-1]
    assert (host, port) == ("127.0.0.2", 7701)
    assert timeout == 0.5


def test_hub_peer_refused_during_handshake(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    edge = mesh.edge("edge-1", hub=None, router=None, catalog=make_catalog())
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(b"GET /api HTTP/1.1\r\nHost: api\r\n\r\n")
    (dial,) = [c[2] for c in reactor.tcpClients if (c[0], c[1]) == ("127.0.0.2", 7701)]
    # Whoever listens at edge-2's hub address says it is a router: edge-1 refuses it.
    fake_peer(reactor, dial, node="edge-2", role=Role.router.value, dialing=False)
    assert "edge-2" not in edge.links
    assert transport.value().startswith(b"HTTP/1.1 502 ")
    assert b"peer-unavailable" in transport.value()


# --- a listen that does not answer at once ------------------------------------------------


class LateEndpoint:
    """A server endpoint whose listen answers later (socket activation, a plugin's)."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.listening: Deferred[Any] = Deferred()

    def listen(self, factory: Any) -> Any:
        return self.listening


def late_listener(monkeypatch: pytest.MonkeyPatch) -> tuple[Listener, LateEndpoint]:
    import edgemesh.roles._node as node_module

    late = LateEndpoint()
    monkeypatch.setattr(node_module, "serverFromString", lambda reactor, description: late)
    listener = Listener(MemoryReactorClock(), SourceKind.service_bus, "late:1",
                        Factory.forProtocol(Protocol))
    listener.privilegedStartService()
    listener.startService()
    return listener, late


def test_a_listen_that_answers_later_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    listener, late = late_listener(monkeypatch)
    assert listener.port is None  # not listening yet: /readyz says so
    port = StringTransport()  # anything with getHost and stopListening will do
    port.stopListening = lambda: None  # type: ignore[attr-defined]
    late.listening.callback(port)
    assert listener.port is port
    assert listener.address == port.getHost()


def test_a_later_listen_failure_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    listener, late = late_listener(monkeypatch)
    with capturedLogs() as events:
        late.listening.errback(CannotListenError("", 1, OSError("in use")))
    assert listener.port is None
    assert [e for e in events if e.get("log_failure") is not None
            and "could not listen" in e["log_format"]]


def test_stopping_cancels_a_listen_that_has_not_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    listener, late = late_listener(monkeypatch)
    with capturedLogs() as events:
        assert listener.stopService() is None
    assert late.listening.called  # cancelled
    assert not [e for e in events if e.get("log_failure") is not None]
    late.listening.addErrback(lambda failure: None)


def test_reconnect_lines_name_what_they_dial() -> None:
    """ClientService logs "Scheduling retry N to connect <endpoint> ...": the endpoint reads
    as the router (or the replicas, or a peer's hub), not as "<... object at 0x7f...>"."""
    from twisted.internet.defer import fail
    from twisted.internet.interfaces import IStreamClientEndpoint
    from twisted.logger import formatEvent
    from zope.interface import implementer

    from edgemesh.roles._node import RotatingEndpoint
    from edgemesh.transports._peers import _WatchedEndpoint

    @implementer(IStreamClientEndpoint)
    class Refusing:
        def connect(self, factory: Any) -> Any:
            return fail(ConnectionRefusedError("refused"))

    reactor = MemoryReactorClock()
    client = TunnelClient(reactor, "tcp:127.0.0.1:7700", lambda: None,  # type: ignore[arg-type,return-value]
                          secure=lambda _: Refusing())
    with capturedLogs() as events:
        client.startService()
    lines = [formatEvent(event) for event in events]
    assert any(line.startswith("Scheduling retry 1 to connect router at tcp:127.0.0.1:7700 ")
               for line in lines), lines
    client.stopService()
    assert repr(RotatingEndpoint([("r1", Refusing()), ("r2", Refusing())])) == \
        "router replicas r1, r2"
    assert repr(_WatchedEndpoint(Refusing(), "edge-2", set())) == "the hub of edge-2"


def test_two_edges_with_one_name_are_warned_of(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    """Each new tunnel of an edge name closes the open one: two processes with one name and
    certificate replace each other for ever.  Once is normal (a reconnect before the old
    tunnel timed out); five times within five minutes is one warning."""
    mesh.edge("edge-1", state="first")
    mesh.edge("edge-1", state="second")
    with capturedLogs() as events:
        for _ in range(60):  # a second at a time: the heartbeats flow meanwhile
            reactor.advance(1)  # the replaced one dials again after its backoff
            pump = ConnectionCompleter(reactor).succeedOnce()
            if pump is not None:
                mesh.pumps.append(pump)
            mesh.flush()
    warned = [e for e in events if "was replaced" in e.get("log_format", "")]
    replaced = mesh.router.replacements["edge-1"][1]
    assert replaced >= 5, replaced
    assert len(warned) == 1 and warned[0]["node"] == "edge-1"
    assert warned[0]["log_level"] is LogLevel.warn
