"""
Metrics: MeshObserver's counters as exchanges go through a Pipeline (fake targets, a
Clock), the front and the admin site (StringTransport), and their Prometheus exposition.

``python tests/test_metrics.py`` measures the instrumentation's cost per request (see
``overhead``); it is not a test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface.verify import verifyObject

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import (
    IRequestBody,
    IResponder,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    Role,
    SourceKind,
    TargetKind,
)
from edgemesh.observability import (
    DURATION_BUCKETS,
    MeshCollector,
    MeshObserver,
    ObservabilityConfig,
    exchange_path,
    exposition,
    node_registry,
)
from edgemesh.roles import EdgeConfig, RouterConfig, build_edge, build_router
from edgemesh.routing import Pipeline, Route
from edgemesh.routing._guard import GuardedBody, GuardedExchange
from edgemesh.testing import CompletingResponder, Opened, RecordingResponder, ScriptedTarget
from edgemesh.transports import HTTPFrontFactory

HTTP = ServicePort("http", 80, 8080)
NODES = (
    Node("edge-1", True, "192.0.2.1", 7701),
    Node("edge-2", True, "192.0.2.2", 7701),
    Node("cloud-1", False, "10.0.0.5", 7701),
)


def make_catalog(extra: int = 0) -> Catalog:
    services = [
        Service("shop", "web", "10.96.0.10", (HTTP,),
                {"http": (Endpoint("10.1.0.1", 8080, "edge-1"),)}),
        Service("shop", "remote", "10.96.0.11", (HTTP,),
                {"http": (Endpoint("10.2.0.1", 8080, "edge-2"),)}),
        Service("shop", "cloud", "10.96.0.12", (HTTP,),
                {"http": (Endpoint("10.9.0.1", 8080, "cloud-1"),)}),
        Service("shop", "down", "10.96.0.13", (HTTP,), {"http": ()}),
    ]
    services += [
        Service("many", f"s{i}", None, (HTTP,), {"http": (Endpoint("10.1.1.1", 8080, "edge-1"),)})
        for i in range(extra)
    ]
    return Catalog(services, NODES, revision=7)


# -- fakes ----------------------------------------------------------------------------


def answer_whole(call: Opened) -> None:
    call.complete(body=b"hello")


def ok(body: bytes = b"hello", status: int = 200) -> ResponseHead:
    return ResponseHead(status, b"OK", (), len(body))


def request(authority: bytes = b"web.shop", content_length: int | None = 0) -> RequestHead:
    return RequestHead(b"GET", b"/x?token=secret", authority, (), content_length, "10.0.0.9")


class Mesh:
    """A pipeline with fake targets and an observer on a Clock."""

    def __init__(self, role: Role = Role.edge, config: ObservabilityConfig | None = None,
                 catalog: Catalog | None = None) -> None:
        self.clock = Clock()
        self.pipeline = Pipeline(
            role, "edge-1" if role is Role.edge else "router", catalog or make_catalog())
        self.observer = MeshObserver(self.clock, role, self.pipeline.node, config)
        self.observer.attach(self.pipeline)
        kinds = (
            (TargetKind.service_bus, TargetKind.hub, TargetKind.tunnel)
            if role is Role.edge
            else (TargetKind.tunnel, TargetKind.cluster_ip)
        )
        self.targets = {kind: ScriptedTarget(kind) for kind in kinds}
        for target in self.targets.values():
            self.pipeline.add_target(target)

    def dispatch(self, authority: bytes = b"web.shop", source: SourceKind = SourceKind.service_bus,
                 responder: IResponder | None = None,
                 content_length: int | None = 0) -> IRequestBody:
        return self.pipeline.dispatch(
            source, request(authority, content_length), responder or RecordingResponder())

    def stats(self, service: str, path: str) -> Any:
        return self.observer.tables[service, path]

    def families(self) -> dict[str, Any]:
        registry = node_registry(
            MeshCollector(self.observer, lambda: self.pipeline.catalog), process=False
        )
        body, content_type = exposition(registry, None)
        assert content_type.startswith("text/plain")
        return parse(body)


def parse(body: bytes) -> dict[str, Any]:
    """The Prometheus text exposition, parsed by prometheus_client's own parser."""
    families = text_string_to_metric_families(body.decode())
    return {family.name: family for family in families}


def samples(families: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples called ``name`` (in any family), by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == name
    }


# -- paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "source", "target", "path"),
    [
        (Role.edge, SourceKind.service_bus, TargetKind.service_bus, "local"),
        (Role.edge, SourceKind.service_bus, TargetKind.hub, "edge-edge"),
        (Role.edge, SourceKind.service_bus, TargetKind.tunnel, "edge-cloud"),
        (Role.edge, SourceKind.hub, TargetKind.service_bus, "edge-edge"),
        (Role.edge, SourceKind.tunnel, TargetKind.service_bus, "cloud-edge"),
        (Role.edge, SourceKind.service_bus, None, "none"),
        (Role.router, SourceKind.router, TargetKind.tunnel, "cloud-edge"),
        (Role.router, SourceKind.router, TargetKind.cluster_ip, "local"),
        (Role.router, SourceKind.tunnel, TargetKind.cluster_ip, "edge-cloud"),
        (Role.router, SourceKind.tunnel, TargetKind.tunnel, "edge-edge"),
        (Role.router, SourceKind.router, None, "none"),
    ],
)
def test_exchange_path(role: Role, source: SourceKind,
                       target: TargetKind | None, path: str) -> None:
    assert exchange_path(role, source, target) == path


def test_paths_through_the_pipeline() -> None:
    mesh = Mesh()
    mesh.dispatch(b"web.shop")
    mesh.dispatch(b"remote.shop")
    mesh.dispatch(b"cloud.shop")
    mesh.pipeline.dispatch_resolved(
        SourceKind.hub, request(), RecordingResponder(), "shop/web", 80, None)
    mesh.pipeline.dispatch_resolved(
        SourceKind.tunnel, request(), RecordingResponder(), "shop/web", 80, None)
    assert sorted(mesh.observer.tables) == [
        ("shop/cloud", "edge-cloud"), ("shop/remote", "edge-edge"),
        ("shop/web", "cloud-edge"), ("shop/web", "edge-edge"), ("shop/web", "local"),
    ]
    assert all(stats.active == 1 for stats in mesh.observer.tables.values())


class _Everyone:
    def __contains__(self, peer: object) -> bool:
        return True


class Unreachable:
    """PeerPaths: no hub can be dialled, so edges are reached through the router."""

    unreachable = _Everyone()

    def paths(self) -> dict[str, str]:
        return {}


def test_relayed_edge_to_edge_is_edge_edge() -> None:
    mesh = Mesh()
    mesh.pipeline.peer_paths = Unreachable()
    mesh.dispatch(b"remote.shop")
    mesh.dispatch(b"cloud.shop")
    relayed, _ = mesh.targets[TargetKind.tunnel].opened
    assert relayed.route.endpoint is not None and relayed.route.endpoint.node == "edge-2"
    assert sorted(mesh.observer.tables) == [
        ("shop/cloud", "edge-cloud"), ("shop/remote", "edge-edge")]


# -- one exchange ----------------------------------------------------------------------


def test_an_exchange_is_counted_when_it_ends() -> None:
    mesh = Mesh()
    source = RecordingResponder()
    body = mesh.dispatch(responder=source, content_length=None)
    (opened,) = mesh.targets[TargetKind.service_bus].opened
    # No wrapper of its own: the pipeline's guarded exchange is what gets counted.
    assert isinstance(body, GuardedBody) and verifyObject(IRequestBody, body)
    assert isinstance(body.guard, GuardedExchange) and verifyObject(IResponder, body.guard)
    body.write(b"12345")
    body.write(b"678")
    body.end()
    assert opened.body.chunks == [b"12345", b"678"] and opened.body.ended
    stats = mesh.stats("shop/web", "local")
    assert stats.active == 1 and stats.bytes_in == 8 and sum(stats.codes) == 0

    mesh.clock.advance(0.003)
    producer: Any = object()
    opened.responder.setProducer(producer)
    opened.responder.head(ok())
    opened.responder.write(b"hel")
    opened.responder.write(b"lo")
    opened.responder.end()
    assert source.producer is producer and source.status == 200
    assert source.calls == ["head", "write", "write", "end"] and source.chunks == [b"hel", b"lo"]
    assert stats.active == 0 and stats.bytes_out == 5
    assert stats.codes[2] == 1 and sum(stats.codes) == 1
    assert stats.duration_sum == pytest.approx(0.003)
    assert stats.counts[DURATION_BUCKETS.index(0.005)] == 1 and sum(stats.counts) == 1

    # Late calls (a body abort after the response, another end) count nothing more, and
    # with both directions over, the exchange has let go of its target.
    body.abort("response complete before the request body")
    opened.responder.end()
    assert sum(stats.codes) == 1 and stats.active == 0 and opened.body.aborted is None


def test_complete_is_forwarded_whole_or_in_pieces() -> None:
    mesh = Mesh()
    fast, slow = CompletingResponder(), RecordingResponder()
    mesh.dispatch(responder=fast)
    mesh.dispatch(responder=slow)
    first, second = mesh.targets[TargetKind.service_bus].opened
    first.complete(200, b"hello")
    second.complete(200, b"")
    assert (fast.calls, fast.status, fast.body) == (["complete"], 200, b"hello")
    assert (slow.calls, slow.status, slow.body) == (["head", "end"], 200, b"")
    stats = mesh.stats("shop/web", "local")
    assert stats.codes[2] == 2 and stats.bytes_out == 5 and stats.active == 0


def test_failures_before_and_after_the_head() -> None:
    mesh = Mesh()
    before, after = RecordingResponder(), RecordingResponder()
    mesh.dispatch(responder=before)
    mesh.dispatch(responder=after)
    first, second = mesh.targets[TargetKind.service_bus].opened
    first.responder.fail(MeshError(Reason.upstream_refused, "refused"))
    second.responder.head(ok())
    second.responder.fail(MeshError(Reason.upstream_lost, "reset"))
    assert before.calls == ["fail"] and before.error is not None
    assert before.error.reason.code == "upstream-refused"
    assert after.calls == ["head", "fail"] and after.status == 200 and after.error is not None
    assert after.error.reason.code == "upstream-lost"
    stats = mesh.stats("shop/web", "local")
    assert stats.codes[5] == 1 and stats.codes[2] == 1 and stats.active == 0
    assert mesh.observer.errors["upstream-refused"] == 1
    assert mesh.observer.errors["upstream-lost"] == 1


def test_client_abort_before_the_head() -> None:
    mesh = Mesh()
    body = mesh.dispatch()
    (opened,) = mesh.targets[TargetKind.service_bus].opened
    body.abort("client connection lost")
    assert opened.body.aborted == "client connection lost"
    stats = mesh.stats("shop/web", "local")
    assert stats.codes[0] == 1 and stats.active == 0
    opened.responder.fail(MeshError(Reason.upstream_lost, "cancelled"))  # the target gives up too
    assert sum(stats.codes) == 1 and mesh.observer.errors["upstream-lost"] == 0


def test_a_target_that_raises_is_counted_once() -> None:
    mesh = Mesh()
    mesh.targets[TargetKind.hub].raises = MeshError(Reason.peer_unavailable, "no link to edge-2")
    with pytest.raises(MeshError):
        mesh.dispatch(b"remote.shop")
    stats = mesh.stats("shop/remote", "edge-edge")
    assert stats.codes[5] == 1 and stats.active == 0
    assert mesh.observer.errors["peer-unavailable"] == 1


def test_refused_exchanges() -> None:
    mesh = Mesh()
    for authority in (b"nope.shop", b"down.shop", b"web.shop:81"):
        with pytest.raises(MeshError):
            mesh.dispatch(authority)
    with pytest.raises(MeshError):
        mesh.pipeline.dispatch_resolved(
            SourceKind.hub, request(), RecordingResponder(), "shop/gone", 80, None)
    with pytest.raises(MeshError):
        mesh.pipeline.dispatch_resolved(
            SourceKind.tunnel, request(), RecordingResponder(), "shop/down", 80, None)
    errors = {code: count for code, count in mesh.observer.errors.items() if count}
    assert errors == {"unknown-service": 3, "no-endpoint": 2}
    tables = {key: (stats.codes[4], stats.codes[5]) for key, stats in mesh.observer.tables.items()}
    assert tables == {
        ("unknown", "none"): (2, 0),  # service-bus: the target says the path, and there was none
        ("shop/down", "none"): (0, 1),
        ("unknown", "edge-edge"): (1, 0),
        ("shop/down", "cloud-edge"): (0, 1),
    }
    assert all(stats.active == 0 for stats in mesh.observer.tables.values())


def test_an_internal_error_in_a_target_counts_as_upstream_lost() -> None:
    mesh = Mesh()

    def boom(call: Opened) -> None:
        raise RuntimeError("bug")

    mesh.targets[TargetKind.service_bus].answer = boom
    with pytest.raises(RuntimeError):
        mesh.dispatch()
    assert mesh.observer.errors["upstream-lost"] == 1
    assert mesh.stats("shop/web", "local").active == 0


# -- cardinality ------------------------------------------------------------------------


def test_services_past_the_bound_count_as_other() -> None:
    mesh = Mesh(config=ObservabilityConfig(max_services=3), catalog=make_catalog(extra=20))
    for i in range(20):
        mesh.dispatch(f"s{i}.many".encode())
        mesh.dispatch(f"s{i}.many".encode())
    labels = {service for service, _ in mesh.observer.tables}
    assert labels == {"many/s0", "many/s1", "many/s2", "other"}
    assert mesh.stats("other", "local").active == 34
    assert len(mesh.observer.stats) == 3, "overflowing services are not cached one by one"
    families = mesh.families()
    active = samples(families, "edgemesh_active_streams")
    assert len(active) == 4 and active[(("path", "local"), ("service", "other"))] == 34


def test_label_sets_are_bounded_whatever_the_traffic() -> None:
    """Unknown names, methods and URLs never become labels."""
    mesh = Mesh(config=ObservabilityConfig(max_services=2))
    for i in range(200):
        with pytest.raises(MeshError):
            mesh.dispatch(f"svc-{i}.ns-{i}".encode())
    assert list(mesh.observer.tables) == [("unknown", "none")]
    assert len(mesh.observer.stats) == 1


# -- exposition ---------------------------------------------------------------------------


def test_exposition_parses_and_has_the_values() -> None:
    mesh = Mesh()
    for delay, status in ((0.0002, 200), (0.02, 404), (2.0, 503)):
        body = mesh.dispatch(content_length=3)
        body.write(b"abc")
        body.end()
        mesh.clock.advance(delay)
        mesh.targets[TargetKind.service_bus].opened[-1].responder.head(ok(status=status))
        mesh.targets[TargetKind.service_bus].opened[-1].responder.write(b"xy")
        mesh.targets[TargetKind.service_bus].opened[-1].responder.end()
    mesh.dispatch()  # one in flight
    with pytest.raises(MeshError):
        mesh.dispatch(b"down.shop")
    families = mesh.families()
    key = (("path", "local"), ("service", "shop/web"))
    requests = samples(families, "edgemesh_requests_total")
    assert requests == {
        (("code_class", "2xx"), *key): 1,
        (("code_class", "4xx"), *key): 1,
        (("code_class", "5xx"), *key): 1,
        (("code_class", "5xx"), ("path", "none"), ("service", "shop/down")): 1,
    }
    assert samples(families, "edgemesh_request_bytes_total")[key] == 9
    assert samples(families, "edgemesh_response_bytes_total")[key] == 6
    assert samples(families, "edgemesh_active_streams")[key] == 1
    buckets = {
        dict(labels)["le"]: value
        for labels, value in samples(families, "edgemesh_request_duration_seconds_bucket").items()
        if dict(labels)["service"] == "shop/web"
    }
    assert buckets["0.0005"] == 1 and buckets["0.025"] == 2 and buckets["1.0"] == 2
    assert buckets["2.5"] == 3 and buckets["+Inf"] == 3
    assert samples(families, "edgemesh_request_duration_seconds_count")[key] == 3
    assert samples(families, "edgemesh_request_duration_seconds_sum")[key] == pytest.approx(2.0202)
    errors = samples(families, "edgemesh_errors_total")
    assert {dict(k)["reason"] for k in errors} == {reason.code for reason in Reason}
    assert errors[(("reason", "no-endpoint"),)] == 1 and sum(errors.values()) == 1
    assert samples(families, "edgemesh_catalog_revision") == {(): 7}
    assert samples(families, "edgemesh_catalog_services") == {(): 4}
    assert samples(families, "edgemesh_info") == {(("node", "edge-1"), ("role", "edge")): 1}
    for family in families.values():
        assert family.name.startswith("edgemesh_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_openmetrics_when_asked() -> None:
    mesh = Mesh()
    mesh.dispatch()
    registry = node_registry(MeshCollector(mesh.observer, lambda: mesh.pipeline.catalog))
    body, content_type = exposition(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(body.decode())}  # type: ignore[no-untyped-call]
    assert {
        "edgemesh_requests", "edgemesh_request_duration_seconds", "edgemesh_active_streams"
    } <= names
    assert "process_cpu_seconds" in names, "process metrics come with the node's registry"


# -- peers and edges ----------------------------------------------------------------------


class FakeLink:
    def __init__(self, rtt: float | None = None) -> None:
        self.rtt = rtt
        self.closed = False
        self.exchanges: dict[int, object] = {}


def test_peers_up_down_reconnects_rtt() -> None:
    mesh = Mesh()
    observer = mesh.observer
    first, second, hub = FakeLink(), FakeLink(rtt=0.004), FakeLink(rtt=0.001)
    observer.link_up("router", "tunnel", first)
    mesh.clock.advance(10)
    observer.link_down(first, "heartbeat timeout")
    observer.link_down(first, "again")  # reported twice: ignored
    observer.link_down(FakeLink(), "never up")  # refused before it was up: ignored
    mesh.clock.advance(5)
    observer.link_up("router", "tunnel", second)
    observer.link_up("edge-2", "hub-out", hub)
    hub.exchanges = {1: object(), 3: object()}
    mesh.clock.advance(2)

    families = mesh.families()
    tunnel = (("link", "tunnel"), ("peer", "router"))
    out = (("link", "hub-out"), ("peer", "edge-2"))
    assert samples(families, "edgemesh_peer_up") == {tunnel: 1, out: 1}
    assert samples(families, "edgemesh_peer_reconnects_total") == {tunnel: 1, out: 0}
    assert samples(families, "edgemesh_peer_rtt_seconds") == {tunnel: 0.004, out: 0.001}
    assert samples(families, "edgemesh_peer_streams") == {tunnel: 0, out: 2}

    rows = {row["peer"]: row for row in observer.peers_view()}
    assert rows["router"] == {
        "peer": "router", "link": "tunnel", "mode": "relayed", "connected": True,
        "connected_since": 15.0, "connected_for": 2.0, "disconnected_at": None,
        "last_reason": "heartbeat timeout", "reconnects": 1, "rtt": 0.004, "streams": 0,
    }
    assert rows["edge-2"]["mode"] == "direct" and rows["edge-2"]["streams"] == 2

    observer.link_down(hub, "connection lost")
    row = {r["peer"]: r for r in observer.peers_view()}["edge-2"]
    assert row["connected"] is False and row["rtt"] is None and row["disconnected_at"] == 17.0
    assert samples(mesh.families(), "edgemesh_peer_up")[out] == 0


def test_disconnected_peers_are_bounded() -> None:
    mesh = Mesh(config=ObservabilityConfig(max_peers=2))
    links = [FakeLink() for _ in range(5)]
    for i, link in enumerate(links):
        mesh.observer.link_up(f"edge-{i}", "hub-in", link)
    assert len(mesh.observer.peers) == 5, "connected links are always tracked"
    for i in (3, 1, 4):
        mesh.observer.link_down(links[i], "gone")
    # Three disconnected, two remembered: the one that went first is forgotten.
    assert sorted(peer for peer, _ in mesh.observer.peers) == [
        "edge-0", "edge-1", "edge-2", "edge-4"]
    mesh.observer.link_up("edge-1", "hub-in", FakeLink())  # back: no longer among the gone
    mesh.observer.link_down(links[0], "gone")
    assert sorted(peer for peer, _ in mesh.observer.peers) == [
        "edge-0", "edge-1", "edge-2", "edge-4"]


def test_router_edges_catalog_lag() -> None:
    mesh = Mesh(Role.router)
    rows: list[dict[str, object]] = [
        {"node": "edge-1", "acked_revision": 7, "lag": 0},
        {"node": "edge-2", "acked_revision": 5, "lag": 2},
        {"node": "edge-3", "acked_revision": None, "lag": None},
    ]
    registry = node_registry(
        MeshCollector(mesh.observer, lambda: mesh.pipeline.catalog, lambda: rows), process=False
    )
    families = parse(exposition(registry, None)[0])
    assert samples(families, "edgemesh_edge_catalog_acked_revision") == {
        (("edge", "edge-1"),): 7, (("edge", "edge-2"),): 5,
    }
    assert samples(families, "edgemesh_edge_catalog_lag_revisions") == {
        (("edge", "edge-1"),): 0, (("edge", "edge-2"),): 2,
    }


# -- through the node: front, links, admin ---------------------------------------------------


def front_connection(factory: HTTPFrontFactory) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return protocol, transport


def test_node_counts_front_exchanges_and_rejections(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    edge = build_edge(reactor,
                      EdgeConfig(node="edge-1", state_dir=str(tmp_path), catalog=make_catalog(),
                                          router=None, hub=None))
    pod = ScriptedTarget(TargetKind.service_bus, answer_whole)
    edge.pipeline.targets[TargetKind.service_bus] = pod
    factory = edge.listeners["proxy"].factory
    assert isinstance(factory, HTTPFrontFactory)
    protocol, transport = front_connection(factory)
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: web.shop\r\n\r\n" * 2)
    assert transport.value().count(b"HTTP/1.1 200 OK") == 2
    protocol.dataReceived(b"GET /b HTTP/1.1\r\nHost: nope.shop\r\n\r\n")
    assert b"404" in transport.value()
    stats = edge.observer.tables["shop/web", "local"]
    assert stats.codes[2] == 2 and stats.bytes_out == 10 and stats.active == 0
    assert edge.observer.tables["unknown", "none"].codes[4] == 1

    protocol, transport = front_connection(factory)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: web.shop\r\nContent-Length: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert edge.observer.errors["bad-request"] == 1
    assert edge.observer.errors["unknown-service"] == 1


def test_node_tracks_its_links(tmp_path: Path) -> None:
    """Router and edge report their tunnel to the observer (a real link pair over iosim)."""
    from twisted.test.iosim import ConnectionCompleter

    reactor = MemoryReactorClock()
    router = build_router(reactor, RouterConfig(catalog=make_catalog()))
    edge = build_edge(reactor, EdgeConfig(
        node="edge-1", state_dir=str(tmp_path), router="tcp:127.0.0.1:7700",
        catalog=make_catalog()))
    router.startService()
    edge.startService()
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    assert [(r["peer"], r["link"], r["connected"]) for r in router.observer.peers_view()] == [
        ("edge-1", "tunnel", True)
    ]
    assert [(r["peer"], r["link"], r["connected"]) for r in edge.observer.peers_view()] == [
        ("router", "tunnel", True)
    ]
    edge.links["router"].close_now("test")
    pump.flush()
    assert [r["connected"] for r in router.observer.peers_view()] == [False]
    assert [r["last_reason"] for r in edge.observer.peers_view()] == ["test"]
    edge.stopService()
    router.stopService()


# -- overhead ---------------------------------------------------------------------------------


def _one_request(mode: str) -> Callable[[], None]:
    """One GET through the HTTP front (StringTransport), the pipeline and a target that
    answers at once with ``complete``; ``mode``: without the observer, with it, with it and
    the access log (its events go to twisted's global publisher).  The clock reads the wall
    clock as a real reactor does (``time.time``, no Python call)."""
    clock = Clock()
    clock.seconds = time.time  # type: ignore[method-assign]
    pipeline = Pipeline(Role.edge, "edge-1", make_catalog())
    target = ScriptedTarget(TargetKind.service_bus, answer_whole)
    pipeline.add_target(target)
    if mode != "without":
        config = ObservabilityConfig(access_log=mode == "access-log")
        MeshObserver(clock, Role.edge, "edge-1", config).attach(pipeline)
    factory = HTTPFrontFactory(clock, SourceKind.service_bus, pipeline.dispatch)
    protocol, transport = front_connection(factory)
    data = b"GET /a HTTP/1.1\r\nHost: web.shop\r\n\r\n"

    def one() -> None:
        protocol.dataReceived(data)
        transport.clear()
        target.opened.clear()

    return one


def overhead(modes: tuple[str, ...] = ("without", "with", "access-log"), rounds: int = 30,
             number: int = 5000) -> dict[str, float]:
    """CPU µs per request of each mode: the best of ``rounds`` interleaved runs."""
    import gc

    runs = {mode: _one_request(mode) for mode in modes}
    best = dict.fromkeys(modes, float("inf"))
    gc.disable()
    try:
        for _ in range(rounds):
            for mode, one in runs.items():
                started = time.process_time()
                for _ in range(number):
                    one()
                best[mode] = min(best[mode], (time.process_time() - started) / number * 1e6)
    finally:
        gc.enable()
    return best


def test_overhead_harness_runs() -> None:
    """The harness itself works (its numbers are for ``python tests/test_metrics.py``)."""
    result = overhead(rounds=1, number=10)
    assert set(result) == {"without", "with", "access-log"} and all(v > 0 for v in result.values())


if __name__ == "__main__":
    results = overhead()
    for key, value in results.items():
        print(f"{key:>12}: {value:6.2f} µs/request (+{value - results['without']:.2f})")


@dataclass
class _Observed:
    """What ``opened`` and ``closed`` read of an exchange."""

    route: Route
    source: SourceKind
    stats: Any = None
    started: float = 0.0
    status: int = 200
    error: Reason | None = None
    received: int = 0
    sent: int = 0
    gave_up: bool = False
    request: RequestHead = field(default_factory=request)


def test_the_last_routes_counters_serve_only_the_same_route_from_the_same_source() -> None:
    """``opened`` takes the last exchange's counters again for the same route object from
    the same source (routing keeps one route per service port); anything else is looked up
    by its key, and a relay (which the catalog decides) is never taken from the last one."""
    mesh = Mesh()
    observer = mesh.observer
    catalog = mesh.pipeline.catalog
    web, remote = catalog.services["shop/web"], catalog.services["shop/remote"]
    local = Route(TargetKind.service_bus, web, HTTP, web.endpoints["http"][0])

    def opened(route: Route, source: SourceKind = SourceKind.service_bus) -> Any:
        exchange = _Observed(route, source)
        observer.opened(exchange)
        observer.closed(exchange)
        return exchange.stats

    assert opened(local) is opened(local) is mesh.stats("shop/web", "local")
    assert opened(local, SourceKind.hub) is mesh.stats("shop/web", "edge-edge")
    assert opened(local) is mesh.stats("shop/web", "local")  # not the hub's, last
    again = Route(TargetKind.service_bus, web, HTTP, web.endpoints["http"][0])
    assert opened(again) is mesh.stats("shop/web", "local")
    to_remote = Route(TargetKind.hub, remote, HTTP, remote.endpoints["http"][0], "edge-2")
    assert opened(to_remote) is mesh.stats("shop/remote", "edge-edge")
    assert mesh.stats("shop/web", "local").codes[2] == 4
    # A relay through the router to another edge: edge-edge while the catalog says edge-2
    # is an edge; the same route object counts as edge-cloud once it no longer does.
    relay = Route(TargetKind.tunnel, remote, HTTP, remote.endpoints["http"][0], "router")
    assert opened(relay) is opened(relay) is mesh.stats("shop/remote", "edge-edge")
    mesh.pipeline.catalog = Catalog(
        list(catalog.services.values()),
        (NODES[0], Node("edge-2", False, "192.0.2.2", 7701), NODES[2]), revision=8)
    assert opened(relay) is mesh.stats("shop/remote", "edge-cloud")
